"""Output and input files of the ``histosge`` command line: targets, ``--in-place``, lists."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = [
    "CliError",
    "check_out",
    "in_place_arg",
    "read_lines",
    "resolve_out",
]


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
