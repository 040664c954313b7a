from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_histosge.geometry import (
    SpotGeometry,
    detect_lattice,
    grid_positions,
    lattice_pitch,
    neighbour_pairs,
    spot_geometry,
    subspot_positions,
    tissue_mask,
)
from napari_histosge.images import image_levels
from napari_histosge.io import resolve_keys
from napari_histosge.store import SLIDE_META_KEY, write_sdata


def _hex(nx: int = 8, ny: int = 6, pitch: float = 100.0) -> np.ndarray:
    pts = [
        (x * pitch + (y % 2) * pitch / 2, y * pitch * np.sqrt(3) / 2)
        for y in range(ny)
        for x in range(nx)
    ]
    return np.array(pts) + 500.0


def _square(nx: int = 6, ny: int = 6, pitch: float = 200.0) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(nx), np.arange(ny))
    return np.c_[xs.ravel(), ys.ravel()] * pitch + 300.0


def _rotate(xy: np.ndarray, degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    return xy @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])


def _nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from each point of ``a`` to the nearest point of ``b``."""
    return cKDTree(b).query(a)[0]


def test_detect_lattice():
    rng = np.random.default_rng(0)
    assert detect_lattice(_hex()) == "hexagonal"
    assert detect_lattice(_square()) == "square"
    assert detect_lattice(_rotate(_hex(), 17)) == "hexagonal"
    assert detect_lattice(_rotate(_square(), 17)) == "square"
    # Jitter of about 5% of the pitch, as in legacy ST spot files.
    assert detect_lattice(_square() + rng.normal(0, 10, (36, 2))) == "square"
    assert detect_lattice(_hex(12, 2)) == "hexagonal"  # a thin strip: few 6-neighbour spots


def test_neighbour_pairs_and_pitch():
    pairs, pitch = neighbour_pairs(_square(3, 3, 10.0))
    assert pitch == pytest.approx(10.0)
    assert len(pairs) == 12
    assert lattice_pitch(_hex()) == pytest.approx(100.0)


@pytest.mark.parametrize("angle", [0.0, 23.0])
def test_4x_on_hexagonal_lattice_is_edge_midpoints(angle):
    nx, ny = 8, 6
    xy = _rotate(_hex(nx, ny), angle)
    new = subspot_positions(xy)
    # Every neighbouring pair (distance = pitch) contributes exactly its midpoint.
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    i, j = np.nonzero(np.triu(np.isclose(d, 100.0)))
    expected = (xy[i] + xy[j]) / 2
    assert len(new) == len(expected) == 3 * nx * ny - 2 * nx - 2 * ny + 1
    assert _nearest(new, expected).max() < 1e-9
    assert _nearest(new, xy).min() == pytest.approx(50.0)
    assert (len(new) + len(xy)) / len(xy) > 3.2  # close to 4x for a finite patch


def test_4x_on_square_lattice_adds_edge_midpoints_and_cell_centres():
    nx, ny = 6, 5
    xy = _square(nx, ny)
    new = subspot_positions(xy)
    assert len(new) == (2 * nx * ny - nx - ny) + (nx - 1) * (ny - 1)
    # Together the spots and the new positions are the square lattice at half the pitch.
    xs, ys = np.meshgrid(np.arange(2 * nx - 1), np.arange(2 * ny - 1))
    fine = np.c_[xs.ravel(), ys.ravel()] * 100.0 + 300.0
    both = np.r_[xy, new]
    assert len(both) == len(fine)
    assert _nearest(both, fine).max() < 1e-9
    # Scaling and rotating the coordinates transforms the positions: no pixel offsets anywhere.
    np.testing.assert_allclose(np.sort(subspot_positions(xy * 3.0), 0), np.sort(new * 3.0, 0))
    rot = subspot_positions(_rotate(xy, 30))
    assert _nearest(rot, _rotate(new, 30)).max() < 1e-6
    assert len(rot) == len(new)


def test_4x_square_with_a_missing_spot_and_jitter():
    xy = _square(4, 4, 200.0)
    missing = np.delete(xy, 5, axis=0)  # an interior spot
    new = subspot_positions(missing)
    # Its 4 edges are gone; the 4 cells around it keep a centre (diagonal midpoints).
    assert len(new) == (24 - 4) + 9
    assert _nearest(new, xy).min() > 0.25 * 200
    rng = np.random.default_rng(1)
    jittered = xy + rng.normal(0, 8, xy.shape)
    assert len(subspot_positions(jittered)) == 24 + 9


@pytest.mark.her2st
def test_4x_on_a_real_st_section(shared_data):
    import pandas as pd

    spots = pd.read_csv(shared_data / "her2st/data/ST-spotfiles/C2_selection.tsv", sep="\t")
    xy = spots[["pixel_x", "pixel_y"]].to_numpy(float)
    assert detect_lattice(xy) == "square"
    new = subspot_positions(xy)
    assert 2.5 < len(new) / len(xy) < 3.0  # ~3 per spot in the interior
    # New positions lie about half a pitch from their nearest spot, never on one.
    d = _nearest(new, xy)
    _, pitch = neighbour_pairs(xy)
    assert d.min() > 0.3 * pitch
    assert np.median(d) == pytest.approx(0.5 * pitch, rel=0.1)


def test_grid_positions_stay_near_spots_and_follow_pitch():
    xy = _hex()
    geom = SpotGeometry(np.arange(len(xy)).astype(str), xy, 55.0, 1.0, "hexagonal", "he")
    grid = grid_positions(geom, pitch_um=20.0)
    assert _nearest(grid, xy).max() <= 0.75 * lattice_pitch(xy) + 1e-9
    steps = np.diff(np.unique(np.round(grid[:, 0], 6)))
    assert np.allclose(steps, 20.0)
    # Every point of the spots' hull interior is covered.
    assert _nearest(xy, grid).max() <= 20.0 * np.sqrt(2) / 2 + 1e-9
    # µm, not pixels: at 2 µm per pixel the same 20 µm pitch is 10 px.
    half = SpotGeometry(geom.spot_ids, xy, 55.0, 2.0, "hexagonal", "he")
    assert np.allclose(
        np.diff(np.unique(np.round(grid_positions(half, pitch_um=20.0)[:, 0], 6))), 10
    )
    mask = np.zeros((2000, 2000), bool)
    mask[:, :800] = True
    masked = grid_positions(geom, pitch_um=20.0, mask=mask)
    assert (masked[:, 0] < 800).all()
    assert len(masked) > 0
    coarse = np.zeros((200, 200), bool)
    coarse[:, :80] = True  # the same mask at 10 image pixels per mask pixel
    np.testing.assert_allclose(
        grid_positions(geom, pitch_um=20.0, mask=coarse, mask_scale=10), masked
    )
    with pytest.raises(ValueError, match="positive grid pitch"):
        grid_positions(geom, pitch_um=0)
    with pytest.raises(ValueError, match="2-D tissue mask"):
        grid_positions(geom, pitch_um=20.0, mask=np.ones((3, 3, 3), bool))


def test_spot_geometry_through_a_scaled_image(sample_sdata, tmp_path):
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Sequence, Translation, set_transformation

    keys = resolve_keys(sample_sdata)
    full = spot_geometry(sample_sdata, **keys.__dict__)
    # A half-resolution copy whose pixels are twice as large and offset by (10, 20) pixels.
    img = image_levels(sample_sdata.images[keys.image_key])[0]
    half = Image2DModel.parse(img.values[:, 10:, 5:][:, ::2, ::2], dims=("c", "y", "x"))
    to_global = Sequence(
        [Scale([2.0, 2.0], axes=("x", "y")), Translation([5.0, 10.0], axes=("x", "y"))]
    )
    set_transformation(half, to_global, to_coordinate_system="global")
    sample_sdata.images["half"] = half
    store = tmp_path / "scaled.zarr"
    write_sdata(sample_sdata, store)
    for sdata in (sample_sdata, sd.read_zarr(store)):
        geom = spot_geometry(
            sdata, image_key="half", spots_key=keys.spots_key, table_key=keys.table_key
        )
        np.testing.assert_allclose(geom.centers_px, (full.centers_px - [5.0, 10.0]) / 2)
        assert geom.diameter_px == pytest.approx(full.diameter_px / 2)
        assert geom.um_per_px == pytest.approx(full.um_per_px * 2)
        assert geom.image_key == "half"
        assert list(geom.spot_ids) == list(sample_sdata.tables["table"].obs_names)


def test_spot_geometry_without_reader_metadata(sample_sdata):
    """Stores written elsewhere (spatialdata-io) get µm/px from the 100 µm Visium pitch."""
    keys = resolve_keys(sample_sdata)
    ours = spot_geometry(sample_sdata, **keys.__dict__)
    del sample_sdata.tables["table"].uns[SLIDE_META_KEY]
    shapes = sample_sdata.shapes[keys.spots_key]
    shapes["radius"] = shapes["radius"] * 65 / 55  # the spot_diameter_fullres / 2 convention
    foreign = spot_geometry(sample_sdata, **keys.__dict__)
    assert foreign.um_per_px == pytest.approx(ours.um_per_px, rel=0.01)
    assert foreign.diameter_px == pytest.approx(89.44, abs=0.01)


def test_spot_geometry_errors(sample_sdata):
    keys = resolve_keys(sample_sdata)
    with pytest.raises(
        KeyError, match=r"`image_key` to be one of \['V1_Adult_Mouse_Brain_image'\]"
    ):
        spot_geometry(sample_sdata, image_key="x", spots_key=keys.spots_key, table_key="table")
    table = sample_sdata.tables["table"]
    table.obs["instance_id"] = table.obs["instance_id"] + 1000
    with pytest.raises(ValueError, match="49 rows naming unknown spots"):
        spot_geometry(sample_sdata, **keys.__dict__)


def test_tissue_mask_on_sample(sample_sdata):
    mask, scale = tissue_mask(sample_sdata.images["V1_Adult_Mouse_Brain_image"])
    assert mask.shape == (1717, 950)
    assert scale == 1.0
    geom = spot_geometry(sample_sdata, **resolve_keys(sample_sdata).__dict__)
    rc = np.floor(geom.centers_px[:, ::-1]).astype(int)
    assert mask[rc[:, 0], rc[:, 1]].mean() > 0.9


@pytest.mark.her2st
def test_tissue_mask_and_grid_on_her2st(her2st_c2_zarr):
    import spatialdata as sd

    sdata = sd.read_zarr(her2st_c2_zarr)
    keys = resolve_keys(sdata)
    geom = spot_geometry(sdata, **keys.__dict__)
    mask, scale = tissue_mask(sdata.images[keys.image_key])
    assert max(mask.shape) <= 2048
    assert scale > 1
    rc = np.floor(geom.centers_px[:, ::-1] / scale).astype(int)
    assert mask[rc[:, 0], rc[:, 1]].mean() > 0.95  # spots lie on tissue
    assert not mask[:20, :20].any()
    assert not mask[-20:, -20:].any()
    assert 0.05 < mask.mean() < 0.5
    grid = grid_positions(geom, pitch_um=50.0, mask=mask, mask_scale=scale)
    near = grid_positions(geom, pitch_um=50.0)
    assert len(grid) > 0
    assert len(near) > len(geom.spot_ids)
    g_rc = np.floor(grid[:, ::-1] / scale).astype(int)
    assert mask[g_rc[:, 0], g_rc[:, 1]].all()
