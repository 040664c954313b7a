"""``histosge run --mode superres``: the super-resolution step behind the command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_histosge.workflows.pipeline import Slide

__all__ = ["cell_args", "evaluate_pooled", "run_superres"]


def run_superres(
    args: argparse.Namespace,
    slide: Slide,
    genes: list[str] | None,
    drive: Callable[..., Any],
    resolution_um: float | None,
) -> int:
    """Fit the superres model on ``slide`` and export its maps (``histosge run``)."""
    from napari_histosge.workflows.superres import SuperResOptions, export_superres, iter_superres

    if args.domains is not None and not 2 <= args.domains <= 50:
        raise ValueError(f"Expected --domains between 2 and 50, found `{args.domains}`.")
    t0 = time.perf_counter()
    opts = SuperResOptions.from_seed(
        args.seed, resolution_um=resolution_um, encoder=args.encoder, weights=args.weights,
        device=args.device, bf16=args.bf16, batch_size=args.batch_size, cache=not args.no_cache,
    )  # fmt: skip
    if getattr(args, "no_uncertainty", False):
        opts = replace(opts, config=replace(opts.config, uncertainty=False))
    gen = iter_superres(slide, genes=genes, n_top_genes=args.n_top_genes, options=opts)
    result = drive(gen, quiet=args.quiet)
    meta = {"command": " ".join(sys.argv), "source": str(args.store)}
    out, maps = export_superres(
        slide, result, out=args.out, meta=meta, overwrite=args.overwrite,
        domains=args.domains, seed=args.seed,
    )  # fmt: skip
    args.written.append(str(out))
    print(  # noqa: T201
        f"wrote {out}: {len(result.genes)} genes at {result.grid.n} superpixels of "
        f"{result.resolution_um:g} µm (maps {maps.data.shape[2]}x{maps.data.shape[1]} px) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    if getattr(args, "cells", False):
        from napari_histosge.cells.segment import NucleiOptions
        from napari_histosge.cells.table import iter_add_cells

        t1 = time.perf_counter()
        weights = getattr(args, "nuclei_weights", None)
        nuclei = NucleiOptions(method="stardist", weights=weights) if weights else None
        gen = iter_add_cells(out, slide, result, maps=maps, options=nuclei, seed=args.seed)
        info = drive(gen, quiet=args.quiet)
        print(  # noqa: T201
            f"wrote {info['n_cells']} cells (histosge_nuclei, histosge_cells) into {out} "
            f"in {time.perf_counter() - t1:.1f} s"
        )
    return 0


def cell_args(p: argparse.ArgumentParser) -> None:
    """Add the ``--cells`` option of ``histosge run``."""
    p.add_argument(
        "--cells",
        action="store_true",
        help="superres mode: also segment nuclei on the H&E (histosge_nuclei) and write the "
        "map's expression per cell (histosge_cells)",
    )
    p.add_argument(
        "--nuclei-weights",
        metavar="FOLDER",
        help="with --cells: segment with the StarDist model in this local folder (needs the "
        "optional package stardist) instead of the classical segmentation",
    )


def evaluate_pooled(
    args: argparse.Namespace,
    drive: Callable[..., Any],
    open_slide: Callable[[argparse.Namespace, str], Slide],
    read_genes: Callable[[argparse.Namespace], list[str] | None],
) -> int:
    """``histosge evaluate STORE --superres-pool F --metrics-out M.json``."""
    import json

    from napari_histosge._store_elements import write_text_atomic
    from napari_histosge.base.json_io import json_default
    from napari_histosge.evaluate.calibration import evaluate_superres_pool
    from napari_histosge.store import check_target
    from napari_histosge.workflows.superres import SuperResOptions

    if args.superres_pool < 2:
        raise ValueError(f"Expected --superres-pool 2 or more, found `{args.superres_pool}`.")
    if args.holdout_spots or args.predictions_out:
        raise ValueError(
            "Expected no --holdout-spots or --predictions-out with --superres-pool (every real "
            "unit is scored), found them."
        )
    if not args.metrics_out:
        raise ValueError("Expected --metrics-out M.json with --superres-pool, found none.")
    target = check_target(
        args.metrics_out, overwrite=args.overwrite, kind="file", inputs=[args.store],
        option="--metrics-out",
    )  # fmt: skip
    genes = read_genes(args)
    slide = open_slide(args, args.store)
    opts = SuperResOptions.from_seed(
        args.seed, resolution_um=getattr(args, "resolution_um", None), encoder=args.encoder,
        weights=args.weights, device=args.device, cache=not args.no_cache,
    )  # fmt: skip
    gen = evaluate_superres_pool(
        slide, factor=args.superres_pool, genes=genes, n_genes=min(args.n_top_genes, 250)
        if genes is None else len(genes), options=opts,
    )  # fmt: skip
    metrics = drive(gen, quiet=args.quiet)
    metrics["command"] = " ".join(sys.argv)
    metrics["source"] = str(args.store)
    write_text_atomic(target, json.dumps(metrics, indent=2, default=json_default))
    args.written.append(str(target))
    print(  # noqa: T201
        f"pooled {args.superres_pool}x{args.superres_pool}, {metrics['n_units']} units, "
        f"{metrics['n_genes']} genes: mean r map {metrics['r_map']:.3f}, own unit "
        f"{metrics['r_own_unit']:.3f}, kNN {metrics['r_knn']:.3f}, smoothing + low rank "
        f"{metrics['r_smooth_lowrank']:.3f}; inside the 50/80/95 % intervals "
        f"{metrics['coverage_50']:.2f}/{metrics['coverage_80']:.2f}/{metrics['coverage_95']:.2f}"
    )
    return 0
