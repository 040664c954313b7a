"""7. Export: predictions, maps and features into a zarr store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, FileEdit, PushButton
from qtpy.QtWidgets import QMessageBox

from ._controller import Controller
from ._section_base import Section

__all__ = ["ExportSection"]


class ExportSection(Section):
    """Choose an output store and press Export; nothing is replaced without asking."""

    def __init__(self, controller: Controller, pitch_um: Callable[[], float | None]) -> None:
        super().__init__("7. Export", controller)
        self.pitch_um = pitch_um
        self.path_edit = FileEdit(label="Store", mode="w", filter="*.zarr")
        self.path_edit.tooltip = "Output .zarr store"
        self.overwrite_check = CheckBox(text="Replace earlier outputs without asking")
        self.export_button = PushButton(text="Export")
        self.add_form(self.path_edit, self.overwrite_check, self.export_button)
        tip = "Write predictions, maps and features (and the cells, once segmented) to the store"
        self.gate("export", self.export_button, tip)
        self.export_button.changed.connect(self.export)
        self.refresh()

    @property
    def path(self) -> str:
        """The output store's path."""
        return str(self.path_edit.line_edit.value).strip()

    @path.setter
    def path(self, value: str) -> None:
        self.path_edit.line_edit.value = str(value)

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

    def export(self, *_: Any) -> bool:
        """Write predictions, maps, cached features and segmented cells to the store (worker)."""
        out = self.path
        if not out:
            self.session.fail("Choose an output .zarr store.")
            return False
        overwrite = bool(self.overwrite_check.value)
        if not overwrite and self.session.slide is not None:
            question = None
            if Path(out).exists():
                question = f"{out} already exists."
            elif Path(out).resolve() == Path(self.session.slide.source).resolve() and (
                self.session.slide.outputs
            ):
                question = f"The slide already holds {self.session.slide.outputs}."
            if question is not None:
                if not self.confirm_overwrite(question):
                    self.session.set_status("Export skipped; nothing was changed.")
                    return False
                overwrite = True
        return self.controller.export(out, overwrite=overwrite, pitch_um=self.pitch_um())
