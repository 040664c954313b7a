"""A worker process for the dock's heavy steps, and its controls on the viewer's side.

:class:`Runner` starts :func:`serve` in a process of its own (``multiprocessing`` ``spawn``: a
fresh interpreter without the viewer's OpenGL context or interpreter lock) and sends it one task
at a time over a pipe. Progress, loss values, results and errors come back over the same pipe;
:meth:`Runner.poll` reads them without blocking (the dock calls it from a timer) and emits them as
signals. :meth:`Runner.cancel` asks the task to stop and, when it has not stopped within
``grace_s``, terminates the process; a process that dies on its own is reported as an error.
No Qt and no core import here: the runner is tested without a viewer.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from psygnal import Signal

from ._task_job import Job

__all__ = ["Runner", "serve"]

#: Seconds one poll may spend handling the worker's messages.
POLL_BUDGET_S = 0.015

#: The module whose ``TASKS``, ``WorkerState`` and ``warm_up`` the worker runs.
DEFAULT_TASKS = "napari_histosge._widgets._tasks_steps"


def serve(conn: Any, stop: Any, session_dir: str, tasks_module: str) -> None:
    """Run tasks from ``conn`` until told to quit (the worker process's main loop)."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    try:
        module = importlib.import_module(tasks_module)
        state = module.WorkerState(Path(session_dir))
        conn.send(("ready", None, module.warm_up()))
    except Exception as err:  # noqa: BLE001 - reported to the viewer, which shows it
        conn.send(("error", None, f"The worker could not start: {err}", traceback.format_exc()))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "quit":
            # Nothing is left to write (every result is already in the store or sent), and
            # the interpreter's teardown with torch and scanpy loaded outlasts the viewer's
            # wait: leave at once instead of being terminated.
            conn.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        _, task_id, name, payload, context = message

        def report(item: dict[str, Any], task_id: int = task_id) -> None:
            conn.send(("progress", task_id, item))

        try:
            job = Job(payload, context, report, stop.is_set)
            result = module.TASKS[name](state, job)
        except Exception as err:  # noqa: BLE001 - every failure goes back to the viewer
            if stop.is_set() or type(err).__name__ == "Cancelled":
                conn.send(("cancelled", task_id, None))
            else:
                text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
                conn.send(("error", task_id, text or type(err).__name__, traceback.format_exc()))
        else:
            conn.send(("done", task_id, result))


@contextlib.contextmanager
def _plain_main() -> Iterator[None]:
    """Hide ``__main__``'s file while spawning, so the worker does not run the user's script."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def describe_exit(code: int | None) -> str:
    """Say how a process ended.

    Examples
    --------
    >>> describe_exit(-11)
    'killed by signal SIGSEGV'
    """
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Runner:
    """Owns the worker process: one task at a time, progress by polling, Cancel that stops.

    Parameters
    ----------
    session_dir
        Folder for the session's files (stores, checkpoints, maps); a new temporary folder,
        removed when Python exits, when ``None``.
    tasks
        Module (importable in the worker) with ``TASKS``, ``WorkerState`` and ``warm_up``.
    grace_s
        Seconds a cancelled task gets to stop before its process is terminated.
    """

    started = Signal(str)
    progress = Signal(dict)
    finished = Signal(str, object)
    failed = Signal(str, str)
    cancelled = Signal(str)
    ready = Signal(dict)

    def __init__(
        self,
        session_dir: str | Path | None = None,
        tasks: str = DEFAULT_TASKS,
        grace_s: float = 0.5,
    ) -> None:
        if session_dir is None:
            session_dir = tempfile.mkdtemp(prefix="napari-histosge-")
            atexit.register(shutil.rmtree, session_dir, True)
        self.session_dir = Path(session_dir)
        self.session_dir.mkdir(parents=True, exist_ok=True)
        self.tasks = tasks
        self.grace_s = grace_s
        self.worker_info: dict[str, Any] = {}
        self.last_traceback = ""
        self._ctx = mp.get_context("spawn")
        self._process: Any = None
        self._conn: Any = None
        self._stop: Any = None
        self._dying: list[tuple[Any, float]] = []
        self._task: tuple[int, str] | None = None
        self._next_id = 0
        self._cancel_at: float | None = None

    @property
    def running(self) -> str | None:
        """Name of the task in flight, or ``None``."""
        return None if self._task is None else self._task[1]

    @property
    def pid(self) -> int | None:
        """Process id of the worker, when one runs."""
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the worker process (it imports the core while the viewer goes on)."""
        if self._process is not None and self._process.is_alive():
            return
        self._drop_process()
        parent, child = self._ctx.Pipe()
        self._stop = self._ctx.Event()
        self._process = self._ctx.Process(
            target=serve,
            args=(child, self._stop, str(self.session_dir), self.tasks),
            name="napari-histosge-worker",
            daemon=True,
        )
        with _plain_main():
            self._process.start()
        child.close()
        self._conn = parent

    def submit(self, name: str, payload: dict[str, Any], context: dict[str, Any]) -> bool:
        """Send one task; ``False`` (and nothing sent) while another one runs."""
        if self._task is not None:
            return False
        self.start()
        self._stop.clear()
        self._next_id += 1
        self._task = (self._next_id, name)
        self._cancel_at = None
        try:
            self._conn.send(("task", self._next_id, name, payload, context))
        except (OSError, ValueError):
            self._task = None
            self._lost(name)
            return False
        self.started.emit(name)
        return True

    def cancel(self) -> None:
        """Ask the running task to stop; its process is terminated after ``grace_s``."""
        if self._task is None or self._cancel_at is not None:
            return
        self._stop.set()
        self._cancel_at = time.monotonic() + self.grace_s

    def poll(self) -> None:
        """Handle what the worker sent; enforce a pending Cancel; notice a dead worker."""
        self._reap()
        conn = self._conn
        # Bounded in time, so one poll never holds the event loop for long: a burst of messages
        # (hundreds of fast epochs) is handled over several turns.
        deadline = time.perf_counter() + POLL_BUDGET_S
        while time.perf_counter() < deadline:
            if conn is None:
                break
            try:
                if not conn.poll():
                    break
                message = conn.recv()
            except (EOFError, OSError):
                break
            self._handle(message)
            if conn is not self._conn:
                break
        if self._task is not None and self._cancel_at is not None:
            if time.monotonic() >= self._cancel_at:
                name = self._task[1]
                self._task = None
                self._kill()
                self.cancelled.emit(name)
                self.start()  # a fresh worker, warming up for the next task
            return
        if self._process is not None and not self._process.is_alive():
            code = self._process.exitcode
            self._drop_process()
            if self._task is not None:
                name = self._task[1]
                self._task = None
                self.failed.emit(
                    name,
                    f"The worker process stopped unexpectedly ({describe_exit(code)}) during "
                    f"'{name}'. napari is unaffected; nothing was changed. Try again.",
                )

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind, task_id = message[0], message[1]
        if kind == "ready":
            self.worker_info = dict(message[2] or {})
            self.ready.emit(self.worker_info)
            return
        if self._task is None or task_id not in (self._task[0], None):
            return  # from a task that was cancelled
        name = self._task[1]
        if kind == "progress":
            self.progress.emit(message[2])
            return
        self._task = None
        self._cancel_at = None
        if kind == "done":
            self.finished.emit(name, message[2])
        elif kind == "cancelled":
            self.cancelled.emit(name)
        else:
            self.last_traceback = message[3] if len(message) > 3 else ""
            self.failed.emit(name, message[2])

    def _lost(self, name: str) -> None:
        code = None if self._process is None else self._process.exitcode
        self._drop_process()
        self.failed.emit(name, f"The worker process is gone ({describe_exit(code)}). Try again.")

    def _kill(self) -> None:
        process = self._process
        self._drop_process()
        if process is not None and process.is_alive():
            process.terminate()
            self._dying.append((process, time.monotonic() + 0.5))

    def _drop_process(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._conn = None
        self._process = None

    def _reap(self) -> None:
        """Collect terminated processes; kill the ones that ignore the terminate signal."""
        keep = []
        for process, deadline in self._dying:
            if not process.is_alive():
                process.join(0)
                continue
            if time.monotonic() > deadline:
                process.kill()
            keep.append((process, deadline + 5.0))
        self._dying = keep

    def close(self, timeout: float = 1.0) -> None:
        """Stop the worker (asking first, then terminating)."""
        process, conn = self._process, self._conn
        self._task = None
        if process is None:
            return
        if self._stop is not None:
            self._stop.set()
        with contextlib.suppress(OSError, ValueError):
            conn.send(("quit",))
        process.join(timeout / 2)
        if process.is_alive():
            process.terminate()
            process.join(timeout / 2)
        if process.is_alive():
            process.kill()
        self._drop_process()
