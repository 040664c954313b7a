"""What a task in the worker process gets: its input and the line back to the viewer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Job", "plain"]


def plain(info: dict[str, Any] | None) -> dict[str, Any]:
    """Keep the plain values (numbers, strings) of a progress record's extra values.

    Examples
    --------
    >>> plain({"epoch": 3, "weights": object()})
    {'epoch': 3}
    """
    out: dict[str, Any] = {}
    for k, v in (info or {}).items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif hasattr(v, "item") and getattr(v, "size", 2) == 1:
            out[k] = v.item()
    return out


@dataclass
class Job:
    """One task's input: its values, the session's context, and the link back to the viewer.

    Parameters
    ----------
    payload
        The task's own values (options, genes, paths).
    context
        The session's slide, features, model and predictions, as the worker rebuilds them.
    report
        Sends one progress record to the viewer.
    stop
        Whether the viewer asked the task to stop.
    """

    payload: dict[str, Any]
    context: dict[str, Any]
    report: Callable[[dict[str, Any]], None]
    stop: Callable[[], bool]

    def say(self, stage: str, step: int, total: int | None, message: str) -> None:
        """Report progress without extra values."""
        self.report({"stage": stage, "step": step, "total": total, "message": message, "info": {}})

    def run(self, gen: Any) -> Any:
        """Run a core step's generator to its result, reporting its progress, stopping on cancel."""
        from napari_histosge import run_generator

        return run_generator(gen, progress=self.progress, cancel=self.stop)

    def progress(self, item: Any) -> None:
        """Report a core progress record (``stage``, ``step``, ``total``, ``message``, ``info``)."""
        self.report(
            {
                "stage": item.stage,
                "step": item.step,
                "total": item.total,
                "message": item.message,
                "info": plain(item.info),
            }
        )
