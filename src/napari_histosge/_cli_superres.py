"""``histosge run --mode superres``: the super-resolution step behind the command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import Slide

__all__ = ["cell_args", "run_superres"]


def run_superres(
    args: argparse.Namespace,
    slide: Slide,
    genes: list[str] | None,
    drive: Callable[..., Any],
    resolution_um: float | None,
) -> int:
    """Fit the superres model on ``slide`` and export its maps (``histosge run``)."""
    from .superpixels import SuperResOptions, export_superres, iter_superres

    t0 = time.perf_counter()
    opts = SuperResOptions.from_seed(
        args.seed, resolution_um=resolution_um, encoder=args.encoder, weights=args.weights,
        device=args.device, bf16=args.bf16, batch_size=args.batch_size, cache=not args.no_cache,
    )  # fmt: skip
    gen = iter_superres(slide, genes=genes, n_top_genes=args.n_top_genes, options=opts)
    result = drive(gen, quiet=args.quiet)
    meta = {"command": " ".join(sys.argv), "source": str(args.store)}
    out, maps = export_superres(
        slide, result, out=args.out, meta=meta, overwrite=args.overwrite
    )  # fmt: skip
    args.written.append(str(out))
    print(  # noqa: T201
        f"wrote {out}: {len(result.genes)} genes at {result.grid.n} superpixels of "
        f"{result.resolution_um:g} µm (maps {maps.data.shape[2]}x{maps.data.shape[1]} px) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    if getattr(args, "cells", False):
        from .cells.table import iter_add_cells

        t1 = time.perf_counter()
        info = drive(
            iter_add_cells(out, slide, result, maps=maps, seed=args.seed), quiet=args.quiet
        )
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
