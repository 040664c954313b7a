"""The base of the dock's sections: a titled box with a magicgui form and gated buttons."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, PushButton, Widget
from qtpy.QtWidgets import QGroupBox, QVBoxLayout, QWidget

from ._controller import Controller

__all__ = ["Section", "button_row"]


def button_row(*buttons: Widget) -> Container:
    """Buttons side by side, without labels."""
    return Container(widgets=list(buttons), layout="horizontal", labels=False)


class Section(QGroupBox):
    """A titled section whose buttons are enabled only when their action can run.

    Parameters
    ----------
    title
        The box's title.
    controller
        Runs the section's actions; its session decides which buttons are enabled.
    """

    def __init__(self, title: str, controller: Controller, parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.controller = controller
        self.session = controller.session
        self.buttons: list[tuple[str, PushButton, str]] = []
        self._shown: dict[int, tuple[bool, str | None]] = {}  # each widget's (enabled, tip)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(4, 4, 4, 4)
        self.session.changed.connect(self.refresh)
        self.session.busy_changed.connect(self.refresh)

    def add_form(self, *widgets: Widget) -> Container:
        """Add a magicgui form of ``widgets``."""
        form = Container(widgets=list(widgets))
        form.margins = (0, 0, 0, 0)
        self._layout.addWidget(form.native)
        return form

    def add_widget(self, widget: QWidget) -> None:
        """Add a plain Qt widget below the forms."""
        self._layout.addWidget(widget)

    def gate(self, action: str, button: PushButton, tip: str) -> PushButton:
        """Enable ``button`` only when the session allows ``action``; its tooltip says why not."""
        self.buttons.append((action, button, tip))
        return button

    def refresh(self, *_: Any) -> None:
        """Enable what can run now."""
        for action, button, tip in self.buttons:
            why = self.session.why_not(action)
            self.show_state(button, not why, why or tip)

    def show_state(self, widget: Widget, enabled: bool, tooltip: str | None = None) -> None:
        """Enable ``widget`` (and set its tooltip) unless it already shows that.

        Each change restyles the widget, and the session's changes come several at a time (a new
        slide clears the features, model and predictions): only what changed is set.
        """
        state = (enabled, tooltip)
        if self._shown.get(id(widget)) != state:
            widget.enabled = enabled
            if tooltip is not None:
                widget.tooltip = tooltip
            self._shown[id(widget)] = state
