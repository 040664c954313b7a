"""The ``histosge`` parser and entry point; the commands live in one module per group."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import cohort, evaluate, slide
from ._common import CliError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``histosge`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="histosge",
        description="Super-resolved gene expression from H&E and spot transcriptomics (HisToSGE).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (slide, cohort, evaluate):
        group.add_commands(sub)
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
