from __future__ import annotations

import numpy as np
import pytest

from napari_histosge.geometry import (
    SpotGeometry,
    detect_lattice,
    grid_positions,
    lattice_pitch,
    spot_geometry,
    subspot_positions,
)
from napari_histosge.io import resolve_keys


def _hex(nx: int = 8, ny: int = 6, pitch: float = 100.0) -> np.ndarray:
    pts = [(x * pitch + (y % 2) * pitch / 2, y * pitch * np.sqrt(3) / 2) for y in range(ny) for x in range(nx)]
    return np.array(pts) + 500.0


def _square(n: int = 6, pitch: float = 200.0) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(n), np.arange(n))
    return np.c_[xs.ravel(), ys.ravel()] * pitch + 300.0


def test_detect_lattice():
    assert detect_lattice(_hex()) == "hexagonal"
    assert detect_lattice(_square()) == "square"


def test_4x_on_hexagonal_lattice_is_edge_midpoints():
    xy = _hex()
    new = subspot_positions(xy)
    # Every neighbouring pair (distance = pitch) contributes exactly its midpoint.
    pairs = [(i, j) for i in range(len(xy)) for j in range(i + 1, len(xy))
             if abs(np.linalg.norm(xy[i] - xy[j]) - 100.0) < 1e-6]
    assert len(new) == len(pairs)
    expected = np.array([(xy[i] + xy[j]) / 2 for i, j in pairs])
    d = np.linalg.norm(new[:, None] - expected[None], axis=2).min(1)
    assert d.max() < 1e-9
    assert len(new) + len(xy) > 3.2 * len(xy)  # close to 4x for a finite patch


def test_4x_on_square_lattice_adds_edge_midpoints_and_cell_centres():
    xy = _square(n=6)
    new = subspot_positions(xy)
    assert len(new) == 2 * 6 * 5 + 5 * 5
    assert np.allclose(np.sort(np.unique(np.round((new[:, 0] - 300) / 100))), np.arange(11))
    # Scaling the coordinates scales the positions: nothing depends on pixel offsets.
    np.testing.assert_allclose(subspot_positions(xy * 3.0), new * 3.0)


def test_grid_positions_stay_near_spots_and_follow_pitch():
    xy = _hex()
    geom = SpotGeometry(np.arange(len(xy)).astype(str), xy, 55.0, 1.0, "hexagonal", "he")
    grid = grid_positions(geom, pitch_um=20.0)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(grid)
    assert d.max() <= 0.75 * lattice_pitch(xy) + 1e-9
    steps = np.diff(np.unique(np.round(grid[:, 0], 6)))
    assert np.allclose(steps, 20.0)
    mask = np.zeros((2000, 2000), bool)
    mask[:, :800] = True
    masked = grid_positions(geom, pitch_um=20.0, mask=mask)
    assert (masked[:, 0] < 800).all() and len(masked) > 0
    with pytest.raises(ValueError, match="positive grid pitch"):
        grid_positions(geom, pitch_um=0)


def test_spot_geometry_through_a_scaled_image(sample_sdata):
    from spatialdata.transformations import Scale, set_transformation

    keys = resolve_keys(sample_sdata)
    full = spot_geometry(sample_sdata, **keys.__dict__)
    # Pretend the image is a half-resolution copy: its pixels are twice as large.
    from spatialdata.models import Image2DModel

    from napari_histosge.io import image_levels

    img = image_levels(sample_sdata.images[keys.image_key])[0]
    half = Image2DModel.parse(img.values[:, ::2, ::2], dims=("c", "y", "x"))
    set_transformation(half, Scale([2.0, 2.0], axes=("x", "y")), to_coordinate_system="global")
    sample_sdata.images["half"] = half
    geom = spot_geometry(sample_sdata, image_key="half", spots_key=keys.spots_key, table_key=keys.table_key)
    np.testing.assert_allclose(geom.centers_px, full.centers_px / 2)
    assert geom.diameter_px == pytest.approx(full.diameter_px / 2)
    assert geom.um_per_px == pytest.approx(full.um_per_px * 2)
    assert list(geom.spot_ids) == list(sample_sdata.tables["table"].obs_names)
