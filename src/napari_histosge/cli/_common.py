"""What the ``histosge`` command groups share: options, checks, output targets, progress bars."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from napari_histosge.base.progress import Progress
    from napari_histosge.models import TrainConfig
    from napari_histosge.workflows.pipeline import ExtractOptions, Slide

__all__ = [
    "CliError",
    "cache_arg",
    "check_inputs",
    "check_out",
    "drive",
    "extract_options",
    "feature_args",
    "in_place_arg",
    "open_slide",
    "pitch_px",
    "read_genes",
    "read_lines",
    "resolution",
    "resolve_out",
    "slide_args",
    "train_args",
    "train_config",
]

T = TypeVar("T")


class CliError(Exception):
    """An error reported to the user as one line, with exit code 2."""


def read_lines(path: str | None, what: str) -> list[str] | None:
    """Read a list file (one item a line, ``#`` comments); ``None`` when no path is given."""
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


def in_place_arg(p: argparse.ArgumentParser) -> None:
    """Add ``--in-place`` to a command that writes an output store."""
    p.add_argument(
        "--in-place",
        action="store_true",
        help="add the histosge_* elements to the input .zarr store instead of writing --out "
        "(only those elements are written; --overwrite replaces earlier ones)",
    )


def check_out(out: str, overwrite: bool, source: Path | None) -> Path:
    """Check the output store with the one overwrite rule; return its resolved path.

    Into the input store itself, earlier ``histosge_*`` outputs there are refused without
    ``--overwrite`` before any work is done.
    """
    from napari_histosge.store import ELEMENT_KINDS, check_target

    path = check_target(out, overwrite=overwrite, kind="store", inputs=[source], allow_input=True)
    if source is not None and path == Path(source).expanduser().resolve() and not overwrite:
        earlier = [k for k, g in ELEMENT_KINDS.items() if (path / g / k).exists()]
        if earlier:
            raise FileExistsError(
                f"Expected no earlier outputs in the store, found `{earlier}`; pass --overwrite "
                "to replace them."
            )
    return path


def resolve_out(args: argparse.Namespace) -> str:
    """Return the output store: ``--out``, or the input store itself with ``--in-place``."""
    if args.in_place:
        src = Path(args.store).expanduser().resolve()
        if args.out is not None and Path(args.out).expanduser().resolve() != src:
            raise CliError(
                f"Expected either --out or --in-place, found both (--out `{args.out}`); "
                "--in-place writes into the input store."
            )
        if not (src / "zarr.json").is_file():
            raise CliError(
                f"Expected a .zarr SpatialData store for --in-place, found `{args.store}`; "
                "convert it first (histosge convert) or give --out."
            )
        args.out = str(src)
    elif args.out is None:
        raise CliError("Expected --out OUT.zarr or --in-place, found neither.")
    return str(args.out)


def drive(gen: Generator[Progress, None, T], *, quiet: bool = False) -> T:
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


def slide_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-key", help="image element to use (auto-detected by default)")
    p.add_argument("--spots-key", help="circles element of the spots (auto-detected by default)")
    p.add_argument("--table-key", help="table annotating the spots (auto-detected by default)")


def feature_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--cell-features",
        action="store_true",
        help="append the nuclei statistics (density, size, shape, haematoxylin, morphological "
        "classes) of each spot (attention models; a model trained with them predicts with them) "
        "or each superpixel (superres mode) to the image features; segments the nuclei",
    )
    cache_arg(p)


def cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write the feature cache in the input store",
    )


def train_args(p: argparse.ArgumentParser) -> None:
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


def train_config(args: argparse.Namespace, device: str | None) -> TrainConfig:
    from dataclasses import replace

    from napari_histosge.models import TrainConfig

    cfg = TrainConfig()
    mode = cfg.mode if args.mode in (None, "superres") else args.mode
    changes: dict[str, Any] = {"mode": mode, "epochs": args.epochs, "seed": args.seed}
    if device is not None and hasattr(cfg, "device"):
        changes["device"] = device
    return replace(cfg, **changes)


def extract_options(args: argparse.Namespace, positions: str = "4x") -> ExtractOptions:
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
        cell_features=bool(getattr(args, "cell_features", False)),
    )


def open_slide(args: argparse.Namespace, src: str) -> Slide:
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


def check_inputs(args: argparse.Namespace) -> None:
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


def read_genes(args: argparse.Namespace) -> list[str] | None:
    from napari_histosge.expression import MIN_GENES

    genes = read_lines(args.genes, "gene")
    if genes is not None and len(genes) < MIN_GENES:
        raise CliError(
            f"Expected at least {MIN_GENES} genes in `{args.genes}`, found {len(genes)}; the "
            "model predicts several genes at once, so add genes to the file."
        )
    return genes


def resolution(args: argparse.Namespace) -> float | None:
    r = getattr(args, "resolution_um", None)
    if r is not None and not (r > 0):
        raise CliError(f"Expected a positive --resolution-um, found `{r}`.")
    return r


def pitch_px(args: argparse.Namespace, slide: Slide) -> float | None:
    r = resolution(args)
    return None if r is None else r / slide.geometry.um_per_px
