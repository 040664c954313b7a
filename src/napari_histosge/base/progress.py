"""Progress records yielded by long-running core generators."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Cancelled", "Progress", "run_generator"]

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a long-running job.

    Parameters
    ----------
    stage
        Short name of the stage (``"features"``, ``"train"``, ``"predict"``, ``"export"``).
    step
        Steps done so far.
    total
        Total number of steps, or ``None`` when unknown.
    message
        Human-readable detail for a status line.
    info
        Extra values, for example ``{"epoch": 3, "train_loss": 0.1, "val_loss": 0.2}``.
    """

    stage: str
    step: int
    total: int | None = None
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """Fraction done in ``[0, 1]``, or ``None`` when the total is unknown."""
        if not self.total:
            return None
        return min(1.0, self.step / self.total)


class Cancelled(RuntimeError):
    """Raised when a job is cancelled between steps; nothing half-written is kept."""


def run_generator(
    gen: Generator[Progress, None, T],
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> T:
    """Run a progress generator to the end and return its value.

    Parameters
    ----------
    gen
        A generator that yields :class:`Progress` and returns a result.
    progress
        Called with each :class:`Progress`.
    cancel
        Polled after each step; when it returns ``True`` the generator is closed and
        :class:`Cancelled` is raised.

    Returns
    -------
    The generator's return value.

    Examples
    --------
    >>> def job():
    ...     yield Progress("demo", 1, 1)
    ...     return 42
    >>> run_generator(job())
    42
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        if progress is not None:
            progress(item)
        if cancel is not None and cancel():
            gen.close()
            raise Cancelled(f"{item.stage} was cancelled at step {item.step}.")
