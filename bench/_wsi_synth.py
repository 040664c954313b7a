"""Synthetic whole-slide files: tiled pyramidal RGB TIFFs written tile by tile (bounded memory).

Tissue is a smooth random field thresholded into a few blobs (the same at every pyramid level),
stained pink with purple nucleus-like speckle; the glass is near-white. Each level is rendered
from the same field at its own resolution, one tile at a time, so a 40k x 40k px slide is written
with a few MB of memory. The scale goes into the TIFF resolution tags (pixels per centimetre).

    .venv/bin/python bench/_wsi_synth.py out.tif --size 40000 --um-per-px 0.25
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

FIELD = 24  # control points of the tissue field per side


def _field(seed: int) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.standard_normal((FIELD, FIELD)), 2.0, mode="reflect")
    yy, xx = np.mgrid[0:FIELD, 0:FIELD] / (FIELD - 1) - 0.5
    f = f / f.std() - 2.5 * (xx**2 + yy**2)  # tissue away from the slide's edges
    return f


def _tiles(
    field: np.ndarray, h: int, w: int, scale: int, tile: int, seed: int, level: int
) -> Iterator[np.ndarray]:
    from scipy import ndimage

    glass = np.array([236, 234, 238], np.float32)
    pink = np.array([222, 150, 190], np.float32)
    purple = np.array([110, 60, 150], np.float32)
    sub = 16  # field samples per tile side, then repeated to pixels
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            ys = (ty + (np.arange(sub) + 0.5) * tile / sub) * scale
            xs = (tx + (np.arange(sub) + 0.5) * tile / sub) * scale
            gy, gx = np.meshgrid(ys / (h * scale) * (FIELD - 1), xs / (w * scale) * (FIELD - 1))
            coarse = ndimage.map_coordinates(field, [gy.T, gx.T], order=1, mode="nearest")
            coarse = np.repeat(np.repeat(coarse, tile // sub, 0), tile // sub, 1)
            tissue = np.clip((coarse + 0.2) * 3.0, 0.0, 1.0)[..., None]
            rng = np.random.default_rng((seed, level, ty, tx))
            speckle = (rng.random((tile, tile, 1), dtype=np.float32) < 0.08).astype(np.float32)
            stain = pink * (1 - speckle) + purple * speckle
            noise = rng.normal(0.0, 6.0, (tile, tile, 1)).astype(np.float32)
            rgb = glass * (1 - tissue) + stain * tissue + noise
            yield np.clip(rgb, 0, 255).astype(np.uint8)


def write_synthetic_slide(
    path: str | Path,
    *,
    size: int | tuple[int, int],
    um_per_px: float | None = 0.5,
    seed: int = 0,
    tile: int = 512,
    compression: str = "jpeg",
) -> Path:
    """Write a synthetic pyramidal slide (levels halving down to under 2048 px) at ``path``."""
    import tifffile

    h, w = (size, size) if isinstance(size, int) else size
    field = _field(seed)
    levels = [(h, w)]
    while max(levels[-1]) >= 2048:
        lh, lw = levels[-1]
        levels.append(((lh + 1) // 2, (lw + 1) // 2))

    def res(scale: int) -> dict:
        if um_per_px is None:
            return {}
        per_cm = 1e4 / (um_per_px * scale)
        return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}

    opts = {"tile": (tile, tile), "photometric": "rgb", "compression": compression}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, (lh, lw) in enumerate(levels):
            extra = {"subifds": len(levels) - 1} if i == 0 else {"subfiletype": 1}
            tw.write(
                _tiles(field, lh, lw, 2**i, tile, seed, i),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                metadata=None,
                **opts,
                **extra,
                **res(2**i),
            )
    return Path(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--um-per-px", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    write_synthetic_slide(args.out, size=args.size, um_per_px=args.um_per_px, seed=args.seed)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")  # noqa: T201


if __name__ == "__main__":
    main()
