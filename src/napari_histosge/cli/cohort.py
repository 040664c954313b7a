"""Commands on many sections or slides: ``train`` (one model) and ``batch`` (a cohort)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._common import (
    check_inputs,
    drive,
    extract_options,
    feature_args,
    open_slide,
    read_genes,
    slide_args,
    train_args,
    train_config,
)

__all__ = ["add_commands", "cmd_batch", "cmd_train"]


def cmd_train(args: argparse.Namespace) -> int:
    """``histosge train STORE... --checkpoint-out DIR``: one model on several sections."""
    from napari_histosge.models.checkpoints import save_checkpoint
    from napari_histosge.workflows.sections import iter_train_sections

    check_inputs(args)
    genes = read_genes(args)
    config = train_config(args, args.device)
    slides = [open_slide(args, s) for s in args.stores]
    model = drive(
        iter_train_sections(
            slides,
            options=extract_options(args),
            config=config,
            genes=genes,
            n_top_genes=args.n_top_genes,
        ),
        quiet=args.quiet,
    )
    out = save_checkpoint(model, args.checkpoint_out)
    args.written.append(str(out))
    spots = sum(s["spots"] for s in model.info["sections"])
    print(  # noqa: T201
        f"wrote {out}: {len(model.genes)} genes from {len(slides)} sections ({spots} spots)"
    )
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    """``histosge batch SLIDE... --out-dir DIR``: one ``run`` per slide on dask.distributed.

    With ``--checkpoint``, one ``predict`` of that model per slide instead.
    """
    from napari_histosge.io.wsi import is_wsi_path
    from napari_histosge.workflows.batch import SlideJob, run_batch

    check_inputs(args)
    if args.checkpoint:
        return _report(args, _predict_batch(args))
    files = [s for s in args.stores if is_wsi_path(s)]
    if files:
        raise ValueError(
            f"Expected slides with measured spots and a table to train on, found whole-slide "
            f"files (H&E only) such as `{files[0]}`; apply a trained model to them with "
            "--checkpoint MODEL."
        )
    genes = read_genes(args)
    job = SlideJob(
        extract=extract_options(args, args.positions),
        config=train_config(args, args.device),
        genes=tuple(genes) if genes else None,
        n_top_genes=args.n_top_genes,
        keys={
            "image_key": args.image_key,
            "spots_key": args.spots_key,
            "table_key": args.table_key,
        },
    )
    report = run_batch(
        args.stores, args.out_dir, job=job, scheduler=args.scheduler, n_workers=args.n_workers
    )
    return _report(args, report)


def _predict_batch(args: argparse.Namespace) -> Any:
    """Apply ``--checkpoint`` to every slide (no training): one prediction task per slide."""
    from napari_histosge.workflows.batch import run_batch
    from napari_histosge.workflows.batch_predict import PredictJob, predict_slide_task

    if args.um_per_px is not None and not args.um_per_px > 0:
        raise ValueError(f"Expected a positive --um-per-px, found `{args.um_per_px}`.")
    if not Path(args.checkpoint).exists():
        raise FileNotFoundError(
            f"Expected a model at --checkpoint `{args.checkpoint}`, found none."
        )
    job = PredictJob(
        extract=extract_options(args, args.positions),
        keys={k: getattr(args, k) for k in ("image_key", "spots_key", "table_key")},
        checkpoint=str(Path(args.checkpoint).resolve()),
        um_per_px=args.um_per_px,
        resolution_um=args.resolution_um,
    )
    return run_batch(
        args.stores,
        args.out_dir,
        job=job,
        scheduler=args.scheduler,
        n_workers=args.n_workers,
        task=predict_slide_task,
    )


def _report(args: argparse.Namespace, report: Any) -> int:
    counts = report["status"].value_counts().to_dict()
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("done", "skipped", "failed"))
    print(f"{summary}; report in {Path(args.out_dir) / 'report.csv'}")  # noqa: T201
    for row in report[report["status"] == "failed"].itertuples():
        print(f"histosge: error: {row.slide}: {row.error}", file=sys.stderr)  # noqa: T201
    return 1 if counts.get("failed", 0) else 0


def add_commands(sub: Any) -> None:
    """Add ``train`` and ``batch`` to the ``histosge`` subparsers."""
    p = sub.add_parser("train", help="train one model on several sections (no prediction)")
    p.add_argument("stores", nargs="+", help="input sections, each with spots and a table")
    p.add_argument("--checkpoint-out", required=True, help="output model folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    for add in (slide_args, feature_args, train_args):
        add(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("batch", help="run many slides, one task per slide on dask.distributed")
    p.add_argument(
        "stores", nargs="+", help="input slides (stores, folders, slide files): DIR/<name>.zarr"
    )
    p.add_argument("--out-dir", required=True, help="output folder (stores and report.csv)")
    p.add_argument(
        "--scheduler", help="address of a running dask scheduler (default: a local cluster)"
    )
    p.add_argument(
        "--n-workers",
        type=int,
        help="workers of the local cluster (default: one per core, one per 4 GB of memory)",
    )
    p.add_argument("--positions", default="4x", help="4x or grid:MICRONS")
    p.add_argument(
        "--checkpoint",
        help="apply this saved model to every slide (H&E-only stores or whole-slide files: "
        ".svs, .ndpi, .scn, pyramidal .tif) instead of training one per slide",
    )
    p.add_argument("--um-per-px", type=float, help="µm per pixel for slides that record none")
    p.add_argument("--resolution-um", type=float, help="map pixel side in µm (with --checkpoint)")
    for add in (slide_args, feature_args, train_args):
        add(p)
    p.set_defaults(func=cmd_batch)
