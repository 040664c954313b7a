"""Drive the dock in a napari started as a user starts it, and time the event loop.

Run in a fresh interpreter (the tests start it as a subprocess): nothing heavy is imported
before the viewer exists. The script opens the bundled sample (File > Open Sample) or a store
(File > Open), opens the dock (Plugins > HisToSGE), presses Use sample / From layers, Extract,
Train, Predict and Render by their buttons, and checks that gene layers appear over the tissue.
A 20 ms timer records the longest gap of the event loop per step, from the dock's opening to the
rendered map. Then, in the same window, it times napari's own turns for an image layer like the
maps: its visuals, its layer controls and its first draw, each on a turn of its own as the dock
adds its maps (``napari_layer_ms``, the longest: the floor every map layer pays). The last
line printed is a JSON report; the exit code is 0 when the flow worked.

With ``--trace``, a thread samples the main thread's stack up to four times, 10 ms apart, while the
event loop is late (no tick for 40 ms), and the report names the functions seen most in each
step's longest gap.

usage: python plain_flow.py [--store STORE.zarr] [--epochs N] [--screenshot OUT.png] [--trace]
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import sys
import threading
import time

HEAVY = ("torch", "timm", "scanpy", "sklearn", "triton")
#: Stack samples taken during one long gap (``--trace``).
SAMPLES_PER_GAP = 4
#: Image layers whose turns are timed as napari's own floor (the worst one is reported).
REFERENCE_DRAWS = 4


def main() -> int:  # noqa: C901 - one linear script
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--screenshot", default=None)
    ap.add_argument("--step-timeout", type=float, default=400)
    ap.add_argument("--trace", action="store_true", help="sample the stack during long gaps")
    args = ap.parse_args()
    faulthandler.enable()

    import napari
    from qtpy.QtCore import QItemSelectionModel, QTimer
    from qtpy.QtWidgets import QListView, QPushButton

    viewer = napari.Viewer(show=True)
    app = napari.qt.get_qapp()
    # Notifications (warnings, errors) pop up animated and repaint the window while shown.
    from napari.utils.notifications import notification_manager

    notices: list[str] = []
    notification_manager.notification_ready.connect(
        lambda event: notices.append(str(event.value.message)[:200])
    )

    def pump(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.005)

    if args.store:
        viewer.open(args.store, plugin="napari-histosge")
    else:
        viewer.open_sample("napari-histosge", "mouse_brain")
    tissue = viewer.layers[0]
    pump(1.0)

    gaps: dict[str, float] = {}
    busy: dict[str, float] = {}
    state = {"last": time.perf_counter(), "cpu": time.process_time(), "step": "opening the dock"}
    state["queued"] = 0.0

    def queued_ms() -> float:
        # Time the main thread spent runnable but waiting for a CPU (Linux schedstat).
        try:
            with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
                return int(f.read().split()[1]) / 1e6
        except (OSError, IndexError, ValueError):
            return 0.0

    def tick() -> None:
        # Wall-clock gap between ticks; the part of it this process spent computing (its CPU
        # time, all threads: a thread holding the interpreter lock counts, and so do the OpenGL
        # rasteriser's threads); and the time its main thread waited for a CPU. The rest is time
        # it waited for something else (the X server).
        now, cpu, queued = time.perf_counter(), time.process_time(), queued_ms()
        gap = (now - state["last"]) * 1000.0
        used = min(gap, (cpu - state["cpu"]) * 1000.0)
        waited = queued - state["queued"]
        state["queued"] = queued
        if gap > 50.0:
            long_gaps.append(
                (state["step"], round(gap, 1), round(used, 1), round(waited, 1), state["last"])
            )
        if gap > gaps.get(state["step"], -1.0):
            gaps[state["step"]] = gap
            worst_at[state["step"]] = state["last"]
        busy[state["step"]] = max(busy.get(state["step"], 0.0), used)
        state["last"], state["cpu"] = now, cpu

    worst_at: dict[str, float] = {}
    long_gaps: list[tuple[str, float, float, float, float]] = []
    samples: list[tuple[float, str]] = []  # (start of the gap, innermost frames)
    gc_pauses: list[tuple[str, int, float]] = []  # (step, generation, ms)
    repaints: dict[str, int] = {}  # window repaints per step
    tracing = threading.Event()
    if args.trace:
        main_id = threading.get_ident()

        def sample() -> None:
            # Each sample takes the interpreter lock from the viewer's main thread, and so adds
            # to the gap it measures: a few per gap, 10 ms apart, from 40 ms late on.
            taken: dict[float, int] = {}
            while not tracing.is_set():
                time.sleep(0.01)
                start = state["last"]
                if time.perf_counter() - start < 0.04 or taken.get(start, 0) >= SAMPLES_PER_GAP:
                    continue
                taken[start] = taken.get(start, 0) + 1
                frame = sys._current_frames().get(main_id)
                names = []
                while frame is not None and len(names) < 12:
                    code = frame.f_code
                    names.append(f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_name}")
                    frame = frame.f_back
                samples.append((start, " < ".join(names)))

        threading.Thread(target=sample, daemon=True).start()

        # The interpreter's collections of cyclic garbage: a full one over napari's objects
        # takes ~0.2 s, so the report lists those over 5 ms with the step they fell in.
        import gc

        def collected(phase: str, info: dict) -> None:
            if phase == "start":
                state["gc"] = time.perf_counter()
            elif time.perf_counter() - state.get("gc", 0.0) > 0.005:
                ms = (time.perf_counter() - state["gc"]) * 1000.0
                gc_pauses.append((state["step"], info["generation"], round(ms, 1)))

        gc.callbacks.append(collected)

        # Repaints of napari's window (each one is composed through OpenGL): counted per step.
        # The filter watches the window only; one on the application would run Python for
        # every event of every widget, on the thread whose gaps are measured.
        from qtpy.QtCore import QEvent, QObject

        class Repaints(QObject):
            def eventFilter(self, obj, event):  # noqa: N802 - Qt API
                if event.type() == QEvent.Type.UpdateRequest:
                    repaints[state["step"]] = repaints.get(state["step"], 0) + 1
                return False

        repaint_filter = Repaints()
        viewer.window._qt_window.installEventFilter(repaint_filter)

    timer = QTimer()
    timer.timeout.connect(tick)
    state["last"], state["cpu"] = time.perf_counter(), time.process_time()
    state["queued"] = queued_ms()
    timer.start(20)
    _, widget = viewer.window.add_plugin_dock_widget("napari-histosge", "HisToSGE")

    # The buttons and lists are looked up once the sections are built: searching the dock's
    # widgets on every check of a condition would add the script's own work to the gaps.
    found: dict[str, QPushButton] = {}
    lists: list[QListView] = []

    def button(text: str) -> QPushButton | None:
        if not found and widget.sections_ready:
            found.update({b.text(): b for b in widget.findChildren(QPushButton)})
            lists.extend(widget.findChildren(QListView))
        return found.get(text)

    def wait(condition, what: str) -> None:
        end = time.perf_counter() + args.step_timeout
        while not condition():
            pump(0.05)
            if time.perf_counter() > end:
                raise TimeoutError(f"{what} did not happen in {args.step_timeout:.0f} s")

    def idle() -> bool:
        return not button("Cancel").isEnabled() and widget.layer_view.pending == 0

    def press(text: str, done) -> None:
        wait(lambda: button(text) is not None and button(text).isEnabled(), f"'{text}' enabled")
        state["step"] = text
        button(text).click()
        pump(0.1)
        wait(lambda: done() and idle(), f"'{text}' finished")
        if widget.session.last_error:
            raise RuntimeError(f"'{text}' failed: {widget.session.last_error}")
        pump(0.3)

    def gene_rows() -> int:
        return max((v.model().rowCount() for v in lists), default=0)

    def napari_layer_turns(maps) -> float:
        # napari's own floor, measured in the same window right after the flow: a hidden image
        # layer like one of the dock's maps is inserted with napari's per-layer parts held back
        # (as the dock inserts its maps), then each part is built on a timed turn of its own
        # (its visuals, its layer controls), then it is shown (its first draw, which builds its
        # shaders): the longest of those turns, the worst of REFERENCE_DRAWS layers, in
        # wall-clock time and in the viewer's CPU time. The insertion itself and the removal
        # are not timed. Every map layer pays these turns.
        import numpy as np

        from napari_histosge._widgets._napari_private import deferrable_parts, parts_deferred

        def timed(turn) -> float:
            state["step"] = "reference"
            state["last"], state["cpu"] = time.perf_counter(), time.process_time()
            gaps.pop("reference", None)
            busy.pop("reference", None)
            turn()
            pump(0.5)
            used["last"] = busy.pop("reference", 0.0)
            return gaps.pop("reference", 0.0)

        turns: dict[str, float] = {}
        cpu: dict[str, float] = {}
        used: dict[str, float] = {}
        timer.start(20)
        for i in range(REFERENCE_DRAWS):
            like = maps[i % len(maps)]
            state["step"] = "reference (untimed)"
            parts = deferrable_parts(viewer)
            with parts_deferred(viewer.layers, parts):  # as the dock inserts its maps
                layer = viewer.add_image(
                    np.array(like.data, dtype=np.float32, copy=True),
                    name=f"reference {i}",
                    scale=like.scale,
                    translate=like.translate,
                    colormap=like.colormap,
                    contrast_limits=like.contrast_limits,
                    blending=like.blending,
                    opacity=like.opacity,
                    visible=False,
                )
            pump(0.5)
            for _, build in parts:
                took = timed(lambda build=build, layer=layer: build(layer))
                turns[build.__name__] = max(turns.get(build.__name__, 0.0), round(took, 1))
                cpu[build.__name__] = max(cpu.get(build.__name__, 0.0), round(used["last"], 1))
            took = timed(lambda layer=layer: setattr(layer, "visible", True))
            turns["first draw"] = max(turns.get("first draw", 0.0), round(took, 1))
            cpu["first draw"] = max(cpu.get("first draw", 0.0), round(used["last"], 1))
            state["step"] = "reference (untimed)"
            viewer.layers.remove(layer)
            pump(0.3)
        timer.stop()
        for key in ("reference", "reference (untimed)"):
            gaps.pop(key, None)
            busy.pop(key, None)
            repaints.pop(key, None)
        report["napari_layer_turns_ms"] = turns
        report["napari_layer_cpu_ms"] = max(cpu.values(), default=0.0)
        return max(turns.values(), default=0.0)

    report: dict = {"problems": []}
    try:
        pump(1.0)
        press("From layers" if args.store else "Use sample", lambda: button("Extract").isEnabled())
        widget.train_section.epochs_spin.value = args.epochs
        press("Extract", lambda: button("Train").isEnabled())
        press("Train", lambda: button("Predict").isEnabled())
        press("Predict", lambda: gene_rows() > 0)
        view = max(lists, key=lambda v: v.model().rowCount())
        view.selectionModel().clearSelection()
        for row in range(min(2, gene_rows())):
            index = view.model().index(row, 0)
            view.selectionModel().select(index, QItemSelectionModel.SelectionFlag.Select)
        before = len(viewer.layers)
        press("Render", lambda: len(viewer.layers) >= before + 2)
        pump(1.0)
    except (TimeoutError, RuntimeError) as err:
        report["problems"].append(str(err))
    timer.stop()
    tracing.set()
    if args.trace:
        trace = {}
        for step, start in worst_at.items():
            seen = collections.Counter(stack for at, stack in samples if at == start)
            trace[step] = [f"{n} x {stack}" for stack, n in seen.most_common(4)]
        report["trace"] = trace
        report["gc_pauses"] = gc_pauses
        report["repaints"] = repaints
        report["long_gaps"] = [
            [
                step,
                wall,
                cpu,
                queued,
                collections.Counter(k for at, k in samples if at == start).most_common(2),
            ]
            for step, wall, cpu, queued, start in long_gaps
        ]

    maps = [layer for layer in viewer.layers if layer.name.endswith("(HisToSGE)")]
    if maps and not report["problems"]:
        report["napari_layer_ms"] = napari_layer_turns(maps)
    (ty0, tx0), (ty1, tx1) = tissue.extent.world[0][-2:], tissue.extent.world[1][-2:]
    for layer in maps:
        (y0, x0), (y1, x1) = layer.extent.world[0][-2:], layer.extent.world[1][-2:]
        if not (y0 >= ty0 - 50 and x0 >= tx0 - 50 and y1 <= ty1 + 50 and x1 <= tx1 + 50):
            report["problems"].append(f"{layer.name} does not lie over the tissue")
    if not maps:
        report["problems"].append("no gene layer appeared")
    if args.screenshot:
        viewer.screenshot(path=args.screenshot, canvas_only=False, flash=False)
    report.update(
        gaps_ms={k: round(v, 1) for k, v in gaps.items()},
        worst_ms=round(max(gaps.values(), default=0.0), 1),
        busy_ms={k: round(v, 1) for k, v in busy.items()},
        worst_busy_ms=round(max(busy.values(), default=0.0), 1),
        maps=[layer.name for layer in maps],
        heavy_modules=[m for m in HEAVY if m in sys.modules],
        notifications=notices,
        worker_pid=widget.controller.runner.pid,
    )
    viewer.close()
    pump(0.5)
    print(json.dumps(report), flush=True)  # noqa: T201 - the report of a script
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
