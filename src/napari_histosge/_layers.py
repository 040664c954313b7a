"""napari layer data tuples ``(data, kwargs, layer_type)`` for slides and predictions.

Pure functions, no napari or Qt import: the reader, the sample and the dock all use them.
World coordinates are the H&E's scale-0 pixels ``(y, x)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .maps import GeneMaps
    from .pipeline import Slide
    from .predict import Predictions

__all__ = [
    "contrast_limits",
    "gene_layer",
    "gene_layers",
    "image_layer",
    "slide_layers",
    "spot_values",
    "spots_layer",
]

LayerData = tuple[Any, dict[str, Any], str]


def image_layer(slide: Slide) -> LayerData:
    """Build the H&E as a lazy multiscale RGB image layer.

    Examples
    --------
    >>> from napari_histosge.io import load_sample
    >>> from napari_histosge.pipeline import Slide
    >>> data, kwargs, kind = image_layer(Slide.open(load_sample()))
    >>> kind, kwargs["rgb"]
    ('image', True)
    """
    from .images import image_levels

    levels = image_levels(slide.sdata.images[slide.keys.image_key])
    data = [lv.data.transpose(1, 2, 0) for lv in levels]
    kwargs: dict[str, Any] = {
        "name": slide.keys.image_key,
        "rgb": True,
        "multiscale": len(data) > 1,
        "metadata": {"sdata": slide.sdata, "name": slide.keys.image_key},
    }
    return (data if len(data) > 1 else data[0], kwargs, "image")


def spots_layer(
    slide: Slide, *, values: np.ndarray | None = None, gene: str | None = None
) -> LayerData:
    """Build the spots as points of their true diameter, optionally coloured by a gene.

    Examples
    --------
    >>> from napari_histosge.io import load_sample
    >>> from napari_histosge.pipeline import Slide
    >>> data, kwargs, _ = spots_layer(Slide.open(load_sample()))
    >>> data.shape[1], round(float(kwargs["size"]), 1)
    (2, 75.7)
    """
    geom = slide.geometry
    data = geom.centers_px[:, ::-1].copy()
    kwargs: dict[str, Any] = {
        "name": slide.keys.spots_key if gene is None else f"{gene} (measured)",
        "size": float(geom.diameter_px),
        "face_color": "transparent",
        "border_color": "white",
        "border_width": 0.05,
        "opacity": 0.8,
        "features": {"spot_id": np.asarray(geom.spot_ids, dtype=str)},
        "metadata": {"sdata": slide.sdata, "name": slide.keys.spots_key},
    }
    if values is not None:
        v = np.asarray(values, dtype=float)
        kwargs["features"]["value"] = v
        kwargs["face_color"] = "value"
        kwargs["face_colormap"] = "inferno"
        kwargs["face_contrast_limits"] = contrast_limits(v)
        kwargs["border_color"] = "transparent"
        kwargs["opacity"] = 1.0
    return (data, kwargs, "points")


def contrast_limits(values: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the 1st and 99th percentiles, ignoring NaN.

    Examples
    --------
    >>> contrast_limits(np.array([0.0, 1.0, np.nan]))
    (0.01, 0.99)
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(v, [1, 99])
    if hi <= lo:
        hi = lo + 1e-6
    return (round(float(lo), 6), round(float(hi), 6))


#: Colormaps for several genes shown together with additive blending (one hue per gene).
MULTI_GENE_COLORMAPS = ("magenta", "green", "cyan", "yellow", "red", "blue")


def gene_layer(
    maps: GeneMaps, gene: str, *, sdata: Any = None, colormap: str = "inferno"
) -> LayerData:
    """One gene's super-resolved map, placed over the H&E, additive and semi-transparent.

    Examples
    --------
    >>> from napari_histosge.maps import GeneMaps
    >>> m = GeneMaps(np.ones((1, 2, 2), "float32"), ["Gfap"], 10.0, (5.0, 5.0))
    >>> gene_layer(m, "Gfap")[1]["name"]
    'Gfap (HisToSGE)'
    """
    plane = maps.gene(gene)
    kwargs = {
        "name": f"{gene} (HisToSGE)",
        "scale": maps.scale,
        "translate": maps.translate,
        "colormap": colormap,
        "blending": "additive",
        "opacity": 0.7,
        "contrast_limits": contrast_limits(plane),
        "metadata": {"sdata": sdata, "name": "histosge_expression", "gene": gene},
    }
    return (plane, kwargs, "image")


def slide_layers(slide: Slide) -> list[LayerData]:
    """H&E and spots layers of a slide."""
    return [image_layer(slide), spots_layer(slide)]


def gene_layers(maps: GeneMaps, genes: Sequence[str], *, sdata: Any = None) -> list[LayerData]:
    """Gene-map layers: ``inferno`` for one gene, one hue per gene for several."""
    if len(genes) == 1:
        return [gene_layer(maps, genes[0], sdata=sdata)]
    cmaps = MULTI_GENE_COLORMAPS
    return [
        gene_layer(maps, g, sdata=sdata, colormap=cmaps[i % len(cmaps)])
        for i, g in enumerate(genes)
    ]


def spot_values(predictions: Predictions, gene: str) -> np.ndarray:
    """Return the model's predictions of ``gene`` at the measured spots."""
    idx = predictions.gene_index([gene])[0]
    return predictions.spot_values[:, idx]
