"""Check that a slide can be processed, before any computation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_histosge.base.validation import assert_one_of
from napari_histosge.expression import count_matrix
from napari_histosge.geometry.spots import spot_geometry
from napari_histosge.images import image_levels

from ._elements import MIN_SPOTS, SlideKeys, check_counts
from .keys import is_units, table_regions

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["validate_slide"]


def validate_slide(sdata: SpatialData, keys: SlideKeys) -> None:
    """Check that a slide can be processed; raise ``ValueError``/``KeyError`` saying what is wrong.

    Checks that the three elements exist, the image is 8-bit RGB ``(c, y, x)``, the table
    annotates the spots (every row names a circle), there are at least 10 spots, the counts
    hold no NaN or negative values, and every spot centre lies on the image. Nothing is
    modified.

    Parameters
    ----------
    sdata
        The slide.
    keys
        The image, spots and table to check, usually from :func:`resolve_keys`.

    Examples
    --------
    >>> from napari_histosge.io import load_sample, resolve_keys
    >>> sdata = load_sample()
    >>> validate_slide(sdata, resolve_keys(sdata))
    """
    for key, container, what in (
        (keys.image_key, sdata.images, "image_key"),
        (keys.spots_key, sdata.shapes, "spots_key"),
        (keys.table_key, sdata.tables, "table_key"),
    ):
        assert_one_of(what, key, container, error=KeyError)
    first = image_levels(sdata.images[keys.image_key])[0]
    if first.sizes.get("c") != 3 or first.dtype != np.uint8:
        raise ValueError(
            f"Expected image `{keys.image_key}` to be 8-bit RGB (3 channels, uint8), found "
            f"{first.sizes.get('c')} channels of {first.dtype}; open the slide with read_slide to "
            "convert it."
        )
    if not is_units(sdata, keys.spots_key):
        shapes = sdata.shapes[keys.spots_key]
        raise ValueError(
            f"Expected `{keys.spots_key}` to be circles (a `radius` column) or (Multi)Polygons, "
            f"found columns {list(shapes.columns)} and geometries "
            f"{sorted(set(shapes.geometry.geom_type))}."
        )
    table = sdata.tables[keys.table_key]
    regions = table_regions(table)
    if keys.spots_key not in regions:
        raise ValueError(
            f"Expected table `{keys.table_key}` to annotate `{keys.spots_key}`, found it "
            f"annotating {regions}."
        )
    if table.n_obs < MIN_SPOTS:
        raise ValueError(f"Expected at least {MIN_SPOTS} spots, found {table.n_obs}.")
    x, where = count_matrix(table)
    check_counts(x, f"table `{keys.table_key}` {where}")
    geom = spot_geometry(
        sdata, image_key=keys.image_key, spots_key=keys.spots_key, table_key=keys.table_key
    )
    h, w = first.sizes["y"], first.sizes["x"]
    c = geom.centers_px
    outside = ~np.isfinite(c).all(axis=1) | (c[:, 0] < 0) | (c[:, 0] > w) | (c[:, 1] < 0)
    outside |= c[:, 1] > h
    if outside.any():
        raise ValueError(
            f"Expected spot centres inside image `{keys.image_key}` ({w} x {h} px), found "
            f"{int(outside.sum())} of {len(c)} outside, e.g. {list(geom.spot_ids[outside][:3])}."
        )
