"""Commands on one slide: ``convert``, ``run``, ``predict`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import (
    CliError,
    cache_arg,
    check_inputs,
    check_out,
    drive,
    extract_options,
    feature_args,
    in_place_arg,
    open_slide,
    pitch_px,
    read_genes,
    resolution,
    resolve_out,
    slide_args,
    train_args,
    train_config,
)

if TYPE_CHECKING:
    from napari_histosge.workflows.pipeline import Slide

__all__ = ["add_commands", "cmd_convert", "cmd_demo", "cmd_predict", "cmd_run"]


def cmd_convert(args: argparse.Namespace) -> int:
    """``histosge convert SRC OUT.zarr``."""
    from napari_histosge.io import convert

    out = convert(args.src, args.out, overwrite=args.overwrite, um_per_px=args.um_per_px)
    print(f"wrote {out}")  # noqa: T201
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``histosge run STORE --out OUT.zarr``: features, training, prediction and export."""
    from napari_histosge.models.checkpoints import save_checkpoint
    from napari_histosge.store import check_target
    from napari_histosge.workflows.pipeline import (
        export_slide,
        iter_extract,
        iter_train,
        predict_slide,
        render_maps,
    )

    t0 = time.perf_counter()
    src_path = Path(args.store)
    out_path = check_out(resolve_out(args), args.overwrite, src_path)
    mode = args.mode or ("superres" if not args.checkpoint_out else None)
    if mode == "superres" and args.checkpoint_out:
        raise CliError(
            "Expected --mode improved or faithful with --checkpoint-out, found superres: a "
            "super-resolution model is fitted to one slide's units and is not saved."
        )
    if args.cells and mode != "superres":
        raise CliError("Expected --mode superres with --cells (cells take the superres map).")
    if mode != "superres" and args.domains is not None:
        raise CliError(f"Expected --domains with the superres mode, found --mode {mode}.")
    if args.checkpoint_out:
        check_target(
            args.checkpoint_out,
            overwrite=args.overwrite,
            kind="folder",
            inputs=[src_path, out_path],
            option="--checkpoint-out",
        )
    check_inputs(args)
    config = train_config(args, args.device)  # checked before any work
    genes = read_genes(args)
    slide = open_slide(args, args.store)
    if mode == "superres":
        return _run_superres(args, slide, genes)
    opts = extract_options(args, args.positions)
    feats = drive(iter_extract(slide, options=opts), quiet=args.quiet)
    model = drive(
        iter_train(
            slide,
            features=feats,
            config=config,
            genes=genes,
            n_top_genes=args.n_top_genes,
        ),
        quiet=args.quiet,
    )
    preds = predict_slide(slide, features=feats, model=model)
    maps = render_maps(slide, predictions=preds, pitch_px=pitch_px(args, slide), smooth=True)
    meta = {"command": " ".join(sys.argv), "source": str(src_path)}
    out = export_slide(
        slide, predictions=preds, maps=maps, out=args.out, meta=meta, overwrite=args.overwrite
    )
    args.written.append(str(out))
    if args.checkpoint_out:
        args.written.append(
            str(save_checkpoint(model, args.checkpoint_out, overwrite=args.overwrite))
        )
    n_new = int((~preds.is_full_size).sum())
    print(  # noqa: T201
        f"wrote {out}: {len(preds.genes)} genes at {len(slide.geometry.spot_ids)} spots + "
        f"{n_new} new positions, maps {maps.data.shape[2]}x{maps.data.shape[1]} px "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``histosge predict SLIDE --checkpoint CKPT --out OUT.zarr``: apply a trained model."""
    from napari_histosge.models.checkpoints import load_checkpoint
    from napari_histosge.workflows.batch_predict import predict_he_slide, prediction_options
    from napari_histosge.workflows.pipeline import ExtractOptions, export_slide
    from napari_histosge.workflows.whole_slide import iter_extract_blocked

    check_out(resolve_out(args), args.overwrite, Path(args.store))
    check_inputs(args)
    model = load_checkpoint(args.checkpoint)
    base = ExtractOptions(
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        positions=args.positions,
        cache=not args.no_cache,
    )
    slide, preds, maps = predict_he_slide(
        args.store,
        model,
        options=prediction_options(model, base),
        um_per_px=args.um_per_px,
        keys={k: getattr(args, k) for k in ("image_key", "spots_key", "table_key")},
        resolution_um=resolution(args),
        extract=lambda s, o: drive(iter_extract_blocked(s, options=o), quiet=args.quiet),
    )
    out = export_slide(slide, predictions=preds, maps=maps, out=args.out, overwrite=args.overwrite)
    args.written.append(str(out))
    print(f"wrote {out}")  # noqa: T201
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``histosge demo``: the whole workflow on the bundled sample, in napari when possible."""
    from napari_histosge._widgets._demo import run_demo

    return run_demo(out_dir=Path(args.out), headless=args.headless, genes=args.genes_shown)


def _run_superres(args: argparse.Namespace, slide: Slide, genes: list[str] | None) -> int:
    """Fit the superres model on ``slide`` and export its maps (``histosge run``)."""
    from napari_histosge.workflows.superres import SuperResOptions, export_superres, iter_superres

    if args.domains is not None and not 2 <= args.domains <= 50:
        raise ValueError(f"Expected --domains between 2 and 50, found `{args.domains}`.")
    t0 = time.perf_counter()
    opts = SuperResOptions.from_seed(
        args.seed, resolution_um=resolution(args), encoder=args.encoder, weights=args.weights,
        device=args.device, bf16=args.bf16, batch_size=args.batch_size, cache=not args.no_cache,
    )  # fmt: skip
    if getattr(args, "no_uncertainty", False):
        opts = replace(opts, config=replace(opts.config, uncertainty=False))
    if getattr(args, "cell_features", False):  # per superpixel in this mode
        opts = replace(opts, cell_features=True)
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
        gen = iter_add_cells(
            out, slide, result, maps=maps, options=nuclei, seed=args.seed, cache=not args.no_cache
        )
        info = drive(gen, quiet=args.quiet)
        how = "nuclei from the store's cache" if info["from_cache"] else "nuclei segmented"
        print(  # noqa: T201
            f"wrote {info['n_cells']} cells (histosge_nuclei, histosge_cells) into {out} "
            f"in {time.perf_counter() - t1:.1f} s ({how})"
            if info["n_cells"]
            else f"found no nuclei on the map's grid ({how}): no histosge_nuclei or "
            f"histosge_cells written into {out}"
        )
    return 0


def _cell_args(p: argparse.ArgumentParser) -> None:
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


def add_commands(sub: Any) -> None:
    """Add ``convert``, ``run``, ``predict`` and ``demo`` to the ``histosge`` subparsers."""
    p = sub.add_parser(
        "convert", help="write a slide (zarr, Visium or ST folder, whole-slide file) to a .zarr"
    )
    p.add_argument(
        "src",
        help="SpatialData .zarr, Space Ranger Visium folder, ST section folder, or whole-slide "
        "file (.svs, .ndpi, .scn, pyramidal .tif)",
    )
    p.add_argument("out", help="output .zarr store")
    p.add_argument("--um-per-px", type=float, help="µm per pixel of a whole-slide file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("run", help="features, training, prediction and export in one go")
    p.add_argument("store", help="input slide: .zarr, Visium folder or ST section folder")
    p.add_argument("--out", help="output .zarr (input elements + histosge_* outputs)")
    in_place_arg(p)
    p.add_argument(
        "--positions", default="4x", help="4x (between neighbouring spots) or grid:MICRONS"
    )
    p.add_argument("--checkpoint-out", help="also save the trained model (safetensors + JSON)")
    p.add_argument(
        "--domains",
        type=int,
        metavar="K",
        help="also cluster the superres maps into K tissue domains (histosge_domains; try 6)",
    )
    p.add_argument(
        "--no-uncertainty",
        action="store_true",
        help="superres: skip the maps' standard deviations (histosge_uncertainty) and the "
        "genes' reliability",
    )
    p.add_argument(
        "--resolution-um",
        type=float,
        help="map pixel (superpixel) side in µm (default: 8, or a quarter of the smallest unit)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    slide_args(p)
    feature_args(p)
    train_args(p)
    _cell_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "predict", help="apply a saved model to a slide (image and coordinates only)"
    )
    p.add_argument("store", help="input slide: .zarr or whole-slide file (.svs, .ndpi, .tif)")
    p.add_argument("--checkpoint", required=True, help="model saved by run/train --checkpoint-out")
    p.add_argument("--um-per-px", type=float, help="µm per pixel, for an H&E-only section")
    p.add_argument("--out", help="output .zarr")
    in_place_arg(p)
    p.add_argument("--positions", default="4x", help="4x or grid:MICRONS")
    p.add_argument("--resolution-um", type=float, help="map pixel side in µm")
    p.add_argument("--weights", help="encoder weights file, when the model's encoder needs one")
    p.add_argument("--device", help="cpu, cuda or mps")
    p.add_argument("--batch-size", type=int, default=32, help="patches per batch (default 32)")
    cache_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    slide_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="run the workflow on the bundled sample and show it in napari")
    p.add_argument("--out", default="histosge-demo", help="folder for the store and screenshot")
    p.add_argument("--headless", action="store_true", help="no window: export and screenshot only")
    p.add_argument("--genes-shown", nargs="*", help="genes to show (default: two variable genes)")
    p.set_defaults(func=cmd_demo)
