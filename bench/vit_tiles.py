"""ViT features at tile cost: spots, 4x positions and the superpixel grid from one pass over tiles.

Side by side in one process, on a window of a real her2st section (the spots nearest the
section's centre; the area ``histosge run --mode superres`` would cover for them):

  tiles alone     the forward passes over every tissue tile of that area (token maps), nothing else
  tiles path      spot features + 4x features (``pooling="tiles"``) + the superpixel features
                  of the super-resolution step (``superpixels._vit_features``), one encoder,
                  tiles shared: the goal is <= 1.3x "tiles alone"
  patch path      spot + 4x features with one forward pass per position (``pooling="patch"``)

"tiles alone" runs twice (before and after the others) to show the drift of a shared machine.
Also: how close the tile-pooled features are to the per-position ones (median per-dimension
Pearson r over positions, linear CKA), against the per-position class token and against the
per-position mean patch token; and, with ``--accuracy``, the attention model's checkerboard
recovery on the whole section with a tiny random ViT for both poolings.

    .venv/bin/python bench/vit_tiles.py --model vit_large_patch16_224 --spots 20
    .venv/bin/python bench/vit_tiles.py --quick                                  # smoke test

Weights are random (``weights="random"``; nothing is downloaded): timing and the agreement of
the two poolings do not depend on training, but accuracy with random weights says nothing about
UNI's.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS_DIR, markdown_table, peak_rss_mb, run_metadata, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _window(slide, n_spots: int) -> np.ndarray:
    """Indices of the ``n_spots`` spots nearest the median spot."""
    xy = slide.geometry.centers_px
    d = np.linalg.norm(xy - np.median(xy, axis=0), axis=1)
    return np.sort(np.argsort(d, kind="stable")[:n_spots])


def _superres_area(slide, idx: np.ndarray, res_um: float = 8.0):
    """The superpixel grid and box ``iter_superres`` would lay over these spots."""
    from napari_histosge.geometry import lattice_pitch
    from napari_histosge.workflows.superres import units_superpixel_grid

    g = slide.geometry
    step = res_um / g.um_per_px
    grid, box = units_superpixel_grid(
        g.centers_px[idx], g.diameter_px, step, pitch=lattice_pitch(g.centers_px)
    )
    return grid, box, step


def _cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear centred kernel alignment of two feature matrices over the same rows."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    num = np.linalg.norm(a.T @ b) ** 2
    return float(num / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)))


def _median_dim_r(a: np.ndarray, b: np.ndarray) -> float:
    from napari_histosge.metrics import pearson_per_gene

    return float(np.nanmedian(pearson_per_gene(a.astype(np.float64), b.astype(np.float64))))


def _timed_steps(steps: dict[str, Callable[[], Any]]) -> tuple[list, dict[str, float], float]:
    """Run ``steps`` in order: their results, wall seconds per step and in total, CPU seconds."""
    results, seconds = [], {}
    c0 = time.process_time()
    t0 = t = time.perf_counter()
    for name, step in steps.items():
        results.append(step())
        now = time.perf_counter()
        seconds[name], t = now - t, now
    seconds["total"] = t - t0
    return results, seconds, time.process_time() - c0


def timing(slide, model: str, n_spots: int, batch_size: int) -> dict:
    from napari_histosge.base.progress import run_generator
    from napari_histosge.features import extract_features, get_encoder
    from napari_histosge.features.patches import read_patches
    from napari_histosge.features.vit_tiles import _vit_tokens, iter_fill_tiles, token_tiles
    from napari_histosge.geometry import subspot_positions
    from napari_histosge.workflows.superres import _vit_features

    g = slide.geometry
    image = slide.sdata.images[slide.keys.image_key]
    idx = _window(slide, n_spots)
    spots = g.centers_px[idx]
    sub = subspot_positions(spots, lattice=g.lattice)
    grid, box, step = _superres_area(slide, idx)
    pos = grid.positions
    enc = get_encoder(f"timm:{model}", weights="random", device="cpu")
    enc.batch_size = batch_size
    own = max(step * g.um_per_px, 0.5 * int(enc.model.patch_embed.patch_size[0]))
    sp_sizes = [own / g.um_per_px, 3 * own / g.um_per_px]
    kw = {
        "image_key": slide.keys.image_key,
        "geometry": g,
        "encoder": enc,
        "cache": False,
        "batch_size": batch_size,
    }
    (lo, hi) = box
    extent = (lo[0], lo[1], hi[0], hi[1])

    cpu: dict = {}

    def tiles_alone(label: str) -> tuple[float, int]:
        enc.token_tiles_cache = []
        tiles = token_tiles(enc, image, g.um_per_px)
        rng = tiles.tile_range(extent)
        keys = [(ty, tx) for ty in range(rng[1], rng[3]) for tx in range(rng[0], rng[2])]
        t, c = time.perf_counter(), time.process_time()
        run_generator(iter_fill_tiles(enc, tiles, keys, batch_size=batch_size))
        cpu[label] = time.process_time() - c
        return time.perf_counter() - t, len(keys)

    out: dict = {
        "model": model,
        "n_spots": int(len(spots)),
        "n_4x": int(len(sub)),
        "n_superpixels": int(len(pos)),
        "batch_size": batch_size,
        "box_um": [float((hi - lo)[0] * g.um_per_px), float((hi - lo)[1] * g.um_per_px)],
    }
    # Warm-up: one forward pass, and the image area read once (so no run pays the cold read).
    from napari_histosge.features.patches import read_regions
    from napari_histosge.images import image_levels

    pad = 2 * int(np.ceil(g.diameter_px))
    read_regions(
        image_levels(image)[0],
        [tuple(int(v) for v in (lo[0] - pad, lo[1] - pad, hi[0] + pad, hi[1] + pad))],
    )
    run_generator(iter_fill_tiles(enc, token_tiles(enc, image, g.um_per_px), [(0, 0)]))
    out["tiles_alone_s"], out["n_tiles"] = tiles_alone("tiles_alone")

    def features(xy: np.ndarray, name: str, pooling: str) -> Callable[[], Any]:
        return lambda: extract_features(slide.sdata, xy, cache_name=name, pooling=pooling, **kw)

    # Tiles path: spots, then 4x, then the superpixel grid, one encoder (tiles shared).
    enc.token_tiles_cache = []
    (f_spots, f_sub, f_grid), out["tiles_path_s"], cpu["tiles_path"] = _timed_steps(
        {
            "spots": features(spots, "spots", "tiles"),
            "4x": features(sub, "4x", "tiles"),
            "superpixels": lambda: run_generator(
                _vit_features(slide, enc, pos, sp_sizes, box, batch_size)
            ),
        }
    )
    out["tiles_path_n_tiles"] = len(enc.token_tiles_cache[0].tokens)
    assert f_grid.shape == (len(pos), 2 * enc.dim)
    # Per-position path for the same spots and 4x positions.
    (p_spots, p_sub), out["patch_path_s"], cpu["patch_path"] = _timed_steps(
        {"spots": features(spots, "spots", "patch"), "4x": features(sub, "4x", "patch")}
    )
    out["tiles_alone_again_s"], _ = tiles_alone("tiles_alone_again")
    alone = 0.5 * (out["tiles_alone_s"] + out["tiles_alone_again_s"])
    out["ratio_tiles_path_to_tiles_alone"] = out["tiles_path_s"]["total"] / alone
    out["cpu_s"] = cpu
    out["cpu_ratio_tiles_path_to_tiles_alone"] = cpu["tiles_path"] / (
        0.5 * (cpu["tiles_alone"] + cpu["tiles_alone_again"])
    )
    out["ratio_patch_path_to_tiles_path_spots_4x"] = out["patch_path_s"]["total"] / (
        out["tiles_path_s"]["spots"] + out["tiles_path_s"]["4x"]
    )
    # Agreement of the poolings over spots + 4x positions.
    a = np.vstack([f_spots.features, f_sub.features])
    b = np.vstack([p_spots.features, p_sub.features])
    size = float(f_spots.meta["patch_sizes_px"][0])
    xy = np.vstack([spots, sub])
    patches = read_patches(image, xy, size, out_px=enc.input_size)
    mean_tok = np.concatenate(
        [
            _vit_tokens(enc, patches[i : i + batch_size]).mean(axis=(1, 2))
            for i in range(0, len(patches), batch_size)
        ]
    )
    out["agreement"] = {
        "n_positions": int(len(a)),
        "tiles_vs_patch_cls": {"median_dim_r": _median_dim_r(a, b), "cka": _cka(a, b)},
        "tiles_vs_patch_mean_token": {
            "median_dim_r": _median_dim_r(a, mean_tok),
            "cka": _cka(a, mean_tok),
        },
        "patch_cls_vs_patch_mean_token": {
            "median_dim_r": _median_dim_r(b, mean_tok),
            "cka": _cka(b, mean_tok),
        },
    }
    return out


def accuracy(slide, model: str) -> dict:
    """Checkerboard recovery of the attention model on the whole section, per pooling."""
    from napari_histosge.base.progress import run_generator
    from napari_histosge.evaluate.holdout import evaluate_holdout
    from napari_histosge.workflows.pipeline import ExtractOptions

    obs = slide.table.obs
    held = (obs["array_x"].to_numpy() + obs["array_y"].to_numpy()) % 2 == 1
    out = {}
    for pooling in ("patch", "tiles"):
        opts = ExtractOptions(
            encoder=f"timm:{model}", weights="random", device="cpu", cache=False, pooling=pooling
        )
        t = time.perf_counter()
        res = run_generator(evaluate_holdout(slide, holdout=held, n_top_genes=250, extract=opts))
        methods = res.metrics["methods"]
        out[pooling] = {
            "seconds": time.perf_counter() - t,
            **{m: float(v["mean_r"]) for m, v in methods.items() if "mean_r" in v},
        }
    return out


def _print_timing(t: dict) -> None:
    print(
        markdown_table(
            ["step", "seconds"],
            [
                ["tiles alone (first)", t["tiles_alone_s"]],
                ["tiles alone (again)", t["tiles_alone_again_s"]],
                *[[f"tiles path: {k}", v] for k, v in t["tiles_path_s"].items()],
                *[[f"patch path: {k}", v] for k, v in t["patch_path_s"].items()],
            ],
            digits=1,
        )
    )
    print(
        {
            k: t[k]
            for k in (
                "n_spots",
                "n_4x",
                "n_superpixels",
                "n_tiles",
                "tiles_path_n_tiles",
                "ratio_tiles_path_to_tiles_alone",
                "cpu_ratio_tiles_path_to_tiles_alone",
                "ratio_patch_path_to_tiles_path_spots_4x",
            )
        }
    )
    print("cpu seconds", t["cpu_s"])
    print(t["agreement"])


def main(argv: list[str] | None = None) -> int:
    import spatialdata as sd
    from accuracy import convert_sections

    from napari_histosge.workflows.pipeline import Slide

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--section", default="C2")
    p.add_argument("--model", default="vit_large_patch16_224", help="timm ViT (random weights)")
    p.add_argument("--spots", type=int, default=20, help="spots in the window (nearest the centre)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--accuracy",
        action="store_true",
        help="also the checkerboard recovery on the whole section with --accuracy-model",
    )
    p.add_argument("--accuracy-model", default="test_vit")
    p.add_argument("--no-timing", action="store_true", help="only the --accuracy part")
    p.add_argument("--quick", action="store_true", help="test_vit, 6 spots (smoke test)")
    p.add_argument("--work", default="/tmp/histosge_bench_her2st", help="converted stores")
    p.add_argument("--out", default="vit_tiles.json")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.spots, args.out = "test_vit", 6, args.out.removesuffix(".json") + "_quick"
    warnings.simplefilter("ignore")
    import torch

    meta = run_metadata()
    meta["torch_threads"] = torch.get_num_threads()
    store = convert_sections(Path(args.work), [args.section])[args.section]
    slide = Slide.open(sd.read_zarr(store))
    res = {
        "meta": meta,
        "section": args.section,
        "um_per_px": slide.geometry.um_per_px,
    }
    if not args.no_timing:
        res["timing"] = timing(slide, args.model, args.spots, args.batch_size)
    if args.accuracy:
        res["accuracy"] = accuracy(slide, args.accuracy_model)
    import os

    res["loadavg_1_5_15_at_end"] = list(os.getloadavg())
    res["peak_rss_mb"] = peak_rss_mb()
    path = write_json(args.out.removesuffix(".json"), res, RESULTS_DIR)
    if "timing" in res:
        _print_timing(res["timing"])
    if "accuracy" in res:
        print(res["accuracy"])
    print("loadavg start", meta["loadavg_1_5_15_at_start"], "end", res["loadavg_1_5_15_at_end"])
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
