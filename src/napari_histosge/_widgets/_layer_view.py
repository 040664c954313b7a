"""Layers for the session's results: the H&E and spots, the gene maps, measured values.

Layers are added on the main thread, one per turn of the event loop, from data that is read
lazily: the H&E as dask arrays over the store's zarr arrays (all its levels), maps and values as
memory-mapped ``.npy`` files written by the worker. Nothing here computes.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, QTimer

from ._napari_private import deferrable_parts, parts_deferred
from ._session import MapsInfo, MeasuredInfo, Session, SlideInfo
from ._trust_layers import TrustLayers

if TYPE_CHECKING:
    import napari

__all__ = ["LayerView", "prefetch_readers"]

#: Milliseconds between two queued layer changes.
STEP_MS = 30


def _import_readers() -> None:
    import dask.array  # noqa: F401
    import zarr  # noqa: F401


def prefetch_readers() -> threading.Thread:
    """Import the lazy readers (dask, zarr) in a thread, before the first layer needs them."""
    thread = threading.Thread(target=_import_readers, name="histosge-prefetch", daemon=True)
    thread.start()
    return thread


class LayerView(QObject):
    """Keeps the viewer's layers in step with the session.

    Parameters
    ----------
    viewer
        The viewer the layers go to.
    session
        The session whose results are shown.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        session: Session,
    ) -> None:
        super().__init__()
        self.viewer = viewer
        self.session = session
        self.gene_layers: dict[str, Any] = {}
        self.measured_layer: Any = None
        self._queue: deque[Callable[[], None]] = deque()
        # The parts of napari's insertion still to build, per layer inserted without them.
        self._unbuilt: dict[Any, list[Callable[[Any], None]]] = {}
        viewer.layers.events.removing.connect(self._on_removing)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        # Room for napari to repaint between two layer changes.
        self._timer.setInterval(STEP_MS)
        self._timer.timeout.connect(self._next)
        session.changed.connect(self._on_changed)
        # Uncertainty maps, unit outlines and domains, queued after the maps they go with.
        self.trust = TrustLayers(self)

    @property
    def pending(self) -> int:
        """Layer changes still queued."""
        return len(self._queue)

    def queue(self, *steps: Callable[[], None]) -> None:
        """Run ``steps`` after the changes already queued, each on a turn of its own."""
        if steps:
            self._later(*steps)

    def _later(self, *steps: Callable[[], None]) -> None:
        self._queue.extend(steps)
        if not self._timer.isActive():
            self._timer.start(STEP_MS)

    def _next(self) -> None:
        # Each change runs on a turn of its own: napari's insertion of a layer and its first
        # draw are its largest turns, and two of them in one turn would add up.
        if self._queue:
            self._queue.popleft()()
        if self._queue:
            self._timer.start(STEP_MS)

    def close(self) -> None:
        """Stop changing layers; the layers already inserted get all their parts."""
        self._queue.clear()
        with contextlib.suppress(RuntimeError):  # Qt deleted the timer already
            self._timer.stop()
        self.viewer.layers.events.removing.disconnect(self._on_removing)
        unbuilt, self._unbuilt = self._unbuilt, {}
        with contextlib.suppress(RuntimeError):  # Qt deleted napari's window already
            for layer, builds in unbuilt.items():
                if layer in self.viewer.layers:
                    for build in builds:
                        build(layer)

    def _on_changed(self, name: str) -> None:
        if name == "slide" and self.session.slide is not None:
            self._later(*self._slide_steps(self.session.slide))
        elif name == "maps":
            self._later(*self._map_steps(self.session.maps))
        elif name == "measured":
            self._later(lambda m=self.session.measured: self._show_measured(m))

    # The slide --------------------------------------------------------------------------------

    def _slide_steps(self, slide: SlideInfo) -> list[Callable[[], None]]:
        steps: list[Callable[[], None]] = []
        image_key, spots_key = slide.keys["image_key"], slide.keys["spots_key"]
        if slide.image_levels and image_key not in self.viewer.layers:
            steps.append(lambda: self._add_image(slide))
        if slide.centers and spots_key not in self.viewer.layers:
            steps.append(lambda: self._add_spots(slide))
        return steps

    def _add_image(self, slide: SlideInfo) -> None:
        import dask.array as da

        levels = [da.from_zarr(path).transpose(1, 2, 0) for path in slide.image_levels]
        name = slide.keys["image_key"]
        self.viewer.add_image(
            levels if len(levels) > 1 else levels[0],
            name=name,
            rgb=True,
            multiscale=len(levels) > 1,
            contrast_limits=(0, 255),
            metadata={"name": name, "store": slide.source},
        )
        self.viewer.reset_view()

    def _add_spots(self, slide: SlideInfo) -> None:
        import numpy as np

        centers = np.load(slide.centers)
        name = slide.keys["spots_key"]
        self.viewer.add_points(
            centers[:, ::-1],
            name=name,
            size=float(slide.diameter_px),
            face_color="transparent",
            border_color="white",
            border_width=0.05,
            opacity=0.8,
            metadata={"name": name, "store": slide.source},
        )

    # Gene maps --------------------------------------------------------------------------------

    def _map_steps(self, maps: MapsInfo | None) -> list[Callable[[], None]]:
        """Show ``maps``, reusing the layers already shown (cheap) and adding only the missing."""
        old = dict(self.gene_layers)
        genes = [] if maps is None else list(maps.genes)
        kept = {gene: old.pop(gene) for gene in genes if gene in old}
        free = list(old.values())
        steps: list[Callable[[], None]] = []
        if maps is not None:
            from napari_histosge._layers import map_colormap

            for i, gene in enumerate(genes):
                layer = kept.get(gene) or (free.pop(0) if free else None)
                cmap = map_colormap(i, len(genes))
                steps.append(
                    lambda i=i, gene=gene, layer=layer, cmap=cmap: self._show_map(
                        maps, i, gene, cmap, layer
                    )
                )
        steps += [lambda layer=layer: self._remove(layer) for layer in free]
        return steps

    def _remove(self, layer: Any) -> None:
        for gene, shown in list(self.gene_layers.items()):
            if shown is layer:
                del self.gene_layers[gene]
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _show_map(self, maps: MapsInfo, index: int, gene: str, colormap: Any, layer: Any) -> None:
        import numpy as np

        from napari_histosge._layers import MAP_UNITS

        if self.session.maps is not maps:
            return  # newer maps are on their way
        levels = [np.load(p, mmap_mode="r")[index] for p in maps.levels or [maps.path]]
        plane: Any = levels if len(levels) > 1 else levels[0]
        name = f"{gene} (HisToSGE)"
        meta = {"name": "histosge_expression", "gene": gene, "file": maps.path, "units": MAP_UNITS}
        for shown_gene, shown in list(self.gene_layers.items()):
            if shown is layer:
                del self.gene_layers[shown_gene]
        if layer is not None and layer.multiscale != (len(levels) > 1):
            self._remove(layer)  # napari cannot switch an existing layer to or from levels
        elif layer is not None and layer in self.viewer.layers:
            layer.data = plane
            layer.scale = maps.scale
            layer.translate = maps.translate
            layer.colormap = colormap
            layer.contrast_limits = maps.limits[index]
            layer.name = name
            layer.metadata = meta
            self.gene_layers[gene] = layer
            return
        from napari.layers import Image

        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        # Three turns of the event loop: build the layer, insert it hidden, then show it (its
        # first draw), so no single turn pays for all of it.
        layer = Image(
            plane,
            name=name,
            scale=maps.scale,
            translate=maps.translate,
            colormap=colormap,
            blending="translucent",
            contrast_limits=maps.limits[index],
            metadata=meta,
            multiscale=len(levels) > 1,
            visible=False,
        )
        self.gene_layers[gene] = layer
        self.add_next(layer, lambda: layer in self.gene_layers.values())

    def add_next(self, layer: Any, wanted: Callable[[], bool]) -> None:
        """Insert the hidden ``layer``, then show it, as the next changes (while ``wanted()``).

        Each part of the insertion runs on a turn of its own (see :meth:`_insert`). The maps'
        colour bars are the dock's (:mod:`._legend`): napari's own colour bar, text and scale
        bar overlays each cost a turn of 130-150 ms and a first draw of 350-600 ms on a
        software-rendered display (measured on a 2-core machine under load, 2026-12-06).
        """
        self._queue.appendleft(functools.partial(self._reveal, layer))
        self._queue.appendleft(lambda: self._insert(layer, wanted))
        if not self._timer.isActive():
            self._timer.start(STEP_MS)

    def _insert(self, layer: Any, wanted: Callable[[], bool]) -> None:
        if not wanted():
            return
        # napari builds the layer's visuals and controls in the insertion's turn; here each is
        # built on a turn of its own, right after (see :mod:`._napari_private`).
        layers = self.viewer.layers
        parts = deferrable_parts(self.viewer)
        self._unbuilt[layer] = [build for _, build in parts]
        self._queue.extendleft(
            reversed([functools.partial(self._build_part, build, layer) for _, build in parts])
        )
        with parts_deferred(layers, parts):
            layers.append(layer)

    def _build_part(self, build: Callable[[Any], None], layer: Any) -> None:
        unbuilt = self._unbuilt.get(layer, [])
        if build in unbuilt:
            unbuilt.remove(build)
            build(layer)
        if not unbuilt:
            self._unbuilt.pop(layer, None)

    def _on_removing(self, event: Any) -> None:
        # napari's removal of a layer expects its visuals and controls: a layer removed (or
        # the viewer closed) before they were built gets them first.
        layer = self.viewer.layers[event.index]
        for build in self._unbuilt.pop(layer, []):
            build(layer)

    def _reveal(self, layer: Any) -> None:
        if layer in self.viewer.layers:
            layer.visible = True

    # Measured values --------------------------------------------------------------------------

    def _show_measured(self, measured: MeasuredInfo | None) -> None:
        import numpy as np

        if self.measured_layer is not None:
            self._remove(self.measured_layer)
        self.measured_layer = None
        slide = self.session.slide
        if measured is None or slide is None or self.session.measured is not measured:
            return
        centers = np.load(slide.centers)
        values = np.load(measured.path)
        self.measured_layer = self.viewer.add_points(
            centers[:, ::-1],
            name=f"{measured.gene} (measured)",
            size=float(slide.diameter_px),
            features={"value": values},
            face_color="value",
            face_colormap="inferno",
            face_contrast_limits=measured.limits,
            border_color="transparent",
            metadata={"name": slide.keys["spots_key"], "gene": measured.gene},
        )
