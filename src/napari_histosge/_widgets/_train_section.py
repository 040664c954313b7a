"""3. Train: the model and its options, a live loss curve, checkpoints."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, FloatSpinBox, PushButton, SpinBox
from qtpy.QtWidgets import QFileDialog

from ._controller import Controller
from ._loss_plot import LossPlot
from ._section_base import Section, button_row
from ._tasks_steps import train_form_defaults

__all__ = ["SUPERRES", "TrainSection"]

#: The super-resolution mode: a superpixel model fitted to this slide's units (no epochs).
SUPERRES = "superres"
TRAIN_TIP = "Train with a live loss curve; Cancel keeps the old model"


class TrainSection(Section):
    """Choose the model and press Train; save or load checkpoints."""

    def __init__(self, controller: Controller) -> None:
        super().__init__("3. Train", controller)
        defaults, modes = train_form_defaults()
        self.mode_combo = ComboBox(
            label="Model", choices=[SUPERRES, *modes], value=defaults["mode"]
        )
        self.mode_combo.tooltip = (
            "superres: superpixel maps at the map resolution whose mean over each spot matches "
            "it (needs no Extract); improved: neighbour attention in µm; faithful: the "
            "published HisToSGE settings"
        )
        self.epochs_spin = SpinBox(label="Epochs", min=1, max=100000, value=defaults["epochs"])
        self.lr_spin = FloatSpinBox(
            label="Learning rate", min=1e-6, max=1.0, step=1e-4, value=defaults["lr"] or 1e-3
        )
        self.lr_spin.native.setDecimals(6)
        self.seed_spin = SpinBox(label="Seed", min=0, max=2**31 - 1, value=defaults["seed"])
        self.val_spin = FloatSpinBox(
            label="Validation fraction", min=0.0, max=0.5, step=0.05, value=defaults["val_fraction"]
        )
        self.ngenes_spin = SpinBox(label="Variable genes", min=1, max=50000, value=1000)
        self.ngenes_spin.tooltip = "Highly variable genes the model learns (seurat_v3)"
        self.train_button = PushButton(text="Train")
        self.add_form(
            self.mode_combo,
            self.epochs_spin,
            self.lr_spin,
            self.seed_spin,
            self.val_spin,
            self.ngenes_spin,
            self.train_button,
        )
        self.loss_plot = LossPlot()
        self.add_widget(self.loss_plot)
        self.save_button = PushButton(text="Save model…")
        self.load_button = PushButton(text="Load model…")
        self.add_form(button_row(self.save_button, self.load_button))
        self.gate("train", self.train_button, TRAIN_TIP)
        self.gate("save_model", self.save_button, "Save the model as a folder")
        self.gate("load_model", self.load_button, "Load a saved model folder")
        self.train_button.changed.connect(self.train)
        self.save_button.changed.connect(self._browse_save)
        self.load_button.changed.connect(self._browse_load)
        self.device: Any = lambda: None
        self.options: Any = lambda: {}
        self.resolution_um: Any = lambda: None
        self.mode_combo.changed.connect(self.refresh)
        self.session.changed.connect(self._on_changed)
        self.session.loss_added.connect(self.loss_plot.add)
        self.session.loss_cleared.connect(self.loss_plot.clear)
        self.refresh()

    @property
    def superres(self) -> bool:
        """The super-resolution mode is chosen."""
        return self.mode_combo.value == SUPERRES

    def _on_changed(self, name: str) -> None:
        # A slide with a table gets the super-resolution model by default.
        if name == "slide" and self.session.slide is not None and self.session.slide.has_table:
            self.mode_combo.value = SUPERRES

    def refresh(self, *_: Any) -> None:
        """Enable what can run now; the epochs, rate and validation apply to trained modes."""
        button = self.buttons[0][1]
        if self.superres:
            self.buttons[0] = ("fit", button, "Fit the super-resolution model to this slide")
        else:
            self.buttons[0] = (
                "train",
                button,
                "Train with a live loss curve; Cancel keeps the old model",
            )
        super().refresh()
        for spin in (self.epochs_spin, self.lr_spin, self.val_spin):
            self.show_state(spin, not self.superres)

    def config(self, device: str | None = None) -> dict[str, Any]:
        """Training options (fields of the core's ``TrainConfig``)."""
        return {
            "mode": self.mode_combo.value,
            "epochs": int(self.epochs_spin.value),
            "lr": float(self.lr_spin.value),
            "seed": int(self.seed_spin.value),
            "val_fraction": float(self.val_spin.value),
            "device": device,
        }

    def train(self, *_: Any, device: str | None = None) -> bool:
        """Train in the worker (on the Features section's device unless given)."""
        config = self.config(device if device is not None else self.device())
        return self.controller.train(
            config,
            int(self.ngenes_spin.value),
            options=self.options() if self.superres else None,
            resolution_um=self.resolution_um() if self.superres else None,
        )

    def _browse_save(self, *_: Any) -> None:
        path = QFileDialog.getSaveFileName(self, "Save model as a folder")[0]
        if path:
            self.controller.save_model(path)

    def _browse_load(self, *_: Any) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder")
        if path:
            self.controller.load_model(path)
