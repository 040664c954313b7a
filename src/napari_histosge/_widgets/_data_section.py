"""1. Data: open a store, a Visium or ST folder, the sample, or the slide of an open layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, PushButton

from ._controller import Controller
from ._section_base import Section, button_row

if TYPE_CHECKING:
    import napari

__all__ = ["DataSection"]

#: Image element of the bundled sample (recognised on layers opened by File > Open Sample).
SAMPLE_IMAGE = "V1_Adult_Mouse_Brain_image"


class DataSection(Section):
    """Choose the slide and its image, spots and table."""

    def __init__(self, controller: Controller, viewer: napari.viewer.Viewer) -> None:
        super().__init__("1. Data", controller)
        self.viewer = viewer
        self.path_edit = FileEdit(label="Slide", mode="d")
        self.path_edit.tooltip = ".zarr store, Space Ranger Visium folder or ST section folder"
        self.open_button = PushButton(text="Open")
        self.sample_button = PushButton(text="Use sample")
        self.layers_button = PushButton(text="From layers")
        self.image_combo = ComboBox(label="Image", choices=[])
        self.spots_combo = ComboBox(label="Spots", choices=[])
        self.table_combo = ComboBox(label="Table", choices=[])
        self.scale_spin = FloatSpinBox(
            label="µm per pixel", min=0.0, max=100.0, step=0.01, value=0.0
        )
        self.scale_spin.native.setDecimals(4)
        self.scale_spin.native.setSpecialValueText("from the spots")
        self.scale_spin.tooltip = (
            "Scale of a slide with an H&E image only (no spots to measure it from)"
        )
        self.show_button = PushButton(text="Show")
        self.add_form(
            self.path_edit,
            button_row(self.open_button, self.sample_button, self.layers_button),
            self.image_combo,
            self.spots_combo,
            self.table_combo,
            self.scale_spin,
            self.show_button,
        )
        self.gate("open", self.open_button, "Read the slide at the path above")
        self.gate("open", self.sample_button, "The bundled Visium mouse brain crop (10x Genomics)")
        self.gate("open", self.layers_button, "Use the store of an open layer")
        self.gate("show", self.show_button, "Use the chosen image, spots and table")
        self.open_button.changed.connect(self.open_path)
        self.sample_button.changed.connect(self.open_sample)
        self.layers_button.changed.connect(self.open_from_layers)
        self.show_button.changed.connect(self.apply_elements)
        self.session.changed.connect(self._on_changed)
        self.refresh()

    @property
    def path(self) -> str:
        """The text of the path box."""
        return str(self.path_edit.line_edit.value).strip()

    def open_path(self, *_: Any) -> bool:
        """Read the slide at the path box."""
        if not self.path:
            self.session.fail("Enter a .zarr store, a Visium folder or an ST section folder.")
            return False
        return self.controller.open(self.path, um_per_px=self.um_per_px)

    def open_sample(self, *_: Any) -> bool:
        """Read the bundled sample."""
        return self.controller.open_sample()

    def open_from_layers(self, *_: Any) -> bool:
        """Use the store behind an open layer (this plugin's, napari-spatialdata's, the sample)."""
        for layer in list(self.viewer.layers.selection) + list(self.viewer.layers):
            meta = layer.metadata or {}
            sdata = meta.get("sdata")
            path = getattr(sdata, "path", None) or meta.get("store")
            if path:
                return self.controller.open(str(path), um_per_px=self.um_per_px)
            if meta.get("sample") or (
                sdata is not None and SAMPLE_IMAGE in getattr(sdata, "images", {})
            ):
                return self.controller.open_sample()
        self.session.fail("No open layer comes from a .zarr store; save the slide as one first.")
        return False

    @property
    def um_per_px(self) -> float | None:
        """The scale given for an image-only slide; ``None``: measured from the spots."""
        return float(self.scale_spin.value) or None

    def chosen_keys(self) -> dict[str, str | None]:
        """Return the chosen image, spots and table."""
        return {
            "image_key": self.image_combo.value or None,
            "spots_key": self.spots_combo.value or None,
            "table_key": self.table_combo.value or None,
        }

    def apply_elements(self, *_: Any) -> bool:
        """Use the chosen elements of the store read last."""
        return self.controller.show(self.chosen_keys(), self.um_per_px)

    def _on_changed(self, name: str) -> None:
        if name not in ("elements", "slide") or self.session.elements is None:
            return
        elements = self.session.elements
        for combo, kind in (
            (self.image_combo, "images"),
            (self.spots_combo, "shapes"),
            (self.table_combo, "tables"),
        ):
            choices = list(elements.get(kind, []))
            if list(combo.choices) != choices:  # each change re-lays out the dock
                combo.choices = choices
        slide = self.session.slide
        if slide is not None:
            for combo, key in (
                (self.image_combo, "image_key"),
                (self.spots_combo, "spots_key"),
                (self.table_combo, "table_key"),
            ):
                if slide.keys[key] in combo.choices and combo.value != slide.keys[key]:
                    combo.value = slide.keys[key]
