"""Layers that tell how far to trust the maps: standard deviations, unit outlines, domains.

Each layer goes through the layer view's queue (:meth:`~._layer_view.LayerView.add_next`): built
hidden, inserted with napari's deferrable parts on turns of their own, then shown. The data are
the worker's ``.npy`` files, memory-mapped; nothing here computes beyond placing them.
"""

from __future__ import annotations

from typing import Any

from ._session import MapsInfo

__all__ = ["CELLS_NAME", "TrustLayers", "sd_translate"]

#: Room between the map and the standard deviations shown next to it, as a share of its width.
SIDE_GAP = 0.05
#: Name of the measured units' outlines.
UNITS_NAME = "measured units (HisToSGE)"
#: Name of the domains' labels layer.
DOMAINS_NAME = "domains (HisToSGE)"
#: Name of the cells' layer (each cell in its value of one gene).
CELLS_NAME = "cells (HisToSGE)"


def sd_translate(maps: MapsInfo, slot: int) -> tuple[float, float]:
    """Where the standard deviations of the ``slot``-th gene go: beside the map, to its right.

    Examples
    --------
    >>> m = MapsInfo("m.npy", ["A"], (2.0, 2.0), (10.0, 20.0), [(0, 1)], 8.0, shape=(5, 50))
    >>> sd_translate(m, 0)
    (10.0, 125.0)
    """
    width = maps.shape[1] * maps.scale[1]
    return (maps.translate[0], maps.translate[1] + (slot + 1) * width * (1.0 + SIDE_GAP))


class TrustLayers:
    """Shows the session's uncertainty maps, the measured units' outlines and its domains.

    Parameters
    ----------
    view
        The layer view (:class:`~._layer_view.LayerView`) whose queue adds the layers.
    """

    def __init__(self, view: Any) -> None:
        self.view = view
        self.session = view.session
        self.sd_layers: dict[str, Any] = {}
        self._sd_maps: MapsInfo | None = None  # the maps the sd layers were filled for
        self.units_layer: Any = None
        self.domains_layer: Any = None
        self.cells_layer: Any = None
        self.session.changed.connect(self._on_changed)

    def _on_changed(self, name: str) -> None:
        if name in ("maps", "show_uncertainty"):
            self.view.queue(*self._sd_steps(self.session.maps))
        if name in ("maps", "show_uncertainty", "show_units", "slide"):
            self.view.queue(self._show_units)
        if name == "domains":
            self.view.queue(self._show_domains)
        if name == "cells":
            self.view.queue(self._show_cells)

    def _remove(self, layer: Any) -> None:
        if layer is not None and layer in self.view.viewer.layers:
            self.view.viewer.layers.remove(layer)

    @staticmethod
    def _set_visible(layer: Any, visible: bool) -> None:
        # Hiding is one redraw; napari's removal of a layer took 220-290 ms per layer here.
        if layer.visible != visible:
            layer.visible = visible

    # Standard deviations ------------------------------------------------------------------

    def _sd_steps(self, maps: MapsInfo | None) -> list[Any]:
        """Show, hide or refill the maps of standard deviations, reusing their layers."""
        wanted = maps is not None and bool(maps.sd_levels) and self.session.show_uncertainty
        old = list(self.sd_layers.values())
        if not wanted and maps is self._sd_maps:
            return [lambda layer=layer: self._set_visible(layer, False) for layer in old]
        self.sd_layers, self._sd_maps = {}, maps
        if not wanted:  # other maps: these would show genes no longer shown
            return [lambda layer=layer: self._remove(layer) for layer in old]
        genes = list(maps.genes)  # type: ignore[union-attr]
        reused = old[: len(genes)] + [None] * max(0, len(genes) - len(old))
        steps: list[Any] = [
            lambda i=i, gene=gene, layer=layer: self._show_sd(maps, i, gene, layer)
            for i, (gene, layer) in enumerate(zip(genes, reused, strict=True))
        ]
        old = old[len(genes) :]
        return steps + [lambda layer=layer: self._remove(layer) for layer in old]

    def _show_sd(self, maps: MapsInfo, index: int, gene: str, layer: Any) -> None:
        import numpy as np

        from napari_histosge._layers import MAP_UNITS, map_colormap

        if self.session.maps is not maps or not self.session.show_uncertainty:
            return
        levels = [np.load(p, mmap_mode="r")[index] for p in maps.sd_levels]
        data = levels if len(levels) > 1 else levels[0]
        name, meta = f"{gene} sd (HisToSGE)", {"name": "histosge_uncertainty", "gene": gene}
        meta["units"] = MAP_UNITS
        where = {"scale": maps.scale, "translate": sd_translate(maps, index)}
        if layer is not None and layer in self.view.viewer.layers:
            if layer.multiscale == (len(levels) > 1):
                layer.data, layer.scale, layer.translate = data, where["scale"], where["translate"]
                layer.contrast_limits = maps.sd_limits[index]
                layer.name, layer.metadata, layer.visible = name, meta, True
                self.sd_layers[gene] = layer
                return
            self._remove(layer)  # napari cannot switch a layer to or from levels
        from napari.layers import Image

        layer = Image(
            data,
            name=name,
            **where,
            colormap=map_colormap(kind="sd"),
            blending="translucent",
            contrast_limits=maps.sd_limits[index],
            metadata=meta,
            multiscale=len(levels) > 1,
            visible=False,
        )
        self.sd_layers[gene] = layer
        self.view.add_next(layer, lambda: layer in self.sd_layers.values())

    # Measured units ------------------------------------------------------------------------

    def _unit_outlines(self) -> Any:
        """Centres ``(y, x)`` of the outlines: over the maps and each map of sd beside them."""
        import numpy as np

        slide, maps = self.session.slide, self.session.maps
        centers = np.load(slide.centers)[:, ::-1]  # type: ignore[union-attr]
        copies = [centers]
        sd_shown = any(layer.visible for layer in self.sd_layers.values())
        if maps is not None and sd_shown and maps.shape[1]:
            for slot in range(len(maps.genes)):
                dx = sd_translate(maps, slot)[1] - maps.translate[1]
                copies.append(centers + np.array([0.0, dx]))
        return np.concatenate(copies)

    def _show_units(self) -> None:
        import numpy as np
        from napari.layers import Points

        slide, layer = self.session.slide, self.units_layer
        if not self.session.show_units or slide is None or not slide.centers:
            if layer is not None:
                self._set_visible(layer, False)
            return
        data = self._unit_outlines()
        if layer is not None and layer in self.view.viewer.layers:
            if layer.metadata.get("centers") != slide.centers or len(layer.data) != len(data):
                layer.data = data
                layer.metadata = {**layer.metadata, "centers": slide.centers}
            self._set_visible(layer, True)
            return
        layer = Points(
            np.asarray(data),
            name=UNITS_NAME,
            size=float(slide.diameter_px),
            face_color="transparent",
            border_color="white",
            border_width=0.06,
            metadata={"name": slide.keys["spots_key"], "store": slide.source},
            visible=False,
        )
        layer.metadata["centers"] = slide.centers
        self.units_layer = layer
        self.view.add_next(layer, lambda: self.units_layer is layer)

    # Domains -------------------------------------------------------------------------------

    def _show_domains(self) -> None:
        import numpy as np
        from napari.layers import Image

        from napari_histosge._layers import domain_colormap

        domains, layer = self.session.domains, self.domains_layer
        if domains is None:
            if layer is not None:
                self._set_visible(layer, False)
            return
        labels = np.load(domains.path, mmap_mode="r")
        meta = {"name": "histosge_domains", "top_genes": domains.top_genes}
        # An image of the labels with one flat colour each (hovering shows the domain).
        look = {"colormap": domain_colormap(domains.k), "contrast_limits": (-0.5, domains.k + 0.5)}
        if layer is not None and layer in self.view.viewer.layers:
            layer.data, layer.metadata = labels, meta
            layer.colormap, layer.contrast_limits = look["colormap"], look["contrast_limits"]
            layer.scale, layer.translate, layer.visible = domains.scale, domains.translate, True
            return
        layer = Image(
            labels,
            name=DOMAINS_NAME,
            scale=domains.scale,
            translate=domains.translate,
            **look,
            interpolation2d="nearest",
            blending="translucent",
            opacity=0.6,
            metadata=meta,
            visible=False,
        )
        self.domains_layer = layer
        self.view.add_next(layer, lambda: self.domains_layer is layer)

    # Cells ---------------------------------------------------------------------------------

    def _show_cells(self) -> None:
        import numpy as np
        from napari.layers import Image

        from napari_histosge._layers import MAP_UNITS, map_colormap

        cells, layer = self.session.cells, self.cells_layer
        if cells is None:
            if layer is not None:
                self._set_visible(layer, False)
            return
        # An image of each cell's value, made by the worker (NaN off the cells: transparent).
        levels = [np.load(p, mmap_mode="r")[0] for p in cells.colour]
        data = levels if len(levels) > 1 else levels[0]
        meta = {"name": "histosge_cells", "gene": cells.gene, "units": MAP_UNITS}
        name = f"cells: {cells.gene} (HisToSGE)"
        if layer is not None and layer in self.view.viewer.layers:
            if layer.multiscale == (len(levels) > 1):
                # Another gene on the same cells: each change of placement redraws, skipped.
                layer.data, layer.metadata, layer.contrast_limits = data, meta, cells.limits
                if tuple(layer.scale) != cells.scale or tuple(layer.translate) != cells.translate:
                    layer.scale, layer.translate = cells.scale, cells.translate
                layer.name, layer.visible = name, True
                return
            self._remove(layer)  # napari cannot switch a layer to or from levels
        layer = Image(
            data,
            name=name,
            scale=cells.scale,
            translate=cells.translate,
            colormap=map_colormap(),
            contrast_limits=cells.limits,
            interpolation2d="nearest",
            blending="translucent",
            metadata=meta,
            multiscale=len(levels) > 1,
            visible=False,
        )
        self.cells_layer = layer
        self.view.add_next(layer, lambda: self.cells_layer is layer)
