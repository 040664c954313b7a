"""The HisToSGE dock: data, features, training, prediction and export.

The dock only orchestrates: it reads its controls, runs core generators in napari thread
workers, shows their progress and adds layers on the main thread.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QSortFilterProxyModel, QStringListModel, Qt
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


class HisToSGEWidget(QWidget):
    """Dock widget running the HisToSGE workflow on one slide."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.slide: Any = None
        self.sdata: Any = None
        self.features: Any = None
        self.model: Any = None
        self.predictions: Any = None
        self.worker: Any = None
        self.running: str | None = None
        self.stop_event = threading.Event()
        self.gene_layers: dict[str, Any] = {}
        self.measured_layer: Any = None
        self.last_export: Path | None = None
        self.last_error: str | None = None

        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        body = QWidget()
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        layout = QVBoxLayout(body)
        layout.addWidget(self._build_data())
        layout.addWidget(self._build_features())
        layout.addWidget(self._build_train())
        layout.addWidget(self._build_predict())
        layout.addWidget(self._build_export())
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.status = QLabel("Open a slide to start.")
        self.status.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.progress_bar)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.destroyed.connect(self._stop_worker_now)
        self._refresh()

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
        self.sample_button.setToolTip("The bundled Visium mouse brain crop (10x Genomics, CC BY 4.0)")
        self.sample_button.clicked.connect(self.open_sample)
        self.layers_button = QPushButton("From layers")
        self.layers_button.setToolTip("Use a SpatialData object attached to an open layer")
        self.layers_button.clicked.connect(self.open_from_layers)
        row = QHBoxLayout()
        for b in (self.open_button, self.sample_button, self.layers_button):
            row.addWidget(b)
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
        self.encoder_combo.setToolTip("histology needs no weights; uni, uni2-h and timm:NAME take a file")
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
        self.positions_combo.setToolTip("4x: half-way between neighbouring spots; grid:µm: a dense grid")
        form.addRow("Positions", self.positions_combo)
        self.extract_button = QPushButton("Extract")
        self.extract_button.clicked.connect(self.extract)
        form.addRow(self.extract_button)
        return box

    def _build_train(self) -> QGroupBox:
        from ..train import TrainConfig

        d = TrainConfig()
        box = QGroupBox("3. Train")
        form = QFormLayout(box)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["improved", "faithful"])
        form.addRow("Model", self.mode_combo)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 100000)
        self.epochs_spin.setValue(d.epochs)
        form.addRow("Epochs", self.epochs_spin)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 1.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(d.learning_rate)
        form.addRow("Learning rate", self.lr_spin)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(d.seed)
        form.addRow("Seed", self.seed_spin)
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setDecimals(3)
        self.val_spin.setRange(0.0, 0.5)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(d.val_fraction)
        form.addRow("Validation fraction", self.val_spin)
        self.ngenes_spin = QSpinBox()
        self.ngenes_spin.setRange(1, 50000)
        self.ngenes_spin.setValue(1000)
        form.addRow("Variable genes", self.ngenes_spin)
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        form.addRow(self.train_button)
        self.loss_plot = LossPlot()
        form.addRow(self.loss_plot)
        self.save_button = QPushButton("Save model…")
        self.save_button.clicked.connect(self._save_checkpoint)
        self.load_button = QPushButton("Load model…")
        self.load_button.clicked.connect(self._load_checkpoint)
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
        form.addRow(self.gene_filter)
        form.addRow(self.gene_list)
        self.measured_check = QCheckBox("Show measured expression at spots")
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
        self.overwrite_check = QCheckBox("Replace earlier outputs / an existing store")
        form.addRow(self.overwrite_check)
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)
        form.addRow(self.export_button)
        return box

    # ------------------------------------------------------------------------------------
    # State

    def _refresh(self) -> None:
        """Enable what can run now; disabled buttons say why."""
        busy = self.running is not None
        have_sdata = self.sdata is not None
        have_slide = self.slide is not None
        have_feats = self.features is not None
        have_model = self.model is not None
        have_preds = self.predictions is not None

        def gate(button: QPushButton, ok: bool, why: str) -> None:
            allowed = ok and not busy
            button.setEnabled(allowed)
            button.setToolTip("" if allowed else (f"Running: {self.running}" if busy else why))

        gate(self.open_button, True, "")
        gate(self.sample_button, True, "")
        gate(self.layers_button, True, "")
        gate(self.apply_button, have_sdata, "Open a slide first.")
        gate(self.extract_button, have_slide, "Open a slide first.")
        gate(self.train_button, have_feats, "Extract features first.")
        gate(self.load_button, have_slide, "Open a slide first.")
        gate(self.save_button, have_model, "Train or load a model first.")
        gate(self.predict_button, have_feats and have_model, "Extract features and train a model first.")
        gate(self.render_button, have_preds, "Predict first.")
        gate(self.export_button, have_preds, "Predict first.")
        self.cancel_button.setEnabled(busy)

    def _start(self, name: str, worker: Any, on_returned: Any) -> None:
        self.running = name
        self.last_error = None
        self.worker = worker
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

    def _on_progress(self, item: Any) -> None:
        if getattr(item, "total", None):
            self.progress_bar.setValue(int(100 * item.step / item.total))
        if item.message:
            self.status.setText(item.message)
        info = getattr(item, "info", {}) or {}
        if "train_loss" in info:
            self.loss_plot.add(info)

    def _on_error(self, err: Exception) -> None:
        from napari.utils.notifications import show_error

        self.last_error = str(err)
        self.status.setText(f"Error: {err}")
        show_error(f"HisToSGE: {err}")

    def _on_aborted(self) -> None:
        self.status.setText(f"{self.running} cancelled; nothing was changed.")

    def _on_finished(self) -> None:
        self.running = None
        self.worker = None
        self._refresh()

    def cancel(self) -> None:
        """Stop the running step at its next checkpoint."""
        if self.worker is None:
            return
        self.stop_event.set()
        if self.running != "Training":
            self.worker.quit()
        self.status.setText("Cancelling…")

    def _stop_worker_now(self) -> None:
        worker = self.worker
        if worker is not None:
            self.stop_event.set()
            worker.quit()
            worker.await_workers(msecs=10000) if hasattr(worker, "await_workers") else None

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        """Stop a running worker before closing."""
        self._stop_worker_now()
        super().closeEvent(event)

    # ------------------------------------------------------------------------------------
    # 1. Data

    def _browse_slide(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Slide folder or .zarr store")
        if path:
            self.path_edit.setText(path)

    def open_path(self) -> None:
        """Read the slide at the path box in a worker."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_warning

        text = self.path_edit.text().strip()
        if not text:
            show_warning("Enter a .zarr store, a Visium folder or an ST section folder.")
            return
        from ..io import read_slide

        worker = create_worker(read_slide, Path(text), _start_thread=False, _ignore_errors=True)
        self._start("Reading", worker, self._set_sdata)

    def open_sample(self) -> None:
        """Load the bundled sample in a worker."""
        from napari.qt.threading import create_worker

        from ..io import load_sample

        self._start("Reading the sample", create_worker(load_sample, _start_thread=False, _ignore_errors=True), self._set_sdata)

    def open_from_layers(self) -> None:
        """Use the SpatialData attached to an open layer (this plugin's or napari-spatialdata's)."""
        from napari.utils.notifications import show_warning

        for layer in list(self.viewer.layers.selection) + list(self.viewer.layers):
            sdata = layer.metadata.get("sdata") if hasattr(layer, "metadata") else None
            if sdata is not None:
                self._set_sdata(sdata, add_layers=False)
                return
        show_warning("No open layer carries a SpatialData object.")

    def _set_sdata(self, sdata: Any, add_layers: bool = True) -> None:
        from ..io import resolve_keys

        self.sdata = sdata
        self.slide = self.features = self.model = self.predictions = None
        for combo, names in (
            (self.image_combo, list(sdata.images)),
            (self.spots_combo, [k for k in sdata.shapes if "radius" in sdata.shapes[k].columns]),
            (self.table_combo, list(sdata.tables)),
        ):
            combo.clear()
            combo.addItems([n for n in names if not n.startswith("histosge_")])
        try:
            keys = resolve_keys(sdata)
        except (ValueError, KeyError) as err:
            self._on_error(err)
            self._refresh()
            return
        self.image_combo.setCurrentText(keys.image_key)
        self.spots_combo.setCurrentText(keys.spots_key)
        self.table_combo.setCurrentText(keys.table_key)
        self.apply_elements(add_layers=add_layers)

    def apply_elements(self, add_layers: bool = True) -> None:
        """Build the slide from the chosen elements and show the H&E with its spots."""
        from .._layers import image_layer, spots_layer
        from ..pipeline import Slide

        if self.sdata is None:
            return
        try:
            self.slide = Slide.open(
                self.sdata,
                image_key=self.image_combo.currentText() or None,
                spots_key=self.spots_combo.currentText() or None,
                table_key=self.table_combo.currentText() or None,
            )
        except (ValueError, KeyError) as err:
            self.slide = None
            self._on_error(err)
            self._refresh()
            return
        self.features = self.model = self.predictions = None
        if add_layers:
            for data, kwargs, kind in (image_layer(self.slide), spots_layer(self.slide)):
                if kwargs["name"] in self.viewer.layers:
                    self.viewer.layers.remove(kwargs["name"])
                getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self.gene_model.setStringList([])
        geom = self.slide.geometry
        self.status.setText(
            f"{len(geom.spot_ids)} spots ({geom.lattice} lattice, {geom.diameter_px:.1f} px, "
            f"{geom.um_per_px:.3f} µm/px), {len(self.slide.genes)} genes."
        )
        self._refresh()

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
        from ..pipeline import ExtractOptions

        sizes = self.patch_edit.text().strip()
        patch_sizes = None
        if sizes:
            try:
                patch_sizes = tuple(float(s) for s in sizes.replace(";", ",").split(",") if s.strip())
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
        from napari.qt.threading import create_worker

        from ..pipeline import iter_extract

        if self.slide is None or self.running:
            return
        try:
            options = self.extract_options()
        except ValueError as err:
            self._on_error(err)
            return
        self.stop_event.clear()
        worker = create_worker(iter_extract, self.slide, options, _start_thread=False, _ignore_errors=True)
        self._start("Extracting features", worker, self._on_features)

    def _on_features(self, features: Any) -> None:
        self.features = features
        self.model = self.predictions = None
        src = "reused from the cache" if features.from_cache else "computed and cached"
        self.status.setText(
            f"Features {src}: {len(features.spots.features)} spots + {len(features.positions_px)} "
            f"positions, {features.spots.features.shape[1]} values each ({features.spots.meta['encoder_id']})."
        )
        self.progress_bar.setValue(100)

    # ------------------------------------------------------------------------------------
    # 3. Train

    def train_config(self) -> Any:
        """Training options from the controls."""
        from ..train import TrainConfig

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
        from napari.qt.threading import create_worker

        from ..pipeline import iter_train

        if self.features is None or self.running:
            return
        try:
            config = self.train_config()
        except ValueError as err:
            self._on_error(err)
            return
        self.stop_event.clear()
        self.loss_plot.clear()
        worker = create_worker(
            iter_train, self.slide, self.features, config=config, n_top_genes=self.ngenes_spin.value(),
            should_stop=self.stop_event.is_set, _start_thread=False, _ignore_errors=True,
        )
        self._start("Training", worker, self._on_model)

    def _on_model(self, model: Any) -> None:
        self.model = model
        self.loss_plot.finish()
        self.predictions = None
        note = " (stopped early by Cancel: best weights kept)" if model.info.get("cancelled") else ""
        self.status.setText(f"Trained on {model.info.get('n_train')} spots, {len(model.genes)} genes{note}.")
        self.progress_bar.setValue(100)

    def _save_checkpoint(self) -> None:
        from ..train import save_checkpoint

        path = QFileDialog.getSaveFileName(self, "Save model folder")[0]
        if path and self.model is not None:
            try:
                save_checkpoint(self.model, path)
            except (OSError, ValueError) as err:
                self._on_error(err)
                return
            self.status.setText(f"Model saved to {path}.")

    def _load_checkpoint(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder")
        if path:
            self.load_checkpoint(path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a saved model (checked against the features when predicting)."""
        from ..train import load_checkpoint

        try:
            self.model = load_checkpoint(path)
        except ValueError as err:
            self._on_error(err)
            return
        self.predictions = None
        self.status.setText(f"Loaded a model for {len(self.model.genes)} genes from {path}.")
        self._refresh()

    # ------------------------------------------------------------------------------------
    # 4. Predict and explore

    def predict(self) -> None:
        """Predict at the spots and the new positions in a worker."""
        from napari.qt.threading import create_worker

        from ..pipeline import predict

        if self.features is None or self.model is None or self.running:
            return
        worker = create_worker(predict, self.slide, self.features, self.model, _start_thread=False, _ignore_errors=True)
        self._start("Predicting", worker, self._on_predictions)

    def _on_predictions(self, predictions: Any) -> None:
        self.predictions = predictions
        # Most spatially variable genes first, so the list opens on informative maps.
        ranked = predictions.top_genes(len(predictions.genes))
        self.gene_model.setStringList(ranked)
        if predictions.genes:
            first = self.gene_proxy.index(0, 0)
            self.gene_list.setCurrentIndex(first)
        self.status.setText(
            f"Predicted {len(predictions.genes)} genes at {len(predictions.positions_px)} positions; "
            "choose genes and press Render."
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
        sel = self.gene_list.selectionModel()
        sel.clearSelection()
        names = self.gene_model.stringList()
        for g in genes:
            if g in names:
                idx = self.gene_proxy.mapFromSource(self.gene_model.index(names.index(g), 0))
                sel.select(idx, QItemSelectionModel.SelectionFlag.Select)

    def render(self) -> None:
        """Rasterise the selected genes (no model run) and show them over the tissue."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_warning

        from ..pipeline import render

        genes = self.selected_genes()
        if not genes:
            show_warning("Select one or more genes to render.")
            return
        if self.predictions is None or self.running:
            return
        worker = create_worker(render, self.slide, self.predictions, genes=genes, _start_thread=False, _ignore_errors=True)
        self._start("Rendering", worker, self._on_maps)

    def _on_maps(self, maps: Any) -> None:
        from .._layers import gene_layers, spot_values, spots_layer

        for name, layer in list(self.gene_layers.items()):
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            del self.gene_layers[name]
        if self.measured_layer is not None and self.measured_layer in self.viewer.layers:
            self.viewer.layers.remove(self.measured_layer)
        self.measured_layer = None
        for gene, (data, kwargs, _) in zip(
            maps.genes, gene_layers(maps, maps.genes, sdata=self.sdata), strict=True
        ):
            self.gene_layers[gene] = self.viewer.add_image(data, **kwargs)
        if self.measured_check.isChecked():
            gene = maps.genes[0]
            if gene in self.slide.genes:
                values = self.slide.measured([gene])[:, 0]
            else:
                values = spot_values(self.predictions, gene)
            data, kwargs, _ = spots_layer(self.slide, values=values, gene=gene)
            self.measured_layer = self.viewer.add_points(data, **kwargs)
        self.maps = maps
        self.status.setText(f"Showing {', '.join(maps.genes)} over the tissue.")
        self.progress_bar.setValue(100)

    # ------------------------------------------------------------------------------------
    # 5. Export

    def _browse_export(self) -> None:
        path = QFileDialog.getSaveFileName(self, "Output .zarr store")[0]
        if path:
            self.export_edit.setText(path)

    def export(self) -> None:
        """Write predictions, maps and cached features into a store, atomically, in a worker."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_warning

        from ..pipeline import export, render

        if self.predictions is None or self.running:
            return
        out = self.export_edit.text().strip()
        if not out:
            show_warning("Choose an output .zarr store.")
            return
        overwrite = self.overwrite_check.isChecked()

        def job() -> Path:
            maps = render(self.slide, self.predictions)
            return export(self.slide, self.predictions, maps, out, overwrite=overwrite)

        self._start("Exporting", create_worker(job, _start_thread=False, _ignore_errors=True), self._on_exported)

    def _on_exported(self, path: Path) -> None:
        from napari.utils.notifications import show_info

        self.last_export = Path(path)
        msg = f"Exported to {path}; it opens with spatialdata.read_zarr and napari-spatialdata."
        self.status.setText(msg)
        show_info(msg)
        self.progress_bar.setValue(100)
