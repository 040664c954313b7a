"""The HisToSGE dock: data, features, training, prediction and export.

The dock only orchestrates: it reads its controls, runs core functions and generators in
napari thread workers, shows their progress and adds layers on the main thread.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QSortFilterProxyModel, QStringListModel, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._loss_plot import LossPlot

if TYPE_CHECKING:
    import napari

__all__ = ["HisToSGEWidget"]

#: Milliseconds to wait after the gene selection changes before re-rendering shown maps.
RENDER_DELAY_MS = 150


class _RunGuard:
    """The running worker and its stop flag.

    Kept apart from the widget so that it can still stop the worker when the widget's Qt side
    is being destroyed (closing the dock or the viewer).
    """

    def __init__(self) -> None:
        self.worker: Any = None
        self.stop_event = threading.Event()

    def stop(self, wait_ms: int = 30000) -> None:
        """Ask the running worker to stop and wait for its thread to end."""
        worker = self.worker
        if worker is None:
            return
        self.stop_event.set()
        worker.quit()
        worker.await_workers(msecs=wait_ms)


def _open_slide(src: Any, keys: dict[str, str | None]) -> tuple[Any, Any, str | None]:
    """Read ``src`` (a path or a SpatialData object) and resolve a slide if the keys allow."""
    from spatialdata import SpatialData

    from napari_histosge.io import read_slide
    from napari_histosge.pipeline import Slide

    sdata = src if isinstance(src, SpatialData) else read_slide(Path(src), **keys)
    try:
        slide = Slide.open(sdata, **keys)
    except (ValueError, KeyError) as err:
        return sdata, None, str(err)
    return sdata, slide, None


def _load_sample_slide() -> tuple[Any, Any, str | None]:
    """Load the bundled sample as a slide."""
    from napari_histosge.io import load_sample

    return _open_slide(load_sample(), {})


def _predict_and_rank(slide: Any, features: Any, model: Any) -> tuple[Any, list[str]]:
    """Predict, and rank the genes by how much their predictions vary."""
    from napari_histosge.pipeline import predict_slide

    predictions = predict_slide(slide, features=features, model=model)
    return predictions, predictions.top_genes(len(predictions.genes))


def _render_genes(
    slide: Any, predictions: Any, genes: list[str], measured: bool
) -> tuple[Any, Any]:
    """Render ``genes``; also read the first one's measured expression if asked."""
    from napari_histosge.pipeline import render_maps

    maps = render_maps(slide, predictions=predictions, genes=genes)
    values = slide.measured([genes[0]])[:, 0] if measured else None
    return maps, values


def _measured_values(slide: Any, gene: str) -> tuple[str, Any]:
    """Read the measured expression of one gene at the spots."""
    return gene, slide.measured([gene])[:, 0]


def _render_and_export(slide: Any, predictions: Any, out: str, overwrite: bool) -> Path:
    """Render all predicted genes and write everything into ``out``."""
    from napari_histosge.pipeline import export_slide, render_maps

    maps = render_maps(slide, predictions=predictions)
    return export_slide(slide, predictions=predictions, maps=maps, out=out, overwrite=overwrite)


def warm_up() -> list[str]:
    """Import the heavy compiled libraries the steps use, so later steps start at once.

    Importing a compiled extension holds the interpreter lock; a GUI calls this in a background
    thread when it opens, so the cost is paid before the user's first run instead of during it.

    Examples
    --------
    >>> "torch" in warm_up()
    True
    """
    import importlib

    names = [
        "torch",
        "timm",
        "scipy.ndimage",
        "scipy.spatial",
        "sklearn.linear_model",
        "skimage.color",
        "scanpy",
        "spatialdata",
        "safetensors.torch",
        "napari_histosge.features",
        "napari_histosge.train",
        "napari_histosge.models.attention",
        "napari_histosge.evaluate",
        "napari_histosge.export",
    ]
    for name in names:
        importlib.import_module(name)
    import torch

    # First calls into torch's kernels also pay one-time set-up costs.
    torch.nn.functional.linear(torch.zeros(2, 4), torch.zeros(3, 4)).sum().item()
    return names


class HisToSGEWidget(QWidget):
    """Dock widget running the HisToSGE workflow on one slide.

    Parameters
    ----------
    napari_viewer
        The viewer the layers go to.
    parent
        Parent widget.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.slide: Any = None
        self.sdata: Any = None
        self.features: Any = None
        self.model: Any = None
        self.predictions: Any = None
        self.maps: Any = None
        self.running: str | None = None
        self.guard = _RunGuard()
        self.gene_layers: dict[str, Any] = {}
        self.measured_layer: Any = None
        self.last_export: Path | None = None
        self.last_error: str | None = None

        self.scroll_area = QScrollArea(self)
        self.scroll_area.setWidgetResizable(True)
        body = QWidget()
        self.scroll_area.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 0)
        outer.addWidget(self.scroll_area)
        layout = QVBoxLayout(body)
        self.data_box = self._build_data()
        self.features_box = self._build_features()
        self.train_box = self._build_train()
        self.predict_box = self._build_predict()
        self.export_box = self._build_export()
        for box in (
            self.data_box,
            self.features_box,
            self.train_box,
            self.predict_box,
            self.export_box,
        ):
            layout.addWidget(box)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.progress_bar)
        row.addWidget(self.cancel_button)
        self.status = QLabel("Open a slide to start.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # Progress and status stay in view above the scrolling sections.
        outer.insertLayout(0, row)
        outer.insertWidget(1, self.status)
        layout.addStretch(1)
        self.render_timer = QTimer(self)
        self.render_timer.setSingleShot(True)
        self.render_timer.setInterval(RENDER_DELAY_MS)
        self.render_timer.timeout.connect(self.render)
        # A plain callable (not a bound method of this widget) still runs while Qt destroys it.
        guard = self.guard
        self.destroyed.connect(lambda *_: guard.stop())
        self._refresh()
        from napari.qt.threading import create_worker

        self.warmed = False
        self._warm_worker = create_worker(warm_up, _start_thread=False, _ignore_errors=True)
        self._warm_worker.finished.connect(self._on_warm)
        self._warm_worker.start()

    @property
    def worker(self) -> Any:
        """The running worker, or ``None``."""
        return self.guard.worker

    @property
    def stop_event(self) -> threading.Event:
        """Set to ask the running step to stop."""
        return self.guard.stop_event

    # ------------------------------------------------------------------------------------
    # Building the sections

    def _build_data(self) -> QGroupBox:
        box = QGroupBox("1. Data")
        form = QFormLayout(box)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText(".zarr store, Visium folder or ST section folder")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_slide)
        row = QHBoxLayout()
        row.addWidget(self.path_edit)
        row.addWidget(browse)
        form.addRow("Slide", row)
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self.open_path)
        self.sample_button = QPushButton("Use sample")
        self.sample_button.clicked.connect(self.open_sample)
        self.layers_button = QPushButton("From layers")
        self.layers_button.clicked.connect(self.open_from_layers)
        row = QHBoxLayout()
        for button in (self.open_button, self.sample_button, self.layers_button):
            row.addWidget(button)
        form.addRow(row)
        self.image_combo = QComboBox()
        self.spots_combo = QComboBox()
        self.table_combo = QComboBox()
        form.addRow("Image", self.image_combo)
        form.addRow("Spots", self.spots_combo)
        form.addRow("Table", self.table_combo)
        self.apply_button = QPushButton("Show")
        self.apply_button.clicked.connect(self.apply_elements)
        form.addRow(self.apply_button)
        return box

    def _build_features(self) -> QGroupBox:
        box = QGroupBox("2. Features")
        form = QFormLayout(box)
        self.encoder_combo = QComboBox()
        self.encoder_combo.setEditable(True)
        self.encoder_combo.addItems(["histology", "uni", "uni2-h", "timm:vit_small_patch16_224"])
        self.encoder_combo.setToolTip(
            "histology: built in, no weights. uni, uni2-h, timm:NAME: give a weights file."
        )
        form.addRow("Encoder", self.encoder_combo)
        self.weights_edit = QLineEdit()
        self.weights_edit.setPlaceholderText("weights file (.safetensors/.pth/.bin) or 'random'")
        wbrowse = QPushButton("…")
        wbrowse.clicked.connect(self._browse_weights)
        row = QHBoxLayout()
        row.addWidget(self.weights_edit)
        row.addWidget(wbrowse)
        form.addRow("Weights", row)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        form.addRow("Device", self.device_combo)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 4096)
        self.batch_spin.setValue(32)
        form.addRow("Batch size", self.batch_spin)
        self.patch_edit = QLineEdit()
        self.patch_edit.setPlaceholderText("default (histology: 1, 2, 4; ViT: 2)")
        self.patch_edit.setToolTip("Patch sides in spot diameters, comma-separated")
        form.addRow("Patch sizes", self.patch_edit)
        self.positions_combo = QComboBox()
        self.positions_combo.setEditable(True)
        self.positions_combo.addItems(["4x", "grid:25", "grid:10"])
        self.positions_combo.setToolTip(
            "4x: half-way between neighbouring spots (HisToSGE); grid:µm: a dense tissue grid"
        )
        form.addRow("Positions", self.positions_combo)
        self.extract_button = QPushButton("Extract")
        self.extract_button.clicked.connect(self.extract)
        form.addRow(self.extract_button)
        return box

    def _build_train(self) -> QGroupBox:
        from napari_histosge.models import TrainConfig

        defaults = TrainConfig()
        box = QGroupBox("3. Train")
        form = QFormLayout(box)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["improved", "faithful"])
        self.mode_combo.setToolTip(
            "improved: neighbour attention in µm; faithful: the published HisToSGE settings"
        )
        form.addRow("Model", self.mode_combo)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 100000)
        self.epochs_spin.setValue(defaults.epochs)
        form.addRow("Epochs", self.epochs_spin)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 1.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(defaults.learning_rate)
        form.addRow("Learning rate", self.lr_spin)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(defaults.seed)
        form.addRow("Seed", self.seed_spin)
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setDecimals(3)
        self.val_spin.setRange(0.0, 0.5)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(defaults.val_fraction)
        form.addRow("Validation fraction", self.val_spin)
        self.ngenes_spin = QSpinBox()
        self.ngenes_spin.setRange(1, 50000)
        self.ngenes_spin.setValue(1000)
        self.ngenes_spin.setToolTip("Highly variable genes the model learns (seurat_v3)")
        form.addRow("Variable genes", self.ngenes_spin)
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        form.addRow(self.train_button)
        self.loss_plot = LossPlot()
        form.addRow(self.loss_plot)
        self.save_button = QPushButton("Save model…")
        self.save_button.clicked.connect(self._browse_save_checkpoint)
        self.load_button = QPushButton("Load model…")
        self.load_button.clicked.connect(self._browse_load_checkpoint)
        row = QHBoxLayout()
        row.addWidget(self.save_button)
        row.addWidget(self.load_button)
        form.addRow(row)
        return box

    def _build_predict(self) -> QGroupBox:
        box = QGroupBox("4. Predict and explore")
        form = QFormLayout(box)
        self.predict_button = QPushButton("Predict")
        self.predict_button.clicked.connect(self.predict)
        form.addRow(self.predict_button)
        self.gene_filter = QLineEdit()
        self.gene_filter.setPlaceholderText("search genes")
        self.gene_filter.setClearButtonEnabled(True)
        self.gene_model = QStringListModel()
        self.gene_proxy = QSortFilterProxyModel()
        self.gene_proxy.setSourceModel(self.gene_model)
        self.gene_proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.gene_filter.textChanged.connect(self.gene_proxy.setFilterFixedString)
        self.gene_list = QListView()
        self.gene_list.setModel(self.gene_proxy)
        self.gene_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.gene_list.setUniformItemSizes(True)
        self.gene_list.setMinimumHeight(120)
        self.gene_list.setToolTip("Most variable predictions first; Ctrl/Shift-click for several")
        self.gene_list.selectionModel().selectionChanged.connect(self._on_gene_selection)
        self.gene_list.doubleClicked.connect(lambda _index: self.render())
        form.addRow(self.gene_filter)
        form.addRow(self.gene_list)
        self.measured_check = QCheckBox("Show measured expression at spots")
        self.measured_check.setToolTip("The first chosen gene's measured values, as spot colours")
        self.measured_check.toggled.connect(self._on_measured_toggled)
        form.addRow(self.measured_check)
        self.render_button = QPushButton("Render")
        self.render_button.clicked.connect(self.render)
        form.addRow(self.render_button)
        return box

    def _build_export(self) -> QGroupBox:
        box = QGroupBox("5. Export")
        form = QFormLayout(box)
        self.export_edit = QLineEdit()
        self.export_edit.setPlaceholderText("output .zarr")
        ebrowse = QPushButton("…")
        ebrowse.clicked.connect(self._browse_export)
        row = QHBoxLayout()
        row.addWidget(self.export_edit)
        row.addWidget(ebrowse)
        form.addRow("Store", row)
        self.overwrite_check = QCheckBox("Replace earlier outputs without asking")
        form.addRow(self.overwrite_check)
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)
        form.addRow(self.export_button)
        return box

    # ------------------------------------------------------------------------------------
    # Running steps

    def _on_warm(self) -> None:
        self.warmed = True

    def _refresh(self) -> None:
        """Enable what can run now; a disabled button's tooltip says why."""
        busy = self.running is not None

        def gate(button: QPushButton, ok: bool, why: str, tip: str = "") -> None:
            allowed = ok and not busy
            button.setEnabled(allowed)
            if allowed:
                button.setToolTip(tip)
            else:
                button.setToolTip(f"Wait: {self.running} is running." if busy else why)

        have_slide = self.slide is not None
        gate(self.open_button, True, "", "Read the slide at the path above")
        gate(self.sample_button, True, "", "The bundled Visium mouse brain crop (10x Genomics)")
        gate(self.layers_button, True, "", "Use the SpatialData object of an open layer")
        gate(self.apply_button, self.sdata is not None, "Open a slide first.")
        gate(self.extract_button, have_slide, "Open a slide first.")
        gate(self.train_button, self.features is not None, "Extract features first.")
        gate(self.load_button, have_slide, "Open a slide first.")
        gate(self.save_button, self.model is not None, "Train or load a model first.")
        gate(
            self.predict_button,
            self.features is not None and self.model is not None,
            "Extract features and train (or load) a model first.",
        )
        gate(self.render_button, self.predictions is not None, "Predict first.")
        gate(self.export_button, self.predictions is not None, "Predict first.")
        self.cancel_button.setEnabled(busy)
        self.cancel_button.setToolTip("Stop the running step" if busy else "Nothing is running.")

    def _start(self, name: str, func: Any, *args: Any, on_returned: Any, **kwargs: Any) -> bool:
        """Run ``func(*args, **kwargs)`` in a worker unless a step is already running."""
        from napari.qt.threading import create_worker

        if self.running is not None:
            return False
        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True, **kwargs)
        self.running = name
        self.last_error = None
        self.guard.stop_event.clear()
        self.guard.worker = worker
        self.progress_bar.setValue(0)
        self.status.setText(f"{name}…")
        if hasattr(worker, "yielded"):  # generator workers report progress and can abort
            worker.yielded.connect(self._on_progress)
            worker.aborted.connect(self._on_aborted)
        worker.returned.connect(on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._refresh()
        worker.start()
        return True

    def _on_progress(self, item: Any) -> None:
        if getattr(item, "total", None):
            self.progress_bar.setValue(int(100 * item.step / item.total))
        message = getattr(item, "message", "")
        if message:
            self.status.setText(message)
        info = getattr(item, "info", None) or {}
        if "train_loss" in info:
            self.loss_plot.add(info)

    def _on_error(self, err: BaseException) -> None:
        from napari.utils.notifications import show_error

        self.last_error = str(err)
        self.status.setText(f"Error: {err}")
        show_error(f"HisToSGE: {err}")

    def _on_aborted(self) -> None:
        self.status.setText(f"{self.running} cancelled; nothing was changed.")

    def _on_finished(self) -> None:
        self.running = None
        self.guard.worker = None
        self._refresh()

    def cancel(self) -> None:
        """Stop the running step at its next checkpoint.

        Training stops after the current epoch and keeps the best weights so far; other
        steps stop at their next progress report and leave everything as it was.
        """
        if self.guard.worker is None:
            return
        self.guard.stop_event.set()
        if self.running != "Training":
            self.guard.worker.quit()
        self.status.setText("Cancelling…")

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        """Stop a running worker before closing."""
        self.guard.stop()
        super().closeEvent(event)

    # ------------------------------------------------------------------------------------
    # 1. Data

    def _browse_slide(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Slide folder or .zarr store")
        if path:
            self.path_edit.setText(path)

    def _chosen_keys(self) -> dict[str, str | None]:
        return {
            "image_key": self.image_combo.currentText() or None,
            "spots_key": self.spots_combo.currentText() or None,
            "table_key": self.table_combo.currentText() or None,
        }

    def open_path(self) -> None:
        """Read the slide at the path box (a store or a folder) in a worker."""
        from napari.utils.notifications import show_warning

        text = self.path_edit.text().strip()
        if not text:
            show_warning("Enter a .zarr store, a Visium folder or an ST section folder.")
            return
        self._start("Reading", _open_slide, Path(text), {}, on_returned=self._on_opened)

    def open_sample(self) -> None:
        """Load the bundled sample in a worker."""
        self._start("Reading the sample", _load_sample_slide, on_returned=self._on_opened)

    def open_from_layers(self) -> None:
        """Use the SpatialData attached to an open layer (this plugin's or napari-spatialdata's)."""
        from napari.utils.notifications import show_warning

        for layer in list(self.viewer.layers.selection) + list(self.viewer.layers):
            sdata = layer.metadata.get("sdata")
            if sdata is not None:
                self._start(
                    "Reading",
                    _open_slide,
                    sdata,
                    {},
                    on_returned=lambda result: self._on_opened(result, add_layers=False),
                )
                return
        show_warning("No open layer carries a SpatialData object.")

    def _on_opened(self, result: tuple[Any, Any, str | None], add_layers: bool = True) -> None:
        from napari.utils.notifications import show_warning

        sdata, slide, problem = result
        self.sdata = sdata
        self._forget_results()
        self.slide = None
        for combo, names in (
            (self.image_combo, list(sdata.images)),
            (self.spots_combo, list(sdata.shapes)),
            (self.table_combo, list(sdata.tables)),
        ):
            combo.clear()
            combo.addItems([n for n in names if not n.startswith("histosge_")])
        if slide is None:
            self.status.setText(f"Choose the image, spots and table, then press Show. ({problem})")
            show_warning(f"HisToSGE: {problem}")
            self._refresh()
            return
        self._on_slide(slide, add_layers=add_layers)

    def apply_elements(self) -> None:
        """Build the slide from the chosen elements (in a worker) and show the H&E and spots."""
        if self.sdata is None:
            return
        self._start(
            "Reading", _open_slide, self.sdata, self._chosen_keys(), on_returned=self._on_opened
        )

    def _on_slide(self, slide: Any, add_layers: bool = True) -> None:
        from napari_histosge._layers import image_layer, spots_layer

        self.slide = slide
        for combo, key in (
            (self.image_combo, slide.keys.image_key),
            (self.spots_combo, slide.keys.spots_key),
            (self.table_combo, slide.keys.table_key),
        ):
            combo.setCurrentText(key)
        if add_layers:
            for data, kwargs, kind in (image_layer(slide), spots_layer(slide)):
                if kwargs["name"] in self.viewer.layers:
                    self.viewer.layers.remove(kwargs["name"])
                getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        geom = slide.geometry
        self.status.setText(
            f"{len(geom.spot_ids)} spots ({geom.lattice} lattice, {geom.diameter_px:.1f} px, "
            f"{geom.um_per_px:.3f} µm/px), {len(slide.genes)} genes."
        )
        self.progress_bar.setValue(100)
        self._refresh()

    def _forget_results(self) -> None:
        self.features = self.model = self.predictions = self.maps = None
        self.gene_model.setStringList([])
        self.loss_plot.clear()

    # ------------------------------------------------------------------------------------
    # 2. Features

    def _browse_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Encoder weights", filter="Weights (*.safetensors *.pth *.bin *.pt)"
        )
        if path:
            self.weights_edit.setText(path)

    def extract_options(self) -> Any:
        """Feature options from the controls."""
        from napari_histosge.pipeline import ExtractOptions

        sizes = self.patch_edit.text().strip()
        patch_sizes = None
        if sizes:
            try:
                patch_sizes = tuple(
                    float(s) for s in sizes.replace(";", ",").split(",") if s.strip()
                )
            except ValueError as err:
                raise ValueError(f"Expected patch sizes like `1, 2, 4`, found `{sizes}`.") from err
        device = self.device_combo.currentText()
        return ExtractOptions(
            encoder=self.encoder_combo.currentText().strip(),
            weights=self.weights_edit.text().strip() or None,
            device=None if device == "auto" else device,
            batch_size=self.batch_spin.value(),
            patch_sizes=patch_sizes,
            positions=self.positions_combo.currentText().strip(),
        )

    def extract(self) -> None:
        """Embed spots and new positions in a worker (cached features are reused)."""
        from napari_histosge.pipeline import iter_extract

        if self.slide is None or self.running is not None:
            return
        try:
            options = self.extract_options()
        except ValueError as err:
            self._on_error(err)
            return
        self._start(
            "Extracting features",
            iter_extract,
            self.slide,
            options=options,
            on_returned=self._on_features,
        )

    def _on_features(self, features: Any) -> None:
        self.features = features
        self.model = self.predictions = None
        source = "reused from the cache" if features.from_cache else "computed and cached"
        spots = features.spots
        self.status.setText(
            f"Features {source}: {len(spots.features)} spots + {len(features.positions_px)} "
            f"new positions, {spots.features.shape[1]} values each ({spots.meta['encoder_id']})."
        )
        self.progress_bar.setValue(100)

    # ------------------------------------------------------------------------------------
    # 3. Train

    def train_config(self) -> Any:
        """Training options from the controls."""
        from napari_histosge.models import TrainConfig

        device = self.device_combo.currentText()
        return TrainConfig(
            mode=self.mode_combo.currentText(),  # type: ignore[arg-type]
            epochs=self.epochs_spin.value(),
            lr=self.lr_spin.value(),
            seed=self.seed_spin.value(),
            val_fraction=self.val_spin.value(),
            device=None if device == "auto" else device,
        )

    def train(self) -> None:
        """Train in a worker, with a live loss curve; Cancel keeps the best weights so far."""
        from napari_histosge.pipeline import iter_train

        if self.features is None or self.running is not None:
            return
        try:
            config = self.train_config()
        except ValueError as err:
            self._on_error(err)
            return
        self.loss_plot.clear()
        self._start(
            "Training",
            iter_train,
            self.slide,
            features=self.features,
            config=config,
            n_top_genes=self.ngenes_spin.value(),
            should_stop=self.guard.stop_event.is_set,
            on_returned=self._on_model,
        )

    def _on_model(self, model: Any) -> None:
        self.model = model
        self.predictions = None
        self.loss_plot.finish()
        note = " (stopped by Cancel: best weights kept)" if model.info.get("cancelled") else ""
        self.status.setText(
            f"Trained on {model.info.get('n_train')} spots, {len(model.genes)} genes{note}."
        )
        self.progress_bar.setValue(100)

    def _browse_save_checkpoint(self) -> None:
        path = QFileDialog.getSaveFileName(self, "Save model as a folder")[0]
        if path:
            self.save_checkpoint(path)

    def save_checkpoint(self, path: str | Path) -> None:
        """Save the model as a folder (safetensors weights, JSON and YAML) in a worker."""
        from napari_histosge.checkpoints import save_checkpoint

        if self.model is None:
            return
        self._start(
            "Saving the model",
            save_checkpoint,
            self.model,
            Path(path),
            on_returned=lambda out: self.status.setText(f"Model saved to {out}."),
        )

    def _browse_load_checkpoint(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder")
        if path:
            self.load_checkpoint(path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a saved model in a worker (checked against the features when predicting)."""
        from napari_histosge.checkpoints import load_checkpoint

        self._start("Loading the model", load_checkpoint, Path(path), on_returned=self._on_loaded)

    def _on_loaded(self, model: Any) -> None:
        self.model = model
        self.predictions = None
        self.status.setText(f"Loaded a model for {len(model.genes)} genes.")
        self.progress_bar.setValue(100)

    # ------------------------------------------------------------------------------------
    # 4. Predict and explore

    def predict(self) -> None:
        """Predict at the spots and the new positions in a worker."""
        if self.features is None or self.model is None or self.running is not None:
            return
        self._start(
            "Predicting",
            _predict_and_rank,
            self.slide,
            self.features,
            self.model,
            on_returned=self._on_predictions,
        )

    def _on_predictions(self, result: tuple[Any, list[str]]) -> None:
        predictions, ranked = result
        self.predictions = predictions
        self.gene_model.setStringList(ranked)
        if ranked:
            self.gene_list.setCurrentIndex(self.gene_proxy.index(0, 0))
        self.status.setText(
            f"Predicted {len(predictions.genes)} genes at {len(predictions.positions_px)} "
            "positions; choose genes and press Render."
        )
        self.progress_bar.setValue(100)

    def selected_genes(self) -> list[str]:
        """Genes selected in the list, in list order."""
        rows = sorted(self.gene_list.selectionModel().selectedIndexes(), key=lambda i: i.row())
        return [str(self.gene_proxy.data(i)) for i in rows]

    def select_genes(self, genes: list[str]) -> None:
        """Select ``genes`` in the list (clearing the filter)."""
        from qtpy.QtCore import QItemSelectionModel

        self.gene_filter.clear()
        selection = self.gene_list.selectionModel()
        selection.clearSelection()
        rows = {g: i for i, g in enumerate(self.gene_model.stringList())}
        indices = [
            self.gene_proxy.mapFromSource(self.gene_model.index(rows[gene], 0))
            for gene in genes
            if gene in rows
        ]
        for index in indices:
            selection.select(index, QItemSelectionModel.SelectionFlag.Select)
        if indices:
            self.gene_list.scrollTo(indices[0])

    def _on_gene_selection(self, *_args: Any) -> None:
        # Once maps are shown, choosing other genes re-renders them (no model run).
        if self.gene_layers and self.predictions is not None:
            self.render_timer.start()

    def render(self) -> None:
        """Rasterise the selected genes (no model run) and show them over the tissue."""
        from napari.utils.notifications import show_warning

        self.render_timer.stop()
        if self.predictions is None or self.running is not None:
            return
        genes = self.selected_genes()
        if not genes:
            show_warning("Select one or more genes to render.")
            return
        self._start(
            "Rendering",
            _render_genes,
            self.slide,
            self.predictions,
            genes,
            self.measured_check.isChecked(),
            on_returned=self._on_maps,
        )

    def _on_maps(self, result: tuple[Any, Any]) -> None:
        from napari_histosge._layers import gene_layers

        maps, measured = result
        for gene, layer in list(self.gene_layers.items()):
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            del self.gene_layers[gene]
        for gene, (data, kwargs, _) in zip(
            maps.genes, gene_layers(maps, maps.genes, sdata=self.sdata), strict=True
        ):
            self.gene_layers[gene] = self.viewer.add_image(data, **kwargs)
        self.maps = maps
        self._show_measured(maps.genes[0], measured)
        self.status.setText(f"Showing {', '.join(maps.genes)} over the tissue.")
        self.progress_bar.setValue(100)

    def _show_measured(self, gene: str, values: Any) -> None:
        from napari_histosge._layers import spots_layer

        if self.measured_layer is not None and self.measured_layer in self.viewer.layers:
            self.viewer.layers.remove(self.measured_layer)
        self.measured_layer = None
        if values is None:
            return
        data, kwargs, _ = spots_layer(self.slide, values=values, gene=gene)
        self.measured_layer = self.viewer.add_points(data, **kwargs)

    def _on_measured_toggled(self, checked: bool) -> None:
        if not checked:
            self._show_measured("", None)
        elif self.maps is not None and self.slide is not None:
            self._start(
                "Reading measured expression",
                _measured_values,
                self.slide,
                self.maps.genes[0],
                on_returned=self._on_measured,
            )

    def _on_measured(self, result: tuple[str, Any]) -> None:
        gene, values = result
        self._show_measured(gene, values)
        self.status.setText(f"Showing {gene}: predicted map and measured spots.")
        self.progress_bar.setValue(100)

    # ------------------------------------------------------------------------------------
    # 5. Export

    def _browse_export(self) -> None:
        path = QFileDialog.getSaveFileName(self, "Output .zarr store")[0]
        if path:
            self.export_edit.setText(path)

    def confirm_overwrite(self, what: str) -> bool:
        """Ask whether ``what`` may be replaced."""
        answer = QMessageBox.question(
            self,
            "Replace?",
            f"{what}\nReplace it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def export(self) -> None:
        """Write predictions, maps and cached features into a store, atomically, in a worker."""
        from napari.utils.notifications import show_warning

        from napari_histosge.store import OUTPUT_KEYS

        if self.predictions is None or self.running is not None:
            return
        out = self.export_edit.text().strip()
        if not out:
            show_warning("Choose an output .zarr store.")
            return
        overwrite = self.overwrite_check.isChecked()
        if not overwrite:
            earlier = [k for k in OUTPUT_KEYS if k in self.sdata]
            question = None
            if Path(out).exists():
                question = f"{out} already exists."
            elif earlier:
                question = f"The slide already holds {earlier}."
            if question is not None:
                if not self.confirm_overwrite(question):
                    self.status.setText("Export skipped; nothing was changed.")
                    return
                overwrite = True
        self._start(
            "Exporting",
            _render_and_export,
            self.slide,
            self.predictions,
            out,
            overwrite,
            on_returned=self._on_exported,
        )

    def _on_exported(self, path: Path) -> None:
        from napari.utils.notifications import show_info

        self.last_export = Path(path)
        message = f"Exported to {path}; it opens with spatialdata.read_zarr and napari-spatialdata."
        self.status.setText(message)
        show_info(message)
        self.progress_bar.setValue(100)
