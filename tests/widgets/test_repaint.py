"""The window's repaint held back while layers change, and the dock's status line."""

from __future__ import annotations

from qtpy.QtWidgets import QMainWindow, QVBoxLayout, QWidget

from napari_histosge._widgets._repaint import RepaintHold
from napari_histosge._widgets._status_line import StatusLine


def _window(qtbot):
    window = QMainWindow()
    body = QWidget()
    layout = QVBoxLayout(body)
    host, part = QWidget(), QWidget()
    layout.addWidget(host)
    layout.addWidget(part)
    window.setCentralWidget(body)
    qtbot.addWidget(window)
    return window, host, part


def test_parts_repaint_a_turn_after_the_window(qtbot):
    window, host, part = _window(qtbot)
    hold = RepaintHold(lambda: host, lambda: [part])
    hold.hold("layers")
    assert hold.active
    assert not window.updatesEnabled()
    assert not part.updatesEnabled()
    hold.hold("other")
    hold.release("layers", 0)
    qtbot.wait(50)
    assert not window.updatesEnabled()  # still held by "other"
    hold.release("other", 0)
    qtbot.waitUntil(lambda: window.updatesEnabled(), timeout=1_000)
    assert not part.updatesEnabled()
    assert hold.active
    qtbot.waitUntil(lambda: part.updatesEnabled(), timeout=1_000)
    assert not hold.active


def test_release_all_frees_the_window_and_its_parts(qtbot):
    window, host, part = _window(qtbot)
    hold = RepaintHold(lambda: host, lambda: [part])
    hold.hold("layers")
    hold.release("layers", 0)
    qtbot.waitUntil(lambda: window.updatesEnabled(), timeout=1_000)
    hold.hold("layers")  # held again before the part was released
    hold.release_all()
    assert window.updatesEnabled()
    assert part.updatesEnabled()
    assert not hold.active


def test_status_line_shows_wrapped_text_without_resizing(qtbot):
    line = StatusLine("Ready.", lines=3)
    qtbot.addWidget(line)
    height = line.height()
    assert line.text() == "Ready."
    assert line.toolTip() == "Ready."
    line.setText("A long message " * 40)
    assert line.height() == height
    assert line.text().startswith("A long message")
    assert line.toolTip() == line.text()


def test_dock_shows_status_and_progress_at_most_every_show_ms(dock, qtbot, monkeypatch):
    from napari_histosge._widgets import _dock

    _, widget = dock
    shown = []
    set_text = widget.status.setText
    monkeypatch.setattr(widget.status, "setText", lambda text: (shown.append(text), set_text(text)))
    for i in range(40):
        widget.session.set_status(f"step {i}")
        widget.session.set_progress(i / 40)
        qtbot.wait(5)
    qtbot.waitUntil(lambda: widget.status.text() == "step 39", timeout=2_000)
    assert widget.progress_bar.value() == int(100 * 39 / 40)
    # ~200 ms of changes: shown at the first change and then at most once per SHOW_MS.
    assert 1 <= len(shown) <= 2 + 40 * 5 // _dock.SHOW_MS + 1
