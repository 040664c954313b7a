"""2. Features: the encoder, its weights and the positions to embed."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, FileEdit, LineEdit, PushButton, SpinBox

from ._controller import Controller
from ._section_base import Section

__all__ = ["FeaturesSection", "parse_patch_sizes"]

ENCODERS = ["histology", "uni", "uni2-h", "timm:vit_small_patch16_224"]
POSITIONS = ["4x", "grid:25", "grid:10"]


def parse_patch_sizes(text: str) -> list[float] | None:
    """Patch sides in spot diameters from ``"1, 2, 4"``; ``None`` when empty.

    Examples
    --------
    >>> parse_patch_sizes("1; 2,4")
    [1.0, 2.0, 4.0]
    """
    text = text.strip()
    if not text:
        return None
    try:
        return [float(s) for s in text.replace(";", ",").split(",") if s.strip()]
    except ValueError as err:
        raise ValueError(f"Expected patch sizes like `1, 2, 4`, found `{text}`.") from err


def _editable(combo: ComboBox) -> ComboBox:
    combo.native.setEditable(True)
    return combo


class FeaturesSection(Section):
    """Choose an encoder and press Extract."""

    def __init__(self, controller: Controller) -> None:
        super().__init__("2. Features", controller)
        self.encoder_combo = _editable(ComboBox(label="Encoder", choices=ENCODERS))
        self.encoder_combo.tooltip = (
            "histology: built in, no weights. uni, uni2-h, timm:NAME: give a weights file."
        )
        self.weights_edit = FileEdit(
            label="Weights", mode="r", filter="Weights (*.safetensors *.pth *.bin *.pt)"
        )
        self.weights_edit.tooltip = "Weights file (.safetensors/.pth/.bin) or 'random'"
        self.device_combo = ComboBox(label="Device", choices=["auto", "cpu", "cuda", "mps"])
        self.batch_spin = SpinBox(label="Batch size", min=1, max=4096, value=32)
        self.patch_edit = LineEdit(label="Patch sizes")
        self.patch_edit.tooltip = (
            "Patch sides in spot diameters, comma-separated; empty: the encoder's default "
            "(histology: 1, 2, 4; ViT: 2)"
        )
        self.positions_combo = _editable(ComboBox(label="Positions", choices=POSITIONS))
        self.positions_combo.tooltip = (
            "4x: half-way between neighbouring spots (HisToSGE); grid:µm: a dense tissue grid"
        )
        self.extract_button = PushButton(text="Extract")
        self.add_form(
            self.encoder_combo,
            self.weights_edit,
            self.device_combo,
            self.batch_spin,
            self.patch_edit,
            self.positions_combo,
            self.extract_button,
        )
        self.gate("extract", self.extract_button, "Embed the spots and the new positions")
        self.extract_button.changed.connect(self.extract)
        self.refresh()

    @property
    def encoder(self) -> str:
        """The encoder's name (any text typed into the box)."""
        return self.encoder_combo.native.currentText().strip()

    @encoder.setter
    def encoder(self, value: str) -> None:
        self.encoder_combo.native.setCurrentText(value)

    @property
    def positions(self) -> str:
        """The positions to embed besides the spots."""
        return self.positions_combo.native.currentText().strip()

    @positions.setter
    def positions(self, value: str) -> None:
        self.positions_combo.native.setCurrentText(value)

    @property
    def weights(self) -> str | None:
        """The weights file, ``"random"``, or ``None``."""
        return str(self.weights_edit.line_edit.value).strip() or None

    @weights.setter
    def weights(self, value: str | None) -> None:
        self.weights_edit.line_edit.value = value or ""

    def options(self) -> dict[str, Any]:
        """Return the extraction options (fields of the core's ``ExtractOptions``)."""
        device = self.device_combo.value
        return {
            "encoder": self.encoder,
            "weights": self.weights,
            "device": None if device == "auto" else device,
            "batch_size": int(self.batch_spin.value),
            "patch_sizes": parse_patch_sizes(str(self.patch_edit.value)),
            "positions": self.positions,
        }

    def extract(self, *_: Any) -> bool:
        """Embed spots and new positions in the worker (cached features are reused)."""
        try:
            options = self.options()
        except ValueError as err:
            self.session.fail(str(err))
            return False
        return self.controller.extract(options)
