"""The ``histosge`` command line: convert, run, predict, evaluate and demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ._progress import Progress

if TYPE_CHECKING:
    from .models import TrainConfig
    from .pipeline import ExtractOptions, Slide

__all__ = ["main"]

T = TypeVar("T")


class CliError(Exception):
    """An error reported to the user as one line, with exit code 2."""


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


def _read_lines(path: str | None, what: str) -> list[str] | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise CliError(f"Expected {what} file `{p}` to exist, found nothing there.")
    items = [ln.strip() for ln in p.read_text().splitlines()]
    items = [ln for ln in items if ln and not ln.startswith("#")]
    if not items:
        raise CliError(f"Expected {what} in `{p}` (one per line), found an empty file.")
    return items


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


def _train_args(p: argparse.ArgumentParser) -> None:
    from .models import MODES, TrainConfig

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
        choices=list(MODES),
        default=defaults.mode,
        help=f"model configuration (default {defaults.mode})",
    )
    p.add_argument("--epochs", type=int, default=defaults.epochs, help=f"default {defaults.epochs}")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"default {defaults.seed}")


def _train_config(args: argparse.Namespace, device: str | None) -> TrainConfig:
    from dataclasses import replace

    from .models import TrainConfig

    cfg = TrainConfig()
    changes: dict[str, Any] = {"mode": args.mode, "epochs": args.epochs, "seed": args.seed}
    if device is not None and hasattr(cfg, "device"):
        changes["device"] = device
    return replace(cfg, **changes)


def _extract_options(args: argparse.Namespace, positions: str = "4x") -> ExtractOptions:
    from .pipeline import ExtractOptions

    return ExtractOptions(
        encoder=args.encoder,
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        bf16=args.bf16,
        positions=positions,
    )


def _open(args: argparse.Namespace, src: str) -> Slide:
    from .pipeline import Slide

    return Slide.open(
        src, image_key=args.image_key, spots_key=args.spots_key, table_key=args.table_key
    )


def cmd_convert(args: argparse.Namespace) -> int:
    """``histosge convert SRC OUT.zarr``."""
    from .io import convert

    out = convert(args.src, args.out, overwrite=args.overwrite)
    print(f"wrote {out}")  # noqa: T201
    return 0


def _check_out(out: str, overwrite: bool, source: Path | None) -> None:
    p = Path(out).resolve()
    if p.exists() and not overwrite and (source is None or p != source.resolve()):
        raise CliError(
            f"Expected --out `{p}` not to exist, found it; pass --overwrite to replace it."
        )


def cmd_run(args: argparse.Namespace) -> int:
    """``histosge run STORE --out OUT.zarr``: features, training, prediction and export."""
    from .checkpoints import save_checkpoint
    from .pipeline import export_slide, iter_extract, iter_train, predict_slide, render_maps

    t0 = time.perf_counter()
    src_path = Path(args.store)
    _check_out(args.out, args.overwrite, src_path)
    genes = _read_lines(args.genes, "gene")
    slide = _open(args, args.store)
    opts = _extract_options(args, args.positions)
    feats = _drive(iter_extract(slide, options=opts), quiet=args.quiet)
    model = _drive(
        iter_train(
            slide,
            features=feats,
            config=_train_config(args, args.device),
            genes=genes,
            n_top_genes=args.n_top_genes,
        ),
        quiet=args.quiet,
    )
    preds = predict_slide(slide, features=feats, model=model)
    maps = render_maps(slide, predictions=preds)
    meta = {"command": " ".join(sys.argv), "source": str(src_path)}
    out = export_slide(
        slide, predictions=preds, maps=maps, out=args.out, meta=meta, overwrite=args.overwrite
    )
    if args.checkpoint_out:
        save_checkpoint(model, args.checkpoint_out)
    n_new = int((preds.kind != "spot").sum())
    print(  # noqa: T201
        f"wrote {out}: {len(preds.genes)} genes at {len(slide.geometry.spot_ids)} spots + "
        f"{n_new} new positions, maps {maps.data.shape[2]}x{maps.data.shape[1]} px "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``histosge predict STORE --checkpoint CKPT --out OUT.zarr``: apply a trained model."""
    from .checkpoints import load_checkpoint
    from .pipeline import ExtractOptions, export_slide, iter_extract, predict_slide, render_maps

    _check_out(args.out, args.overwrite, Path(args.store))
    model = load_checkpoint(args.checkpoint)
    meta = model.feature_meta
    slide = _open(args, args.store)
    sizes = meta.get("patch_sizes_spot") or meta.get("patch_sizes")
    opts = ExtractOptions(
        encoder=str(meta.get("encoder", "histology")),
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        positions=args.positions,
        patch_sizes=tuple(sizes) if sizes else None,
    )
    feats = _drive(iter_extract(slide, options=opts), quiet=args.quiet)
    preds = predict_slide(slide, features=feats, model=model, use_measured=False)
    maps = render_maps(slide, predictions=preds)
    out = export_slide(slide, predictions=preds, maps=maps, out=args.out, overwrite=args.overwrite)
    print(f"wrote {out}")  # noqa: T201
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``histosge evaluate STORE --holdout-spots FILE``: held-out accuracy with baselines."""
    from .evaluate import evaluate_holdout

    holdout = _read_lines(args.holdout_spots, "held-out spot id")
    genes = _read_lines(args.genes, "gene")
    slide = _open(args, args.store)
    _check_out(args.predictions_out, True, None)
    result = _drive(
        evaluate_holdout(
            slide,
            holdout=holdout,
            genes=genes,
            n_top_genes=args.n_top_genes,
            extract=_extract_options(args),
            config=_train_config(args, args.device),
        ),
        quiet=args.quiet,
    )
    result.predictions.to_csv(args.predictions_out)
    Path(args.metrics_out).write_text(json.dumps(result.metrics, indent=2, default=float))
    summary = ", ".join(
        f"{name} {m['mean_r']:.3f}" for name, m in result.metrics["methods"].items()
    )
    print(f"held-out mean Pearson r: {summary}")  # noqa: T201
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``histosge demo``: the whole workflow on the bundled sample, in napari when possible."""
    from ._widgets._demo import run_demo

    return run_demo(out_dir=Path(args.out), headless=args.headless, genes=args.genes_shown)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``histosge`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="histosge",
        description="Super-resolved gene expression from H&E and spot transcriptomics (HisToSGE).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="write a slide (zarr, Visium folder, ST folder) to a .zarr")
    p.add_argument(
        "src", help="SpatialData .zarr, Space Ranger Visium folder, or ST section folder"
    )
    p.add_argument("out", help="output .zarr store")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("run", help="features, training, prediction and export in one go")
    p.add_argument("store", help="input slide: .zarr, Visium folder or ST section folder")
    p.add_argument(
        "--out", required=True, help="output .zarr (input elements + histosge_* outputs)"
    )
    p.add_argument(
        "--positions", default="4x", help="4x (between neighbouring spots) or grid:MICRONS"
    )
    p.add_argument("--checkpoint-out", help="also save the trained model (safetensors + JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _slide_args(p)
    _feature_args(p)
    _train_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "predict", help="apply a saved model to a slide (image and coordinates only)"
    )
    p.add_argument("store", help="input slide")
    p.add_argument("--checkpoint", required=True, help="model saved by `run --checkpoint-out`")
    p.add_argument("--out", required=True, help="output .zarr")
    p.add_argument("--positions", default="4x", help="4x or grid:MICRONS")
    p.add_argument("--weights", help="encoder weights file, when the model's encoder needs one")
    p.add_argument("--device", help="cpu, cuda or mps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    _slide_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="held-out accuracy of the model and of baselines")
    p.add_argument("store", help="input slide")
    p.add_argument(
        "--holdout-spots", required=True, help="file with held-out spot ids, one per line"
    )
    p.add_argument("--predictions-out", required=True, help="CSV: held-out spots x genes")
    p.add_argument("--metrics-out", required=True, help="JSON: per-gene r, MSE, MAE and means")
    p.add_argument("--quiet", action="store_true")
    _slide_args(p)
    _feature_args(p)
    _train_args(p)
    p.set_defaults(func=cmd_evaluate)

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
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("histosge: cancelled; nothing was written.", file=sys.stderr)  # noqa: T201
        return 130
    except (CliError, ValueError, KeyError, FileExistsError, FileNotFoundError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"histosge: error: {msg}", file=sys.stderr)  # noqa: T201
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
