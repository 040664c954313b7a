"""One command for a CUDA machine: UNI-architecture token features, one training, one superres fit.

    .venv/bin/python bench/gpu_check.py                 # on a CUDA machine (full size, < 8 min)
    .venv/bin/python bench/gpu_check.py --small         # CPU, about a minute: the script's test

Nothing is downloaded: the encoder is UNI's architecture (timm ``vit_large_patch16_224`` with
UNI's settings, ``TimmEncoder("uni", weights="random")``) with random weights, which costs the
same as the real weights. Steps, each timed (CUDA synchronised):

1. ``tokens``: dense patch-token features over a synthetic Visium-size slide: ``--tiles`` tiles
   of 224 px (3,481 by default: 59 x 59 tiles, 11,360 px at 0.5 µm/px, a 5.7 mm square) through
   ``features.vit_tiles.iter_fill_tiles``, as ``--pooling tiles`` and the superres step use them.
   Goal: <= 60 s on one H100.
2. ``train``: one ``histosge`` attention-model fit (``train.iter_fit``, default options) on a
   Visium-size synthetic section (``--spots`` spots on a 100 µm hexagonal lattice, 1024-d
   features, ``--genes`` genes) on the device.
3. ``superres``: one ``models.fit_superres`` on 8 µm superpixels over those spots (scipy on the
   CPU: the model has no torch part; timed for the record).
4. ``agreement``: the same small case on the CPU and on the device: token features of 8 tiles
   (fp32) and a short training; reports the largest relative token difference and the Pearson r
   of the two models' predictions. Skipped when the device is the CPU.

Prints one line per step and a final JSON line; writes ``bench/results/gpu_check.json`` unless
``--small`` (or ``--out PATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

UM_PER_PX = 0.5  # UNI's training resolution: 16 px tokens of 8 µm


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _image(side: int, seed: int = 0) -> Any:
    """A ``(c, y, x)`` uint8 H&E-like image as a dask-backed DataArray (tissue-ish noise)."""
    import dask.array as da
    import xarray as xr

    rng = np.random.default_rng(seed)
    base = np.array([222, 150, 190], np.uint8)[:, None, None]
    img = np.empty((3, side, side), np.uint8)
    for r0 in range(0, side, 2048):
        r1 = min(side, r0 + 2048)
        noise = rng.integers(0, 60, (1, r1 - r0, side), dtype=np.uint8)
        img[:, r0:r1] = base - noise
    return xr.DataArray(da.from_array(img, chunks=(3, 2048, 2048)), dims=("c", "y", "x"))


def _encoder(name: str, device: str, bf16: bool, batch: int) -> Any:
    from napari_histosge.features.vit import TimmEncoder

    return TimmEncoder(name, weights="random", device=device, bf16=bf16, batch_size=batch)


def _tile_grid(enc: Any, n_tiles: int) -> tuple[int, int]:
    """Tiles per side and the image side for about ``n_tiles`` tiles at 0.5 µm/px."""
    patch = int(enc.model.patch_embed.patch_size[0])
    g = int(enc.input_size) // patch
    n_side = int(np.ceil(np.sqrt(n_tiles)))
    token_px = 0.5 * patch / UM_PER_PX
    return n_side, int(n_side * (g - 2) * token_px + 2 * token_px)


def tokens_step(enc: Any, n_tiles: int, batch: int, device: str) -> dict[str, Any]:
    """Time the token features of every tile of a synthetic slide (after a warm-up batch)."""
    from napari_histosge import run_generator
    from napari_histosge.features.vit_tiles import iter_fill_tiles, token_tiles

    n_side, side = _tile_grid(enc, n_tiles)
    t0 = time.perf_counter()
    image = _image(side)
    make_s = time.perf_counter() - t0
    warm = token_tiles(enc, _image(512, seed=1), UM_PER_PX)
    run_generator(iter_fill_tiles(enc, warm, [(0, 0), (0, 1)], batch_size=batch))
    tiles = token_tiles(enc, image, UM_PER_PX)
    keys = [(ty, tx) for ty in range(n_side) for tx in range(n_side)]
    _sync(device)
    t0 = time.perf_counter()
    run_generator(iter_fill_tiles(enc, tiles, keys, batch_size=batch))
    _sync(device)
    seconds = time.perf_counter() - t0
    first = tiles.tokens[keys[0]]
    return {
        "tiles": len(keys),
        "image_px": side,
        "tokens_per_tile": int(first.shape[0] * first.shape[1]),
        "dim": int(first.shape[-1]),
        "seconds": round(seconds, 2),
        "tiles_per_s": round(len(keys) / seconds, 1),
        "make_image_s": round(make_s, 2),
    }


def _section(n_spots: int, dim: int, n_genes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic Visium-like section: hexagonal spots, features and structured expression."""
    rng = np.random.default_rng(seed)
    cols = int(np.ceil(np.sqrt(n_spots * 2 / np.sqrt(3))))
    ii, jj = np.meshgrid(np.arange(cols), np.arange(cols))
    xy = np.c_[(ii * 100.0 + (jj % 2) * 50.0).ravel(), (jj * 100.0 * np.sqrt(3) / 2).ravel()]
    xy = xy[:n_spots]
    smooth = np.c_[np.sin(xy[:, 0] / 700.0), np.cos(xy[:, 1] / 500.0), xy[:, 0] / xy[:, 0].max()]
    feats = smooth @ rng.standard_normal((3, dim)) + 0.5 * rng.standard_normal((n_spots, dim))
    mix = rng.standard_normal((3, n_genes))
    values = np.log1p(np.exp(smooth @ mix + 0.3 * rng.standard_normal((n_spots, n_genes))))
    return {
        "xy_um": xy.astype(np.float64),
        "features": feats.astype(np.float32),
        "values": values.astype(np.float32),
    }


def train_step(sec: dict[str, np.ndarray], device: str, epochs: int) -> tuple[dict, Any]:
    """Time one fit of the attention model (default options) on the device."""
    from napari_histosge import run_generator
    from napari_histosge.models import TrainConfig
    from napari_histosge.train import iter_fit

    genes = [f"g{i}" for i in range(sec["values"].shape[1])]
    cfg = TrainConfig(epochs=epochs, device=device)
    _sync(device)
    t0 = time.perf_counter()
    model = run_generator(
        iter_fit(sec["features"], sec["xy_um"], sec["values"], genes=genes, config=cfg)
    )
    _sync(device)
    seconds = time.perf_counter() - t0
    return {
        "spots": len(sec["xy_um"]),
        "genes": len(genes),
        "feature_dim": int(sec["features"].shape[1]),
        "epochs_max": epochs,
        "ensemble": cfg.ensemble,
        "seconds": round(seconds, 2),
    }, model


def superres_step(sec: dict[str, np.ndarray], feat_dim: int) -> dict[str, Any]:
    """Time one superres fit on 8 µm superpixels under the section's 55 µm spots."""
    from napari_histosge.geometry.footprints import circle_membership
    from napari_histosge.models.superres import fit_superres

    xy = sec["xy_um"]
    lo, hi = xy.min(0) - 60.0, xy.max(0) + 60.0
    gx, gy = np.arange(lo[0], hi[0], 8.0), np.arange(lo[1], hi[1], 8.0)
    pos = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    rng = np.random.default_rng(1)
    feats = (np.sin(pos / 300.0) @ rng.standard_normal((2, feat_dim))).astype(np.float32)
    feats += 0.3 * rng.standard_normal(feats.shape).astype(np.float32)
    t0 = time.perf_counter()
    member = circle_membership(pos, xy, 27.5)
    genes = [f"g{i}" for i in range(sec["values"].shape[1])]
    model = fit_superres(feats, pos, member, sec["values"].astype(np.float64), genes=genes)
    fit_s = time.perf_counter() - t0
    return {
        "superpixels": len(pos),
        "units": len(xy),
        "feature_dim": feat_dim,
        "genes": len(genes),
        "seconds": round(fit_s, 2),
        "n_superpixels_model": model.n_superpixels,
    }


def agreement_step(name: str, device: str, epochs: int) -> dict[str, Any]:
    """The same small case on the CPU and on ``device``: tokens and a short training."""
    from napari_histosge import run_generator
    from napari_histosge.features.vit_tiles import iter_fill_tiles, token_tiles

    image = _image(1024, seed=2)
    keys = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3)]
    out = {}
    for dev in ("cpu", device):
        enc = _encoder(name, dev, False, 8)
        tiles = token_tiles(enc, image, UM_PER_PX)
        run_generator(iter_fill_tiles(enc, tiles, keys, batch_size=8))
        out[dev] = np.stack([tiles.tokens[k] for k in keys])
        del enc
    a, b = out["cpu"], out[device]
    rel = float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12))
    sec = _section(400, 64, 20, seed=3)
    preds = {}
    for dev in ("cpu", device):
        _, model = train_step(sec, dev, epochs)
        preds[dev] = model.predict(sec["features"], sec["xy_um"])
    r = float(np.corrcoef(preds["cpu"].ravel(), preds[device].ravel())[0, 1])
    return {
        "tokens_max_rel_diff": rel,
        "tokens_ok": rel < 1e-2,
        "train_pred_r": round(r, 5),
        "train_ok": r > 0.99,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    # Deterministic cuBLAS (training asks for deterministic algorithms), set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CPU, tiny sizes (the test's mode)")
    ap.add_argument("--device", help="cuda (default when available) or cpu")
    ap.add_argument("--model", help="encoder: uni (default) or timm:<name>")
    ap.add_argument("--tiles", type=int, help="tiles for the token step (default 3481)")
    ap.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for the token step")
    ap.add_argument("--spots", type=int, help="spots of the training section (default 3500)")
    ap.add_argument("--genes", type=int, help="genes (default 1000)")
    ap.add_argument("--epochs", type=int, help="training epochs (default 100)")
    ap.add_argument("--out", help="JSON path (default bench/results/gpu_check.json)")
    args = ap.parse_args(argv)
    small = args.small
    device = args.device or ("cuda" if torch.cuda.is_available() and not small else "cpu")
    name = args.model or ("timm:test_vit" if small else "uni")
    n_tiles = args.tiles or (16 if small else 3481)
    spots = args.spots or (120 if small else 3500)
    n_genes = args.genes or (30 if small else 1000)
    epochs = args.epochs or (3 if small else 100)
    env = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "encoder": name,
        "bf16": bool(args.bf16),
        "small": small,
    }
    print("env", json.dumps(env), flush=True)  # noqa: T201
    t_all = time.perf_counter()
    result: dict[str, Any] = {"env": env}
    enc = _encoder(name, device, args.bf16, args.batch_size)
    result["tokens"] = tokens_step(enc, n_tiles, args.batch_size, device)
    if device.startswith("cuda"):
        result["tokens"]["max_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    del enc
    print("tokens", json.dumps(result["tokens"]), flush=True)  # noqa: T201
    sec = _section(spots, 1024 if not small else 64, n_genes)
    result["train"], _ = train_step(sec, device, epochs)
    print("train", json.dumps(result["train"]), flush=True)  # noqa: T201
    result["superres"] = superres_step(sec, 64 if not small else 16)
    print("superres", json.dumps(result["superres"]), flush=True)  # noqa: T201
    if device != "cpu":
        result["agreement"] = agreement_step(name, device, 5)
        print("agreement", json.dumps(result["agreement"]), flush=True)  # noqa: T201
    result["total_s"] = round(time.perf_counter() - t_all, 1)
    result["tokens_goal_met"] = bool(result["tokens"]["seconds"] <= 60.0) if not small else None
    out = args.out or (None if small else str(Path(__file__).parent / "results" / "gpu_check.json"))
    if out:
        Path(out).write_text(json.dumps(result, indent=1))
    print("summary", json.dumps(result), flush=True)  # noqa: T201
    return result


if __name__ == "__main__":
    main()
