"""``histosge run --mode superres``: the super-resolution step behind the command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import Slide

__all__ = ["run_superres"]


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
    return 0
