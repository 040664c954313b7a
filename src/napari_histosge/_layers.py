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
    from .predict import Predictions
    from .workflows.pipeline import Slide

__all__ = [
    "MAP_UNITS",
    "contrast_limits",
    "domain_colormap",
    "domain_colors",
    "gene_layer",
    "gene_layers",
    "image_layer",
    "map_colormap",
    "map_limits",
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
    >>> from napari_histosge.workflows.pipeline import Slide
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
    >>> from napari_histosge.workflows.pipeline import Slide
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


def contrast_limits(
    values: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)
) -> tuple[float, float]:
    """Contrast limits from two percentiles (the 1st and 99th by default), ignoring NaN.

    Examples
    --------
    >>> contrast_limits(np.array([0.0, 1.0, np.nan]))
    (0.01, 0.99)
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(v, list(percentiles))
    if hi <= lo:
        hi = lo + 1e-6
    return (round(float(lo), 6), round(float(hi), 6))


#: Units of the maps' values (the model predicts log-normalised expression).
MAP_UNITS = "log1p normalised counts"
#: Percentiles of a map's finite values that set its contrast limits: robust to the few
#: extreme superpixels, and the low end is where the map becomes transparent.
MAP_PERCENTILES = (2.0, 99.5)


def map_limits(values: Any, *, from_zero: bool = False) -> tuple[float, float]:
    """Contrast limits of a gene map: the 2nd and 99.5th percentiles of its finite values.

    ``from_zero`` (standard deviations): from 0, so that a small spread reads as small.

    Examples
    --------
    >>> map_limits(np.linspace(0.0, 1.0, 201))
    (0.02, 0.995)
    >>> map_limits(np.linspace(0.5, 1.0, 201), from_zero=True)
    (0.0, 0.9975)
    """
    lo, hi = contrast_limits(np.asarray(values), MAP_PERCENTILES)
    return (0.0, max(hi, 1e-6)) if from_zero else (lo, hi)


#: Hues of several genes shown together: saturated, apart from each other and from the H&E's
#: pinks and purples.
MULTI_GENE_COLORS = ("#00e040", "#1e90ff", "#ffc800", "#ff3c28", "#00e5d0", "#c8ff00")
#: One gene alone: viridis's hues (dark blue to yellow, none of them the H&E's).
SINGLE_GENE_COLORS = ("#3b528b", "#3b528b", "#21918c", "#5ec962", "#fde725")
#: The opacity grows faster than the value, so that the tissue stays visible under the middle
#: of the range and the highest values stand out.
SINGLE_GENE_ALPHA = (0.0, 0.08, 0.3, 0.62, 0.92)
SINGLE_GENE_CONTROLS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Uncertainty maps: grey to white, more opaque where the map is less certain.
SD_COLORS = ("#505050", "#a0a0a0", "#ffffff")


def _rgba(color: str, alpha: float, gain: float = 1.0) -> list[float]:
    rgb = [gain * int(color[i : i + 2], 16) / 255.0 for i in (1, 3, 5)]
    return [round(c, 4) for c in rgb] + [float(alpha)]


def map_colormap(index: int = 0, n: int = 1, *, kind: str = "value") -> dict[str, Any]:
    """Return a map's colormap, read over the H&E: transparent at the low contrast limit.

    The colours' alpha ramps from 0 at the low limit, so that with napari's ``translucent``
    blending low values leave the H&E as it is and two maps that overlap keep their own hues
    (additive blending turns overlaps and pale tissue white). One gene: viridis's hues; several:
    one hue each (``index`` of ``n``); ``kind="sd"``: grey to white. The dictionary is what
    napari's colormap argument takes (``colors``, ``controls``, ``name``).

    Examples
    --------
    >>> cmap = map_colormap(1, 2)
    >>> cmap["name"], cmap["colors"][0][3], cmap["colors"][-1][3]
    ('histosge-1e90ff', 0.0, 0.92)
    """
    if kind == "sd":
        colors = [_rgba(c, a) for c, a in zip(SD_COLORS, (0.0, 0.6, 0.92), strict=True)]
        return {"colors": colors, "controls": [0.0, 0.4, 1.0], "name": "histosge-sd"}
    if n <= 1:
        pairs = zip(SINGLE_GENE_COLORS, SINGLE_GENE_ALPHA, strict=True)
        colors = [_rgba(c, a) for c, a in pairs]
        return {
            "colors": colors,
            "controls": list(SINGLE_GENE_CONTROLS),
            "name": "histosge-viridis",
        }
    hue = MULTI_GENE_COLORS[index % len(MULTI_GENE_COLORS)]
    colors = [_rgba(hue, 0.0, 0.5), _rgba(hue, 0.2, 0.7), _rgba(hue, 0.5, 0.85), _rgba(hue, 0.92)]
    controls = [0.0, 0.5, 0.75, 1.0]
    return {"colors": colors, "controls": controls, "name": f"histosge-{hue[1:]}"}


#: Domain colours (tab10's), for the labels layer and the dock's list of top genes.
DOMAIN_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def domain_colors(k: int) -> dict[int, str]:
    """Colours of domains ``1..k`` (0, off tissue, is left transparent by the caller).

    Examples
    --------
    >>> domain_colors(2)
    {1: '#1f77b4', 2: '#ff7f0e'}
    """
    return {i: DOMAIN_COLORS[(i - 1) % len(DOMAIN_COLORS)] for i in range(1, int(k) + 1)}


def domain_colormap(k: int) -> dict[str, Any]:
    """Return a colormap showing domain labels ``0..k`` as flat colours (0: transparent).

    For an image layer of the labels with contrast limits ``(-0.5, k + 0.5)``: one colour per
    label, without napari's labels layer (its first use compiles numba functions: about a
    second of the viewer's time).

    Examples
    --------
    >>> cmap = domain_colormap(2)
    >>> cmap["interpolation"], len(cmap["colors"]), cmap["controls"][-1]
    ('zero', 3, 1.0)
    """
    colors = [[0.0, 0.0, 0.0, 0.0]] + [_rgba(c, 1.0) for c in domain_colors(k).values()]
    controls = [round(j / (k + 1), 6) for j in range(k + 2)]
    controls[-1] = 1.0
    return {
        "colors": colors,
        "controls": controls,
        "interpolation": "zero",
        "name": f"histosge-domains-{k}",
    }


def gene_layer(
    maps: GeneMaps, gene: str, *, sdata: Any = None, index: int = 0, n: int = 1
) -> LayerData:
    """One gene's super-resolved map, placed over the H&E, transparent where it is low.

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
        "colormap": map_colormap(index, n),
        "blending": "translucent",
        "opacity": 1.0,
        "contrast_limits": map_limits(plane),
        "metadata": {
            "sdata": sdata,
            "name": "histosge_expression",
            "gene": gene,
            "units": MAP_UNITS,
        },
    }
    return (plane, kwargs, "image")


def slide_layers(slide: Slide) -> list[LayerData]:
    """H&E and spots layers of a slide."""
    return [image_layer(slide), spots_layer(slide)]


def gene_layers(maps: GeneMaps, genes: Sequence[str], *, sdata: Any = None) -> list[LayerData]:
    """Gene-map layers: viridis's hues for one gene, one hue per gene for several."""
    return [gene_layer(maps, g, sdata=sdata, index=i, n=len(genes)) for i, g in enumerate(genes)]


def spot_values(predictions: Predictions, gene: str) -> np.ndarray:
    """Return the model's predictions of ``gene`` at the measured spots."""
    idx = predictions.gene_index([gene])[0]
    return predictions.spot_values[:, idx]
