"""Find the H&E image, the measured units and the table annotating them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari_histosge.base.validation import assert_one_of
from napari_histosge.images import image_levels

from ._elements import SlideKeys

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from napari_histosge.images import ImageElement

__all__ = ["is_circles", "is_polygons", "is_units", "resolve_keys", "table_regions"]


def is_circles(sdata: SpatialData, key: str) -> bool:
    """Whether shapes element ``key`` holds circles (a ``radius`` column)."""
    return key in sdata.shapes and "radius" in sdata.shapes[key].columns


def is_polygons(sdata: SpatialData, key: str) -> bool:
    """Whether ``key`` is a shapes element of Polygon / MultiPolygon footprints."""
    if key not in sdata.shapes or "radius" in sdata.shapes[key].columns:
        return False
    kinds = set(sdata.shapes[key].geometry.geom_type.unique())
    return bool(kinds) and kinds <= {"Polygon", "MultiPolygon"}


def is_units(sdata: SpatialData, key: str) -> bool:
    """Whether ``key`` holds measured-unit footprints: circles or (Multi)Polygons."""
    return is_circles(sdata, key) or is_polygons(sdata, key)


def table_regions(table: AnnData) -> list[str]:
    """Elements a table annotates (its ``spatialdata_attrs`` region)."""
    attrs = table.uns.get("spatialdata_attrs", {})
    region = attrs.get("region", [])
    return [region] if isinstance(region, str) else list(region)


def _coordinate_systems(element: Any) -> set[str]:
    from spatialdata.transformations import get_transformation

    return set(get_transformation(element, get_all=True))


def _image_size(image: ImageElement) -> int:
    first = image_levels(image)[0]
    return int(first.sizes["y"] * first.sizes["x"])


def resolve_keys(
    sdata: SpatialData,
    *,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
) -> SlideKeys:
    """Find the H&E image, the measured units and the table; explicit keys override.

    The units are a shapes element of circles (spots) or of Polygon / MultiPolygon footprints
    (bins, pooled spots, cells). The table is one that annotates such an element; the image is
    the largest one sharing a coordinate system with the spots. Elements written by this
    package (``histosge_*``) are never picked automatically. Explicit keys are checked: an
    unknown key raises ``KeyError`` listing the available ones, a wrong kind of element a
    ``ValueError``.

    Parameters
    ----------
    sdata
        The slide.
    image_key, spots_key, table_key
        Elements to use instead of the detected ones.

    Returns
    -------
    The chosen keys.

    Examples
    --------
    >>> from napari_histosge.io import load_sample
    >>> keys = resolve_keys(load_sample())
    >>> keys.image_key, keys.spots_key, keys.table_key
    ('V1_Adult_Mouse_Brain_image', 'V1_Adult_Mouse_Brain_spots', 'table')
    """

    def own(k: str) -> bool:
        return k.startswith("histosge_")

    if len(sdata.images) == 0:
        raise ValueError("Expected an H&E image element in the store, found no image.")
    circles = [k for k in sdata.shapes if is_units(sdata, k)]
    if not circles:
        raise ValueError(
            "Expected a shapes element of circles or (Multi)Polygons for the measured units, "
            f"found shapes {list(sdata.shapes)}."
        )
    if len(sdata.tables) == 0:
        raise ValueError("Expected a table annotating the spots, found no table.")

    if table_key is not None:
        assert_one_of("table_key", table_key, sdata.tables, error=KeyError)
        tables = [table_key]
    else:
        tables = [k for k in sdata.tables if not own(k)]
    candidates = [
        (t, r) for t in tables for r in table_regions(sdata.tables[t]) if is_units(sdata, r)
    ]
    if spots_key is not None:
        assert_one_of("spots_key", spots_key, sdata.shapes, error=KeyError)
        if not is_units(sdata, spots_key):
            raise ValueError(
                f"Expected `{spots_key}` to be circles (a `radius` column) or (Multi)Polygons, "
                "found other shapes."
            )
        candidates = [(t, r) for t, r in candidates if r == spots_key]
    if not candidates:
        which = f"`{table_key}`" if table_key else f"any of {tables}"
        target = f"`{spots_key}`" if spots_key else f"units {circles}"
        found = {t: table_regions(sdata.tables[t]) for t in sdata.tables}
        raise ValueError(f"Expected {which} to annotate {target}, found tables annotating {found}.")
    candidates.sort(key=lambda tr: (tr[0] != "table", own(tr[1])))
    t_key, s_key = candidates[0]

    spot_cs = _coordinate_systems(sdata.shapes[s_key])
    if image_key is not None:
        assert_one_of("image_key", image_key, sdata.images, error=KeyError)
        if not (_coordinate_systems(sdata.images[image_key]) & spot_cs):
            raise ValueError(
                f"Expected image `{image_key}` to share a coordinate system with `{s_key}` "
                f"({sorted(spot_cs)}), found "
                f"{sorted(_coordinate_systems(sdata.images[image_key]))}."
            )
        i_key = image_key
    else:
        images = [
            k for k in sdata.images if not own(k) and _coordinate_systems(sdata.images[k]) & spot_cs
        ]
        if not images:
            raise ValueError(
                f"Expected an image in the coordinate systems of `{s_key}` ({sorted(spot_cs)}), "
                f"found images {list(sdata.images)} in other systems."
            )
        i_key = max(images, key=lambda k: _image_size(sdata.images[k]))
    return SlideKeys(image_key=i_key, spots_key=s_key, table_key=t_key)
