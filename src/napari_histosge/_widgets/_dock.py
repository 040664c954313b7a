"""The HisToSGE dock: seven sections over one session, its worker process and its layers.

The dock only composes: the session (:mod:`._session`) holds the state, the controller
(:mod:`._controller`) runs each step in the worker process (:mod:`._worker_process`,
:mod:`._tasks_steps`), the layer view (:mod:`._layer_view`) shows results, and each section is a
small form.
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QScrollArea, QVBoxLayout, QWidget

from ._controller import Controller
from ._layer_view import LayerView, prefetch_readers
from ._session import Session
from ._status_line import StatusLine
from ._worker_process import Runner

if TYPE_CHECKING:
    import napari

__all__ = ["HisToSGEWidget"]

#: Milliseconds between two reads of the worker's messages.
POLL_MS = 25
#: The status line and the progress bar change at most this often (milliseconds).
SHOW_MS = 250
#: The dock's width in average character widths.
DOCK_WIDTH_CHARS = 60
#: Milliseconds between the builds of two sections.
BUILD_MS = 30


class HisToSGEWidget(QWidget):
    """Dock widget running the HisToSGE workflow on one slide.

    Parameters
    ----------
    napari_viewer
        The viewer the layers go to.
    runner
        The worker process to use; a new one (started at once) when ``None``.
    parent
        Parent widget.
    """

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        runner: Runner | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        # napari holds hundreds of thousands of long-lived objects: a full garbage collection
        # walks them all, and without this one call such collections fell into the dock's
        # turns (adding the sample's layers, a gene map) at 140-190 ms of CPU, 800 ms of
        # wall-clock time under load (measured 2026-12-06). Frozen, they are still freed by
        # reference counting, and later collections only walk what is newer.
        gc.freeze()
        self.viewer = napari_viewer
        self.session = Session()
        self.controller = Controller(self.session, runner or Runner())
        self.layer_view = LayerView(napari_viewer, self.session)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self._shown = {"progress": 0, "status": self.session.status}
        self._to_show = dict(self._shown)
        self._last_shown = 0.0
        self._show_timer = QTimer(self)
        self._show_timer.setSingleShot(True)
        self._show_timer.timeout.connect(self._show_status)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        # The status line keeps its size whatever the text, and the dock's width is set once,
        # wide enough for the widest section (Features: 56 average character widths, plus the
        # scroll bar): a new status never resizes the dock, and no section scrolls sideways.
        self.status = StatusLine(self.session.status)
        self.setMinimumWidth(DOCK_WIDTH_CHARS * self.fontMetrics().averageCharWidth())
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 0)
        row = QHBoxLayout()
        row.addWidget(self.progress_bar)
        row.addWidget(self.cancel_button)
        outer.addLayout(row)
        outer.addWidget(self.status)

        # The sections are built one per turn of the event loop, and the worker process is
        # started after them: built at once, with the worker's start, opening the dock took
        # one turn of 304-446 ms of the viewer's CPU (imports, widgets, napari's style sheet
        # applied to each; measured 2026-12-06, 2-core machine under load).
        body = QWidget()
        self._body_layout = QVBoxLayout(body)
        self._body_layout.addStretch(1)
        self.scroll_area = QScrollArea(self)
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setWidget(body)
        outer.addWidget(self.scroll_area)
        self._builders = [
            self._build_data,
            self._build_features,
            self._build_train,
            self._build_predict,
            self._build_domains,
            self._build_cells,
            self._build_export,
            self._start_worker,
        ]
        self._build_timer = QTimer(self)
        self._build_timer.setInterval(BUILD_MS)
        self._build_timer.timeout.connect(self._build_next)
        self._build_timer.start()

        self.session.status_changed.connect(self._on_status)
        self.session.progress_changed.connect(self._on_progress)
        self.session.busy_changed.connect(self._on_busy)
        self.session.error.connect(self._on_error)
        self._on_busy(None)
        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(POLL_MS)
        self.poll_timer.timeout.connect(self.controller.poll)
        self.poll_timer.start()
        # A plain callable (not a bound method of this widget) still runs while Qt destroys it.
        controller, layer_view = self.controller, self.layer_view
        self.destroyed.connect(lambda *_: (controller.close(), layer_view.close()))

    def _build_next(self) -> None:
        self._builders.pop(0)()
        if not self._builders:
            self._build_timer.stop()

    def build_all(self) -> None:
        """Build the sections not built yet (and start the worker), at once."""
        self._build_timer.stop()
        while self._builders:
            self._builders.pop(0)()

    @property
    def sections_ready(self) -> bool:
        """All seven sections are built and the worker process is started."""
        return not self._builders

    def _start_worker(self) -> None:
        # The worker imports the core while the user reads the dock; dask and zarr, which the
        # first layers read with, are imported in a thread meanwhile (it holds the interpreter
        # lock for a while: tests that time the dock wait for it).
        self.controller.runner.start()
        self.prefetch_thread = prefetch_readers()

    def _add(self, section: QWidget) -> None:
        self._body_layout.insertWidget(self._body_layout.count() - 1, section)

    def _build_data(self) -> None:
        from ._data_section import DataSection

        self.data_section = DataSection(self.controller, self.viewer)
        self._add(self.data_section)

    def _build_features(self) -> None:
        from ._features_section import FeaturesSection

        self.features_section = FeaturesSection(self.controller)
        self._add(self.features_section)

    def _build_train(self) -> None:
        from ._train_section import TrainSection

        self.train_section = TrainSection(self.controller)
        self.train_section.device = self._device
        self.train_section.options = self._extract_options
        self.train_section.resolution_um = lambda: self.predict_section.pitch_um
        self._add(self.train_section)

    def _build_predict(self) -> None:
        from ._predict_section import PredictSection

        self.predict_section = PredictSection(self.controller, self.viewer)
        self.predict_section.options = self._extract_options
        self._add(self.predict_section)

    def _build_domains(self) -> None:
        from ._domains_section import DomainsSection

        self.domains_section = DomainsSection(self.controller)
        self.domains_section.seed = lambda: self.train_section.seed_spin.value
        self.domains_section.pitch_um = lambda: self.predict_section.pitch_um
        self._add(self.domains_section)

    def _build_cells(self) -> None:
        from ._cells_section import CellsSection

        self.cells_section = CellsSection(self.controller, lambda: self.predict_section.pitch_um)
        self._add(self.cells_section)

    def _build_export(self) -> None:
        from ._export_section import ExportSection

        self.export_section = ExportSection(self.controller, lambda: self.predict_section.pitch_um)
        self._add(self.export_section)

    @property
    def sections(self) -> tuple[QWidget, ...]:
        """The seven sections, top to bottom."""
        self.build_all()
        return (
            self.data_section,
            self.features_section,
            self.train_section,
            self.predict_section,
            self.domains_section,
            self.cells_section,
            self.export_section,
        )

    @property
    def running(self) -> str | None:
        """The running step, or ``None``."""
        return self.session.running

    @property
    def busy(self) -> bool:
        """A step runs, or layers are still being added."""
        return self.session.running is not None or self.layer_view.pending > 0

    def _device(self) -> str | None:
        self.build_all()
        device = self.features_section.device_combo.value
        return None if device == "auto" else device

    def _extract_options(self) -> dict[str, Any]:
        self.build_all()
        return self.features_section.options()

    def _on_progress(self, fraction: float | None) -> None:
        self._to_show["progress"] = 0 if fraction is None else int(100 * fraction)
        self._schedule_show()

    def _on_status(self, text: str) -> None:
        self._to_show["status"] = text
        self._schedule_show()

    def _schedule_show(self) -> None:
        # The status line and the progress bar are set together, at most once per SHOW_MS.
        if self._show_timer.isActive() or self._to_show == self._shown:
            return
        since = 1000.0 * (time.monotonic() - self._last_shown)
        self._show_timer.start(int(max(POLL_MS, SHOW_MS - since)))

    def _show_status(self) -> None:
        self._last_shown = time.monotonic()
        if self._to_show["status"] != self._shown["status"]:
            self.status.setText(self._to_show["status"])
        if self._to_show["progress"] != self._shown["progress"]:
            self.progress_bar.setValue(self._to_show["progress"])
        self._shown = dict(self._to_show)

    def _on_busy(self, name: str | None) -> None:
        self.cancel_button.setEnabled(name is not None)
        self.cancel_button.setToolTip("Stop the running step" if name else "Nothing is running.")

    def _on_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        show_error(f"HisToSGE: {message}")

    # The steps, as the buttons run them ----------------------------------------------------

    def open_sample(self) -> bool:
        """Read the bundled sample."""
        self.build_all()
        return self.data_section.open_sample()

    def extract(self) -> bool:
        """Extract features with the section's options."""
        self.build_all()
        return self.features_section.extract()

    def train(self) -> bool:
        """Train with the section's options."""
        self.build_all()
        return self.train_section.train(device=self._device())

    def predict(self) -> bool:
        """Predict at the spots and the new positions."""
        self.build_all()
        return self.predict_section.predict()

    def render(self) -> bool:
        """Render the selected genes."""
        self.build_all()
        return self.predict_section.render()

    def export(self) -> bool:
        """Export to the section's store."""
        self.build_all()
        return self.export_section.export()

    def cancel(self) -> None:
        """Stop the running step; what the dock had before is kept."""
        self.controller.cancel()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        """Stop the worker before closing."""
        self.poll_timer.stop()
        self._build_timer.stop()
        self.layer_view.close()
        self.controller.close()
        super().closeEvent(event)
