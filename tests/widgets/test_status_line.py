"""The dock's status line and progress bar."""

from __future__ import annotations

from napari_histosge._widgets._status_line import StatusLine


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
