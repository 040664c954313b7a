"""The npe2 manifest, the reader, the sample and the layer data tuples."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from napari_histosge._layers import contrast_limits, gene_layer, image_layer, spots_layer
from napari_histosge._reader import napari_get_reader
from napari_histosge.workflows.pipeline import Slide


def test_manifest_is_valid():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari_histosge"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_manifest_contributions():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-histosge")
    contrib = manifest.contributions
    assert [w.display_name for w in contrib.widgets] == ["HisToSGE"]
    assert contrib.readers[0].accepts_directories
    assert [s.key for s in contrib.sample_data] == ["mouse_brain"]


def test_reader_opens_a_zarr_store_with_spatialdata_metadata(sample_store):
    reader = napari_get_reader(str(sample_store))
    assert callable(reader)
    layers = reader(str(sample_store))
    (img, img_kw, img_kind), (pts, pts_kw, pts_kind) = layers
    assert (img_kind, pts_kind) == ("image", "points")
    assert img_kw["rgb"]
    first = img[0] if isinstance(img, list) else img
    assert first.shape[-1] == 3
    assert img_kw["metadata"]["name"] in img_kw["metadata"]["sdata"].images
    assert pts_kw["metadata"]["name"] in pts_kw["metadata"]["sdata"].shapes
    assert pts.shape[1] == 2


def test_reader_opens_a_visium_folder(visium_folder):
    reader = napari_get_reader(str(visium_folder))
    assert callable(reader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (_, img_kw, _), (pts, pts_kw, _) = reader(str(visium_folder))
    assert img_kw["rgb"]
    assert len(pts) == 12
    assert pts_kw["size"] > 0


def test_reader_declines_other_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path)) is None
    assert napari_get_reader([str(tmp_path), str(tmp_path)]) is None


def test_sample_data_through_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-histosge", "mouse_brain")
    kinds = sorted(type(layer).__name__ for layer in viewer.layers)
    assert kinds == ["Image", "Points"]
    image = next(layer for layer in viewer.layers if layer.rgb)
    points = next(layer for layer in viewer.layers if layer is not image)
    # The sample opens light on napari's thread: pixels and spots, no SpatialData object.
    assert image.name == "V1_Adult_Mouse_Brain_image"
    assert image.data.shape == (1717, 950, 3)
    assert len(points.data) == 49
    assert points.size[0] == pytest.approx(75.684, abs=1e-3)


def test_layer_tuples_place_spots_on_the_image(sample_sdata):
    slide = Slide.open(sample_sdata)
    data, kwargs, kind = image_layer(slide)
    levels = data if isinstance(data, list) else [data]
    h, w = levels[0].shape[:2]
    pts, pkw, _ = spots_layer(slide)
    # Points are (y, x) in the H&E's scale-0 pixels, at the true centres and diameter.
    np.testing.assert_allclose(pts[:, ::-1], slide.geometry.centers_px)
    assert pkw["size"] == pytest.approx(slide.geometry.diameter_px)
    assert pts.min() >= 0
    assert (pts.max(axis=0) < (h, w)).all()
    values = np.arange(len(pts), dtype=float)
    _, vkw, _ = spots_layer(slide, values=values, gene="Gfap")
    assert vkw["name"] == "Gfap (measured)"
    assert vkw["face_color"] == "value"
    np.testing.assert_array_equal(vkw["features"]["value"], values)


def test_gene_layer_places_the_map():
    from napari_histosge.maps import GeneMaps

    data = np.full((1, 3, 4), np.nan, dtype=np.float32)
    data[0, 1, 1:3] = [1.0, 3.0]
    maps = GeneMaps(data, ["Gfap"], 10.0, (5.0, 7.0))
    plane, kwargs, kind = gene_layer(maps, "Gfap")
    assert kind == "image"
    assert kwargs["scale"] == (10.0, 10.0)
    assert kwargs["translate"] == (7.0, 5.0)
    # Read over the H&E: transparent at the low limit, hues kept where maps overlap.
    assert kwargs["blending"] == "translucent"
    colors = kwargs["colormap"]["colors"]
    assert colors[0][3] == 0.0
    assert colors[-1][3] > 0.8
    assert kwargs["metadata"]["units"] == "log1p normalised counts"
    lo, hi = kwargs["contrast_limits"]
    assert 1.0 <= lo < hi <= 3.0


def test_contrast_limits_ignore_nan_and_constant_maps():
    assert contrast_limits(np.array([np.nan, np.nan])) == (0.0, 1.0)
    lo, hi = contrast_limits(np.array([2.0, 2.0, np.nan]))
    assert lo == 2.0
    assert hi > lo
