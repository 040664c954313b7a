"""Generate a Visium-size synthetic slide as a SpatialData ``.zarr`` store, chunk by chunk.

* image ``he``: ``size x size`` px RGB uint8, chunked ``(3, chunk, chunk)``, multiscale. Texture:
  tissue tiles cut from the real her2st H&E JPEGs, laid out with random flips and 90° rotations,
  darkened by a smooth "cellularity" field and blended into white background by a smooth tissue
  mask. Each chunk is computed independently (``dask.array.map_blocks``), first stored as a
  single-scale zarr, then read back lazily to build and write the pyramid, so the full-resolution
  image is never held in memory.
* shapes ``spots``: circles on a hexagonal lattice (Visium geometry: 55 µm spots, 100 µm
  centre to centre) with the true radius in pixels; the µm/px scale is chosen so the lattice fills
  about 85% of the image (override with ``--um-per-px``).
* table ``table``: raw counts from a spatial model — a few smooth latent fields (field 0 is the
  cellularity field that also darkens the image, so the image carries signal) with per-gene
  loadings, tissue-dependent depth, negative binomial noise; annotates ``spots``.

Usage::

    .venv/bin/python bench/synthetic_slide.py --out /tmp/synth.zarr --size 25000 --spots 4000 \
        --genes 500 --seed 0
    .venv/bin/python bench/synthetic_slide.py --quick --out /tmp/synth_quick.zarr
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _common import SHARED_DATA, PeakRSS, markdown_table, peak_rss_mb, run_metadata, write_json

from napari_histosge.store import write_sdata

HER2ST_IMGS = SHARED_DATA / "her2st" / "data" / "ST-imgs"
SPOT_DIAMETER_UM = 55.0
SPOT_PITCH_UM = 100.0


# --------------------------------------------------------------------------------------------
# smooth random fields


@dataclass
class SmoothField:
    """A smooth random field on ``[0, size)^2`` stored on a coarse grid, evaluated bilinearly."""

    grid: np.ndarray  # (m, m) float32
    size: int

    @classmethod
    def random(
        cls, rng: np.random.Generator, size: int, m: int = 256, sigma: float = 12.0
    ) -> SmoothField:
        """Gaussian-filtered white noise, standardised to mean 0, sd 1."""
        from scipy.ndimage import gaussian_filter

        g = gaussian_filter(rng.standard_normal((m, m)), sigma=sigma, mode="reflect")
        g = (g - g.mean()) / (g.std() + 1e-12)
        return cls(grid=g.astype(np.float32), size=size)

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Evaluate at pixel rows/cols (any matching shapes)."""
        from scipy.ndimage import map_coordinates

        m = self.grid.shape[0]
        f = (m - 1) / max(self.size - 1, 1)
        coords = np.stack([np.asarray(rows, np.float32) * f, np.asarray(cols, np.float32) * f])
        return map_coordinates(self.grid, coords.reshape(2, -1), order=1, mode="nearest").reshape(
            np.shape(rows)
        )

    def block(self, r0: int, c0: int, h: int, w: int, step: int = 16) -> np.ndarray:
        """Evaluate on a ``h x w`` pixel block (coarsely, then upsampled) — cheap per chunk."""
        from scipy.ndimage import zoom

        rr = np.arange(r0, r0 + h + step, step, dtype=np.float32)
        cc = np.arange(c0, c0 + w + step, step, dtype=np.float32)
        coarse = self.at(*np.meshgrid(rr, cc, indexing="ij"))
        fine = zoom(coarse, step, order=1)
        return fine[:h, :w]


def tissue_mask_value(
    field: np.ndarray, threshold: float = -0.3, softness: float = 0.25
) -> np.ndarray:
    """Soft tissue mask in [0, 1] from a smooth field (1 = tissue)."""
    return 1.0 / (1.0 + np.exp(-(field - threshold) / softness))


# --------------------------------------------------------------------------------------------
# texture


def sample_tissue_tiles(
    rng: np.random.Generator, n_tiles: int, tile: int, max_images: int | None = None
) -> np.ndarray:
    """Cut ``n_tiles`` mostly-tissue ``tile x tile`` RGB tiles from the her2st JPEGs."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    paths = sorted(HER2ST_IMGS.glob("*/*/*.jpg"))
    if not paths:
        raise FileNotFoundError(f"Expected her2st JPEGs under {HER2ST_IMGS}, found none.")
    if max_images is not None:
        paths = paths[:max_images]
    per_image = int(np.ceil(n_tiles / len(paths)))
    tiles: list[np.ndarray] = []
    for path in paths:
        img = np.asarray(Image.open(path).convert("RGB"))
        h, w = img.shape[:2]
        got, tries = 0, 0
        while got < per_image and tries < 4000:
            tries += 1
            r = int(rng.integers(0, h - tile))
            c = int(rng.integers(0, w - tile))
            t = img[r : r + tile, c : c + tile]
            grey = t.mean(axis=2)
            sat = t.max(axis=2).astype(np.int16) - t.min(axis=2)
            tissue_frac = float(((grey < 215) & (sat > 25)).mean())
            nuclei_frac = float((grey < 150).mean())  # haematoxylin-dense pixels
            if tissue_frac > 0.85 and nuclei_frac > 0.05 and grey.std() > 18:
                tiles.append(t.copy())
                got += 1
        del img
    return np.stack(tiles[:n_tiles])


@dataclass
class SlideModel:
    """Everything a chunk needs to be rendered independently."""

    size: int
    tiles: np.ndarray  # (n, t, t, 3) uint8
    tile_seed: int
    tissue: SmoothField
    cellularity: SmoothField

    def render(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        """RGB ``(3, h, w)`` uint8 for the pixel block starting at row ``r0``, column ``c0``."""
        t = self.tiles.shape[1]
        out = np.empty((h, w, 3), dtype=np.float32)
        for tr in range(r0 // t, (r0 + h - 1) // t + 1):
            for tc in range(c0 // t, (c0 + w - 1) // t + 1):
                trng = np.random.default_rng([self.tile_seed, tr, tc])
                tile = self.tiles[int(trng.integers(len(self.tiles)))]
                tile = np.rot90(tile, int(trng.integers(4)))
                if trng.random() < 0.5:
                    tile = tile[:, ::-1]
                ys, xs = max(r0, tr * t), max(c0, tc * t)
                ye, xe = min(r0 + h, (tr + 1) * t), min(c0 + w, (tc + 1) * t)
                out[ys - r0 : ye - r0, xs - c0 : xe - c0] = tile[
                    ys - tr * t : ye - tr * t, xs - tc * t : xe - tc * t
                ]
        mask = tissue_mask_value(self.tissue.block(r0, c0, h, w))[..., None]
        dark = self.cellularity.block(r0, c0, h, w)[..., None]
        # Cellularity darkens the tissue (more nuclei, denser stroma): +-1 sd ~ -+20% intensity.
        tissue_rgb = np.clip(out * (1.0 - 0.2 * np.tanh(dark)), 0, 255)
        bg = 242.0 + np.random.default_rng([self.tile_seed, r0, c0, 7]).normal(0, 2.0, (h, w, 1))
        rgb = mask * tissue_rgb + (1.0 - mask) * bg
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8).transpose(2, 0, 1)


# --------------------------------------------------------------------------------------------
# spots and counts


def hex_lattice(
    n_spots: int, size: int, fill: float, um_per_px: float | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Centres ``(n, 2)`` (x, y) px, array (row, col) and µm/px of a centred hexagonal lattice."""
    cols = int(np.ceil(np.sqrt(n_spots * np.sqrt(3) / 2)))
    rows = int(np.ceil(n_spots / cols))
    if um_per_px is None:
        extent_um = max(cols * SPOT_PITCH_UM, rows * SPOT_PITCH_UM * np.sqrt(3) / 2)
        um_per_px = extent_um / (fill * size)
    pitch = SPOT_PITCH_UM / um_per_px
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    x = cc * pitch + (rr % 2) * pitch / 2
    y = rr * pitch * np.sqrt(3) / 2
    xy = np.c_[x.ravel(), y.ravel()][:n_spots]
    arr = np.c_[rr.ravel(), 2 * cc.ravel() + (rr.ravel() % 2)][:n_spots]  # Visium-style row/col
    xy += (size - (xy.max(axis=0) - xy.min(axis=0))) / 2 - xy.min(axis=0)
    return xy, arr, float(um_per_px)


def simulate_counts(
    rng: np.random.Generator,
    fields: list[SmoothField],
    tissue: SmoothField,
    xy: np.ndarray,
    n_genes: int,
    depth: float = 3000.0,
    dispersion: float = 5.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NB counts from latent fields at the spot centres; returns counts, latents, loadings."""
    rows, cols = xy[:, 1], xy[:, 0]
    z = np.stack([f.at(rows, cols) for f in fields], axis=1).astype(np.float64)  # (n, k)
    k = z.shape[1]
    loadings = rng.normal(0, 1, (k, n_genes)) * (rng.random((k, n_genes)) < 0.35)
    loadings *= 0.6
    base = rng.normal(-7.0, 1.2, n_genes)  # log relative abundance
    logits = base + z @ loadings
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    in_tissue = tissue_mask_value(tissue.at(rows, cols))
    lib = depth * (0.05 + 0.95 * in_tissue) * np.exp(rng.normal(0, 0.3, len(xy)))
    mu = probs * lib[:, None]
    lam = rng.gamma(dispersion, mu / dispersion)
    return rng.poisson(lam).astype(np.int32), z, loadings


# --------------------------------------------------------------------------------------------
# writing


def generate(
    out: Path,
    *,
    size: int,
    n_spots: int,
    n_genes: int,
    seed: int,
    chunk: int = 1024,
    tile: int = 512,
    n_tiles: int = 64,
    n_latent: int = 5,
    um_per_px: float | None = None,
    fill: float = 0.85,
    workers: int = 2,
    max_images: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the synthetic slide to ``out``; returns timings and parameters."""
    import anndata as ad
    import dask
    import dask.array as da
    import geopandas as gpd
    import pandas as pd
    import scipy.sparse as sp
    from shapely.geometry import Point
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it.")
        shutil.rmtree(out)
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}
    rng = np.random.default_rng(seed)

    t0 = time.perf_counter()
    with PeakRSS() as mem:
        tiles = sample_tissue_tiles(rng, n_tiles, tile, max_images=max_images)
    timings["tiles_s"] = time.perf_counter() - t0
    peaks["tiles"] = mem.peak_mb

    tissue = SmoothField.random(rng, size, sigma=10.0)
    # Keep most of the lattice area on tissue: shift the field up near the centre.
    m = tissue.grid.shape[0]
    yy, xx = np.mgrid[0:m, 0:m] / (m - 1) - 0.5
    tissue.grid += (1.2 - 4.0 * (xx**2 + yy**2)).astype(np.float32)
    fields = [SmoothField.random(rng, size, sigma=s) for s in np.linspace(6, 16, n_latent)]
    model = SlideModel(size=size, tiles=tiles, tile_seed=seed, tissue=tissue, cellularity=fields[0])

    # --- image, chunk by chunk -----------------------------------------------------------
    def block_fn(block_info: dict | None = None) -> np.ndarray:
        loc = block_info[None]["array-location"]
        (r0, r1), (c0, c1) = loc[1], loc[2]
        return model.render(r0, c0, r1 - r0, c1 - c0)

    lazy = da.map_blocks(
        block_fn,
        dtype=np.uint8,
        chunks=((3,), *[tuple(_chunks(size, chunk))] * 2),
        meta=np.empty((0, 0, 0), np.uint8),
    )
    tmp = out.with_name(out.name + ".scale0.tmp.zarr")
    if tmp.exists():
        shutil.rmtree(tmp)
    t0 = time.perf_counter()
    with PeakRSS() as mem, dask.config.set(scheduler="threads", num_workers=workers):
        da.to_zarr(lazy, str(tmp), overwrite=True)
    timings["image_scale0_s"] = time.perf_counter() - t0
    peaks["image_scale0"] = mem.peak_mb

    # --- spots and counts ----------------------------------------------------------------
    t0 = time.perf_counter()
    xy, arr, um_px = hex_lattice(n_spots, size, fill, um_per_px)
    radius_px = SPOT_DIAMETER_UM / 2 / um_px
    counts, latents, loadings = simulate_counts(rng, fields, tissue, xy, n_genes)
    ids = np.arange(len(xy))
    circles = ShapesModel.parse(
        gpd.GeoDataFrame(
            {"radius": np.full(len(xy), radius_px)},
            geometry=[Point(x, y) for x, y in xy],
            index=pd.Index(ids, name="spot_id"),
        )
    )
    obs = pd.DataFrame(
        {
            "region": pd.Categorical(["spots"] * len(xy)),
            "spot_id": ids,
            "array_row": arr[:, 0],
            "array_col": arr[:, 1],
            "in_tissue": (tissue_mask_value(tissue.at(xy[:, 1], xy[:, 0])) > 0.5).astype(int),
        },
        index=[f"spot_{i:05d}" for i in ids],
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=obs,
        var=pd.DataFrame(index=[f"Gene{g:04d}" for g in range(n_genes)]),
    )
    adata.obsm["spatial"] = xy.astype(np.float64)
    adata.obsm["latent_true"] = latents.astype(np.float32)
    adata.varm["loadings_true"] = loadings.T.astype(np.float32)
    adata.uns["synthetic"] = {
        "seed": seed,
        "um_per_px": um_px,
        "spot_diameter_um": SPOT_DIAMETER_UM,
        "spot_pitch_um": SPOT_PITCH_UM,
        "image_signal": "obsm['latent_true'][:, 0] darkens the tissue texture",
    }
    table = TableModel.parse(adata, region="spots", region_key="region", instance_key="spot_id")
    timings["spots_counts_s"] = time.perf_counter() - t0

    # --- pyramid and store -----------------------------------------------------------------
    t0 = time.perf_counter()
    base = da.from_zarr(str(tmp))
    n_levels = max(1, int(np.floor(np.log2(size / 1024))) + 1)
    scale_factors = [2] * (n_levels - 1)
    image = Image2DModel.parse(
        base,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        scale_factors=scale_factors or None,
        chunks=(3, chunk, chunk),
    )
    sdata = SpatialData(images={"he": image}, shapes={"spots": circles}, tables={"table": table})
    with PeakRSS() as mem, dask.config.set(scheduler="threads", num_workers=workers):
        write_sdata(sdata, out)
    timings["pyramid_write_s"] = time.perf_counter() - t0
    peaks["pyramid_write"] = mem.peak_mb
    shutil.rmtree(tmp)
    return {
        "size_px": size,
        "n_spots": int(len(xy)),
        "n_genes": n_genes,
        "um_per_px": um_px,
        "spot_radius_px": radius_px,
        "spot_pitch_px": SPOT_PITCH_UM / um_px,
        "chunk": chunk,
        "scale_factors": scale_factors,
        "n_tiles": int(len(tiles)),
        "tile_px": tile,
        "median_umi_per_spot": float(np.median(counts.sum(axis=1))),
        "fraction_spots_in_tissue": float(obs["in_tissue"].mean()),
        "timings_s": timings,
        "peak_rss_mb_by_phase": peaks,
    }


def _chunks(size: int, chunk: int) -> list[int]:
    return [min(chunk, size - i) for i in range(0, size, chunk)]


def _du_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="output .zarr (default /tmp/...)")
    p.add_argument("--size", type=int, default=25000, help="image width = height (px)")
    p.add_argument("--spots", type=int, default=4000)
    p.add_argument("--genes", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--um-per-px", type=float, default=None, help="default: lattice fills ~85%%")
    p.add_argument("--workers", type=int, default=2, help="dask threads")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the --quick store")
    p.add_argument("--quick", action="store_true", help="2,048 px, 200 spots, 50 genes")
    p.add_argument("--name", default=None)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*autosharding.*")
    warnings.filterwarnings("ignore", message=".*storage-related arguments.*")

    size, n_spots, n_genes, n_tiles, max_images, tile = (
        args.size,
        args.spots,
        args.genes,
        64,
        None,
        512,
    )
    if args.quick:
        size, n_spots, n_genes, n_tiles, max_images, tile = 2048, 200, 50, 8, 1, 256
    out = args.out or Path(f"/tmp/histosge_synthetic_{size}_{n_spots}_{args.seed}.zarr")
    meta = run_metadata(extra_packages=["dask", "zarr", "ome-zarr"])
    t0 = time.perf_counter()
    with PeakRSS(interval=0.1) as mem:
        info = generate(
            out,
            size=size,
            n_spots=n_spots,
            n_genes=n_genes,
            seed=args.seed,
            chunk=args.chunk,
            tile=tile,
            n_tiles=n_tiles,
            um_per_px=args.um_per_px,
            workers=args.workers,
            max_images=max_images,
            overwrite=args.overwrite or args.quick,
        )
    wall = time.perf_counter() - t0
    store_bytes = _du_bytes(out)

    # Read back: element names, image levels, lazy shapes.
    from spatialdata import read_zarr

    sd = read_zarr(out)
    img = sd.images["he"]
    levels = (
        [tuple(int(v) for v in img[k]["image"].shape) for k in img]
        if hasattr(img, "keys")
        else [tuple(img.shape)]
    )
    result = {
        "benchmark": "synthetic_slide",
        "quick": args.quick,
        **meta,
        "out": str(out),
        **info,
        "image_levels": levels,
        "elements": {
            "images": list(sd.images),
            "shapes": list(sd.shapes),
            "tables": list(sd.tables),
        },
        "wall_s": wall,
        "peak_rss_mb_sampled": mem.peak_mb,
        "peak_rss_mb_process": peak_rss_mb(),
        "full_image_mb": 3 * size * size / 2**20,
        "store_mb": store_bytes / 2**20,
    }
    name = args.name or ("synthetic_slide_quick" if args.quick else "synthetic_slide")
    path = write_json(name, result)
    if args.quick and not args.keep:
        shutil.rmtree(out, ignore_errors=True)

    print("\n## Synthetic slide generation\n")
    rows = [
        [
            "image",
            f"{size:,} x {size:,} px RGB, chunks (3, {args.chunk}, {args.chunk}), "
            f"{len(levels)} levels",
        ],
        ["spots / genes", f"{info['n_spots']:,} / {n_genes}"],
        ["µm/px, spot radius px", f"{info['um_per_px']:.3f}, {info['spot_radius_px']:.1f}"],
        ["median UMI/spot", f"{info['median_umi_per_spot']:.0f}"],
        ["wall time", f"{wall:.1f} s"],
        *[[f"  {k}", f"{v:.1f} s"] for k, v in info["timings_s"].items()],
        *[[f"  peak RSS {k}", f"{v:.0f} MiB"] for k, v in info["peak_rss_mb_by_phase"].items()],
        ["peak RSS (sampled / process)", f"{mem.peak_mb:.0f} MiB / {peak_rss_mb():.0f} MiB"],
        ["full-res image in memory would be", f"{result['full_image_mb']:.0f} MiB"],
        ["store on disk", f"{result['store_mb']:.0f} MiB"],
    ]
    print(markdown_table(["", "value"], rows))
    print(f"\nwrote {path}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
