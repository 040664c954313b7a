"""The ``histosge evaluate`` command: held-out spots, or pooled footprints for superres maps."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from napari_histosge._store_elements import write_text_atomic

from ._common import (
    CliError,
    check_inputs,
    drive,
    extract_options,
    feature_args,
    open_slide,
    read_genes,
    read_lines,
    slide_args,
    train_args,
    train_config,
)

if TYPE_CHECKING:
    pass

__all__ = ["add_commands", "cmd_evaluate"]


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``histosge evaluate STORE --holdout-spots FILE``: held-out accuracy with baselines."""
    from napari_histosge.evaluate import evaluate_holdout
    from napari_histosge.store import check_target

    if args.superres_pool is not None:
        return _evaluate_pooled(args)
    if args.mode == "superres":
        raise CliError(
            "Expected --mode improved or faithful with --holdout-spots, found superres; the "
            "super-resolution model is evaluated with --superres-pool 2 (pooled footprints)."
        )
    if not args.holdout_spots or not args.predictions_out:
        raise CliError(
            "Expected --holdout-spots and --predictions-out (or --superres-pool F), found neither."
        )
    targets = [
        check_target(
            path, overwrite=args.overwrite, kind="file", inputs=[args.store], option=option
        )
        for path, option in (
            (args.predictions_out, "--predictions-out"),
            (args.metrics_out, "--metrics-out"),
        )
    ]
    if targets[0] == targets[1]:
        raise CliError("Expected --predictions-out and --metrics-out to differ, found one path.")
    check_inputs(args)
    holdout = read_lines(args.holdout_spots, "held-out spot id")
    genes = read_genes(args)
    slide = open_slide(args, args.store)
    result = drive(
        evaluate_holdout(
            slide,
            holdout=holdout,
            genes=genes,
            n_top_genes=args.n_top_genes,
            extract=extract_options(args),
            config=train_config(args, args.device),
        ),
        quiet=args.quiet,
    )
    write_text_atomic(targets[0], result.predictions.to_csv())
    args.written.append(str(targets[0]))
    write_text_atomic(targets[1], json.dumps(result.metrics, indent=2, default=float))
    args.written.append(str(targets[1]))
    summary = ", ".join(
        f"{name} {m['mean_r']:.3f}" for name, m in result.metrics["methods"].items()
    )
    print(f"held-out mean Pearson r: {summary}")  # noqa: T201
    return 0


def _evaluate_pooled(args: argparse.Namespace) -> int:
    """``histosge evaluate STORE --superres-pool F --metrics-out M.json``."""
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


def add_commands(sub: Any) -> None:
    """Add ``evaluate`` to the ``histosge`` subparsers."""
    p = sub.add_parser("evaluate", help="held-out accuracy of the model and of baselines")
    p.add_argument("store", help="input slide")
    p.add_argument("--holdout-spots", help="file with held-out spot ids, one per line")
    p.add_argument(
        "--superres-pool",
        type=int,
        metavar="F",
        help="pool FxF units into pseudo-units, fit the superres map on them and score every "
        "real unit: accuracy against baselines and predictive-interval coverage",
    )
    p.add_argument("--predictions-out", help="CSV: held-out spots x genes")
    p.add_argument("--metrics-out", required=True, help="JSON: per-gene r, MSE, MAE and means")
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing --predictions-out/--metrics-out"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    slide_args(p)
    feature_args(p)
    train_args(p)
    p.set_defaults(func=cmd_evaluate)
