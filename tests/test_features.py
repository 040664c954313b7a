from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import spatialdata as sd
import xarray as xr

from napari_histosge import Cancelled, run_generator
from napari_histosge.features import extract_features, iter_extract_features
from napari_histosge.geometry import spot_geometry, subspot_positions
from napari_histosge.io import resolve_keys
from napari_histosge.patches import PAD_VALUE, read_patches


def test_patches_keep_rgb_and_pad_at_border():
    img = np.zeros((3, 100, 100), np.uint8)
    img[0, 40:60, 40:60] = 255  # a red square
    arr = xr.DataArray(img, dims=("c", "y", "x"))
    p = read_patches(arr, np.array([[50.0, 50.0], [0.0, 0.0]]), 20, out_px=20)
    assert (p[0, ..., 0] == 255).all() and (p[0, ..., 1:] == 0).all()
    assert (p[1, :10, :10] == PAD_VALUE).all()  # outside the image: white padding
    assert (p[1, 10:, 10:] == 0).all()


def test_patches_read_only_needed_chunks():
    touched: list[tuple[int, int]] = []

    def block(block_info=None):
        loc = block_info[None]["chunk-location"]
        touched.append(loc[1:])
        return np.full((3, 64, 64), 100, np.uint8)

    lazy = da.map_blocks(block, dtype=np.uint8, chunks=((3,), (64,) * 16, (64,) * 16))
    arr = xr.DataArray(lazy, dims=("c", "y", "x"))
    read_patches(arr, np.array([[100.0, 100.0]]), 32, out_px=16)
    assert 0 < len(set(touched)) <= 4  # a 1024 x 1024 image, only the chunks under one patch


def test_histology_features_on_sample_and_cache(sample_sdata, tmp_path):
    keys = resolve_keys(sample_sdata)
    geom = spot_geometry(sample_sdata, **keys.__dict__)
    kw = {"image_key": keys.image_key, "geometry": geom}
    fs = extract_features(sample_sdata, geom.centers_px, **kw)
    assert fs.features.shape == (49, 45) and not fs.from_cache
    assert fs.meta["encoder_id"] == "histology@v1" and fs.meta["patch_sizes_spot"] == [1.0, 2.0, 4.0]
    again = extract_features(sample_sdata, geom.centers_px, **kw)
    assert again.from_cache
    np.testing.assert_array_equal(again.features, fs.features)
    # Other patch sizes are another cache entry.
    other = extract_features(sample_sdata, geom.centers_px, patch_sizes=[2.0], **kw)
    assert not other.from_cache and other.features.shape == (49, 15)
    np.testing.assert_allclose(other.features, fs.features[:, 15:30], rtol=1e-5)
    # Persisted in a store on disk and reused after reopening.
    store = tmp_path / "s.zarr"
    sample_sdata.write(store)
    reopened = sd.read_zarr(store)
    assert extract_features(reopened, geom.centers_px, **kw).from_cache
    assert extract_features(sd.read_zarr(store), geom.centers_px, patch_sizes=[2.0], **kw).from_cache


def test_cancel_leaves_no_cache(sample_sdata):
    keys = resolve_keys(sample_sdata)
    geom = spot_geometry(sample_sdata, **keys.__dict__)
    xy = subspot_positions(geom.centers_px)
    gen = iter_extract_features(
        sample_sdata, xy, image_key=keys.image_key, geometry=geom, encoder="timm:test_vit",
        weights="random", batch_size=8, cache_name="4x",
    )
    with pytest.raises(Cancelled):
        run_generator(gen, cancel=lambda: True)
    assert "histosge_features_4x" not in sample_sdata.tables


def test_vit_features_and_reuse_for_subspots(sample_sdata):
    keys = resolve_keys(sample_sdata)
    geom = spot_geometry(sample_sdata, **keys.__dict__)
    fs = extract_features(
        sample_sdata, geom.centers_px[:5], image_key=keys.image_key, geometry=geom,
        encoder="timm:test_vit", weights="random", cache=False,
    )
    assert fs.features.shape[0] == 5 and fs.meta["encoder_id"] == "timm:test_vit@random"


def test_histology_on_her2st_distinguishes_tissue(her2st_c2_zarr):
    sdata = sd.read_zarr(her2st_c2_zarr)
    keys = resolve_keys(sdata)
    geom = spot_geometry(sdata, **keys.__dict__)
    corners = geom.centers_px.min(0) - 3 * geom.pitch_px
    fs = extract_features(sdata, np.vstack([geom.centers_px[:20], corners]), image_key=keys.image_key,
                          geometry=geom, cache=False, patch_sizes=[1.0])
    tissue = fs.features[:, list(__import__("napari_histosge.encoders", fromlist=["x"]).HistologyEncoder.channels).index("tissue")]
    assert tissue[:20].mean() > tissue[20] + 0.2
