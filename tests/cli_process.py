"""The ``histosge`` command (or a short script) in a process of its own, started quickly.

A fresh interpreter for each command imports torch, scanpy, scikit-learn and spatialdata anew (9 s
of CPU for the four here), and the fault-injection tests start dozens of commands: ``histosge run``
of the sample took 6.4 s of CPU in a fresh interpreter, 2.4 s forked as below (2026-12-06, 2-core
machine). Here each command runs in a process forked from a ``multiprocessing`` fork server (one
per test process) that imported those modules once and has run nothing: a real process with its own
pid, environment, stdout and stderr, which a signal from outside or from itself really kills
(``returncode`` is ``-9`` after ``SIGKILL``). The child behaves as ``python -m
napari_histosge.cli`` or ``python -c`` would at its end: exit code from ``SystemExit``, an uncaught
``KeyboardInterrupt`` printed and ended by ``SIGINT``, ``atexit`` functions run.

Tests that check what a fresh interpreter imports keep ``subprocess`` with ``sys.executable``.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

#: Imported once by the fork server: what the commands under test import on their way.
PRELOAD = ["cli_process_preload"]

_CTX = mp.get_context("forkserver")
_TESTS = Path(__file__).resolve().parent
_SRC = _TESTS.parent / "src"


def _context() -> mp.context.ForkServerContext:
    """The fork server, started once with this checkout's package and the tests importable."""
    from multiprocessing import forkserver

    _CTX.set_forkserver_preload(PRELOAD)
    saved = os.environ.get("PYTHONPATH")
    # The server is a fresh interpreter that imports PRELOAD from its own ``sys.path``.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(_SRC), str(_TESTS), saved) if p)
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    return _CTX


def _child(
    kind: str, target: str, argv: list[str], env: dict[str, str], out: str, err: str
) -> None:
    """The forked process: run the command as the interpreter would, then leave."""
    # Ctrl-C raises KeyboardInterrupt, as in an interpreter started from a terminal, even when
    # the suite itself was started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    code: int = 0
    interrupted = False
    try:
        if kind == "module":
            import runpy

            sys.argv = [target, *argv]
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.argv = ["-c", *argv]
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:  # noqa: BLE001 - printed as the interpreter prints it
        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if interrupted:  # as CPython ends on an uncaught KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


class Process:
    """A running command: ``pid``, ``poll()``, ``send_signal()``, ``communicate()``."""

    def __init__(self, kind: str, target: str, argv: list[str], env: dict[str, str]) -> None:
        self._dir = tempfile.mkdtemp(prefix="histosge-cli-")
        self._out, self._err = (os.path.join(self._dir, n) for n in ("out", "err"))
        self.args = [target, *argv]
        self._proc = _context().Process(
            target=_child, args=(kind, target, argv, env, self._out, self._err)
        )
        self._proc.start()
        self.pid = self._proc.pid

    def poll(self) -> int | None:
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        if self._proc.exitcode is None:
            os.kill(self.pid, sig)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            self._proc.kill()
            self._proc.join()
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        texts = tuple(Path(p).read_text(errors="replace") for p in (self._out, self._err))
        for p in (self._out, self._err):
            os.unlink(p)
        os.rmdir(self._dir)
        return texts  # type: ignore[return-value]

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode


def start_cli(args: list, env: dict[str, str]) -> Process:
    """``histosge ARGS`` (``python -m napari_histosge.cli``) started in the background."""
    return Process("module", "napari_histosge.cli", [str(a) for a in args], env)


def start_code(code: str, args: list, env: dict[str, str]) -> Process:
    """``python -c CODE ARGS`` started in the background."""
    return Process("code", code, [str(a) for a in args], env)


def finish(proc: Process, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Wait for ``proc``; its exit code and output as ``subprocess.run`` gives them."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
