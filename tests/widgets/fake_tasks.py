"""Small worker tasks for testing the runner without the core (imported in the worker)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any


class WorkerState:
    def __init__(self, session_dir: Path) -> None:
        self.session_dir = session_dir
        self.calls = 0


def warm_up() -> dict[str, Any]:
    return {"pid": os.getpid(), "nice": os.nice(0)}


def echo(state, job):
    state.calls += 1
    return {
        "payload": job.payload,
        "context": job.context,
        "calls": state.calls,
        "pid": os.getpid(),
    }


def count(state, job):
    for i in range(int(job.payload["n"])):
        if job.stop():
            raise RuntimeError("stopped")
        job.report(
            {
                "stage": "count",
                "step": i + 1,
                "total": job.payload["n"],
                "message": f"{i}",
                "info": {"train_loss": 1.0 / (i + 1), "epoch": i + 1},
            }
        )
        time.sleep(float(job.payload.get("sleep", 0.01)))
    return {"n": job.payload["n"]}


def stubborn(state, job):
    time.sleep(60)
    return {}


def fail(state, job):
    raise ValueError("Expected a good value, found a bad one.")


def crash(state, job):
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)
    return {}


def slow_teardown(state, job):
    # Like a worker with torch and scanpy loaded: the interpreter's teardown takes seconds.
    import atexit

    atexit.register(time.sleep, 5.0)
    return {"pid": os.getpid()}


TASKS = {
    "echo": echo,
    "count": count,
    "stubborn": stubborn,
    "fail": fail,
    "crash": crash,
    "slow_teardown": slow_teardown,
}
