"""The ``histosge evaluate`` command: held-out spots, or pooled footprints for superres maps."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from napari_histosge._store_elements import write_text_atomic

from ._common import CliError, read_lines

if TYPE_CHECKING:
    from .cohort import CliHelpers

__all__ = ["cmd_evaluate"]


def cmd_evaluate(args: argparse.Namespace, *, helpers: CliHelpers) -> int:
    """``histosge evaluate STORE --holdout-spots FILE``: held-out accuracy with baselines."""
    from napari_histosge.evaluate import evaluate_holdout
    from napari_histosge.store import check_target

    if args.superres_pool is not None:
        from .superres import evaluate_pooled

        return evaluate_pooled(args, helpers.drive, helpers.open, helpers.read_genes)
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
    helpers.check_inputs(args)
    holdout = read_lines(args.holdout_spots, "held-out spot id")
    genes = helpers.read_genes(args)
    slide = helpers.open(args, args.store)
    result = helpers.drive(
        evaluate_holdout(
            slide,
            holdout=holdout,
            genes=genes,
            n_top_genes=args.n_top_genes,
            extract=helpers.extract_options(args),
            config=helpers.train_config(args, args.device),
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
