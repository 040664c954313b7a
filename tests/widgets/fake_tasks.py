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


def echo(state, payload, context, report, stop):
    state.calls += 1
    return {"payload": payload, "context": context, "calls": state.calls, "pid": os.getpid()}


def count(state, payload, context, report, stop):
    for i in range(int(payload["n"])):
        if stop():
            raise RuntimeError("stopped")
        report(
            {
                "stage": "count",
                "step": i + 1,
                "total": payload["n"],
                "message": f"{i}",
                "info": {"train_loss": 1.0 / (i + 1), "epoch": i + 1},
            }
        )
        time.sleep(float(payload.get("sleep", 0.01)))
    return {"n": payload["n"]}


def stubborn(state, payload, context, report, stop):
    time.sleep(60)
    return {}


def fail(state, payload, context, report, stop):
    raise ValueError("Expected a good value, found a bad one.")


def crash(state, payload, context, report, stop):
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)
    return {}


TASKS = {"echo": echo, "count": count, "stubborn": stubborn, "fail": fail, "crash": crash}
