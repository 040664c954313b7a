"""The ``histosge`` command line: convert, run, predict, evaluate and demo."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Generator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from napari_histosge.base.progress import Progress

from ._common import (
    CliError,
    check_out,
    in_place_arg,
    read_lines,
    resolve_out,
)

if TYPE_CHECKING:
    from napari_histosge.models import TrainConfig
    from napari_histosge.workflows.pipeline import ExtractOptions, Slide

__all__ = ["main"]

T = TypeVar("T")


def _drive(gen: Generator[Progress, None, T], *, quiet: bool = False) -> T:
    """Run a progress generator with a terminal progress bar per stage."""
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if quiet:
                continue
            bar = bars.get(item.stage)
            if bar is None:
                bar = tqdm(
                    total=item.total, desc=item.stage, unit="step", file=sys.stderr, mininterval=0.5
                )
                bars[item.stage] = bar
            if item.total is not None and bar.total != item.total:
                bar.total = item.total
            postfix = {
                k: (f"{v:.4g}" if isinstance(v, float) else v)
                for k, v in item.info.items()
                if k in ("train_loss", "val_loss")
            }
            if postfix:
                bar.set_postfix(postfix, refresh=False)
            bar.update(max(0, item.step - bar.n))
    finally:
        for bar in bars.values():
            bar.close()


def _slide_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-key", help="image element to use (auto-detected by default)")
    p.add_argument("--spots-key", help="circles element of the spots (auto-detected by default)")
    p.add_argument("--table-key", help="table annotating the spots (auto-detected by default)")


def _feature_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--encoder",
        default="histology",
        help="histology (built in, no weights; default), uni, uni2-h, or timm:NAME",
    )
    p.add_argument(
        "--weights", help="local weights file (.safetensors, .pth, .bin) for the encoder"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--batch-size", type=int, default=32, help="patches per batch (default 32)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the encoder")
    p.add_argument(
        "--pooling",
        choices=("auto", "tiles", "patch"),
        default="auto",
        help="how a ViT encoder embeds positions: tiles (one forward pass per tissue tile, its "
        "token embeddings pooled under each position's patch), patch (one forward pass per "
        "position and patch size) or auto (default: tiles for timm ViTs, patch for other timm "
        "models); the built-in histology encoder ignores it, and superres mode always pools tiles",
    )
    _cache_arg(p)


def _cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write the feature cache in the input store",
    )


def _train_args(p: argparse.ArgumentParser) -> None:
    from napari_histosge.models import MODES, TrainConfig

    defaults = TrainConfig()
    p.add_argument("--genes", help="file with one gene per line (default: highly variable genes)")
    p.add_argument(
        "--n-top-genes",
        type=int,
        default=1000,
        help="number of highly variable genes (default 1000)",
    )
    p.add_argument(
        "--mode",
        choices=[*MODES, "superres"],
        default=None,
        help="model: superres (superpixel maps that match every measured unit; the default of "
        f"`run` without --checkpoint-out) or {', '.join(MODES)} (default {defaults.mode})",
    )
    p.add_argument("--epochs", type=int, default=defaults.epochs, help=f"default {defaults.epochs}")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"default {defaults.seed}")


def _train_config(args: argparse.Namespace, device: str | None) -> TrainConfig:
    from dataclasses import replace

    from napari_histosge.models import TrainConfig

    cfg = TrainConfig()
    mode = cfg.mode if args.mode in (None, "superres") else args.mode
    changes: dict[str, Any] = {"mode": mode, "epochs": args.epochs, "seed": args.seed}
    if device is not None and hasattr(cfg, "device"):
        changes["device"] = device
    return replace(cfg, **changes)


def _extract_options(args: argparse.Namespace, positions: str = "4x") -> ExtractOptions:
    from napari_histosge.workflows.pipeline import ExtractOptions

    return ExtractOptions(
        encoder=args.encoder,
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        bf16=args.bf16,
        positions=positions,
        cache=not args.no_cache,
        pooling=getattr(args, "pooling", "auto"),
    )


def _open(args: argparse.Namespace, src: str) -> Slide:
    from napari_histosge.io.wsi import is_wsi_path
    from napari_histosge.workflows.pipeline import Slide

    if is_wsi_path(src):
        raise CliError(
            f"Expected a slide with measured spots and a table, found the whole-slide file "
            f"`{src}` (an H&E image only); apply a trained model to it with `histosge predict "
            "SLIDE --checkpoint MODEL` or `histosge batch SLIDES --checkpoint MODEL`."
        )
    return Slide.open(
        src, image_key=args.image_key, spots_key=args.spots_key, table_key=args.table_key
    )


def cmd_convert(args: argparse.Namespace) -> int:
    """``histosge convert SRC OUT.zarr``."""
    from napari_histosge.io import convert

    out = convert(args.src, args.out, overwrite=args.overwrite, um_per_px=args.um_per_px)
    print(f"wrote {out}")  # noqa: T201
    return 0


def _check_inputs(args: argparse.Namespace) -> None:
    """Check the options that need no data: device and gene counts."""
    from napari_histosge.base.device import check_device
    from napari_histosge.expression import MIN_GENES

    check_device(getattr(args, "device", None))
    if getattr(args, "positions", None) is not None:
        from napari_histosge.workflows.pipeline import parse_positions

        parse_positions(args.positions)
    n_top = getattr(args, "n_top_genes", None)
    if n_top is not None and getattr(args, "genes", None) is None and n_top < MIN_GENES:
        raise CliError(
            f"Expected --n-top-genes >= {MIN_GENES}, found {n_top}; the model predicts several "
            "genes at once."
        )


def _read_genes(args: argparse.Namespace) -> list[str] | None:
    from napari_histosge.expression import MIN_GENES

    genes = read_lines(args.genes, "gene")
    if genes is not None and len(genes) < MIN_GENES:
        raise CliError(
            f"Expected at least {MIN_GENES} genes in `{args.genes}`, found {len(genes)}; the "
            "model predicts several genes at once, so add genes to the file."
        )
    return genes


def _resolution(args: argparse.Namespace) -> float | None:
    r = getattr(args, "resolution_um", None)
    if r is not None and not (r > 0):
        raise CliError(f"Expected a positive --resolution-um, found `{r}`.")
    return r


def _pitch_px(args: argparse.Namespace, slide: Slide) -> float | None:
    r = _resolution(args)
    return None if r is None else r / slide.geometry.um_per_px


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
    _check_inputs(args)
    config = _train_config(args, args.device)  # checked before any work
    genes = _read_genes(args)
    slide = _open(args, args.store)
    if mode == "superres":
        from .superres import run_superres

        return run_superres(args, slide, genes, _drive, _resolution(args))
    opts = _extract_options(args, args.positions)
    feats = _drive(iter_extract(slide, options=opts), quiet=args.quiet)
    model = _drive(
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
    maps = render_maps(slide, predictions=preds, pitch_px=_pitch_px(args, slide), smooth=True)
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
    _check_inputs(args)
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
        resolution_um=_resolution(args),
        extract=lambda s, o: _drive(iter_extract_blocked(s, options=o), quiet=args.quiet),
    )
    out = export_slide(slide, predictions=preds, maps=maps, out=args.out, overwrite=args.overwrite)
    args.written.append(str(out))
    print(f"wrote {out}")  # noqa: T201
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``histosge demo``: the whole workflow on the bundled sample, in napari when possible."""
    from napari_histosge._widgets._demo import run_demo

    return run_demo(out_dir=Path(args.out), headless=args.headless, genes=args.genes_shown)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``histosge`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="histosge",
        description="Super-resolved gene expression from H&E and spot transcriptomics (HisToSGE).",
    )
    from .superres import cell_args

    sub = parser.add_subparsers(dest="command", required=True)

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
    _slide_args(p)
    _feature_args(p)
    _train_args(p)
    cell_args(p)
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
    _cache_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _slide_args(p)
    p.set_defaults(func=cmd_predict)

    from .cohort import CliHelpers, add_cohort_commands
    from .evaluate import cmd_evaluate

    helpers = CliHelpers(_drive, _read_genes, _open, _extract_options, _train_config, _check_inputs)
    add_cohort_commands(sub, helpers, (_slide_args, _feature_args, _train_args))

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
    _slide_args(p)
    _feature_args(p)
    _train_args(p)
    p.set_defaults(func=partial(cmd_evaluate, helpers=helpers))

    p = sub.add_parser("demo", help="run the workflow on the bundled sample and show it in napari")
    p.add_argument("--out", default="histosge-demo", help="folder for the store and screenshot")
    p.add_argument("--headless", action="store_true", help="no window: export and screenshot only")
    p.add_argument("--genes-shown", nargs="*", help="genes to show (default: two variable genes)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``histosge``; errors exit non-zero with one clear line."""
    import warnings

    warnings.filterwarnings("ignore", message=".*autosharding.*")

    def _one_line(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        print(f"histosge: warning: {message}", file=sys.stderr)  # noqa: T201

    warnings.showwarning = _one_line
    parser = build_parser()
    args = parser.parse_args(argv)
    args.written = []
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        done = f"kept the finished {', '.join(args.written)}" if args.written else "wrote no output"
        cache = (
            " (feature caches finished in the input store are kept)"
            if getattr(args, "no_cache", True) is False
            else ""
        )
        print(  # noqa: T201
            f"histosge: cancelled; {done}{cache}; unfinished writes were discarded and earlier "
            "files left as they were.",
            file=sys.stderr,
        )
        return 130
    except (CliError, ValueError, KeyError, OSError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        if isinstance(err, OSError) and not isinstance(err, FileExistsError | FileNotFoundError):
            msg = f"could not write or read `{err.filename}`: {err.strerror or err}"
        msg = " ".join(str(msg).split())
        print(f"histosge: error: {msg}", file=sys.stderr)  # noqa: T201
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
