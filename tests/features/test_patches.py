from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from napari_histosge.features.patches import (
    PAD_VALUE,
    patch_sizes_px,
    read_patches,
    read_patches_multi,
    read_regions,
)
from napari_histosge.images import choose_level, image_levels, level_scales


def _image(arr: np.ndarray) -> xr.DataArray:
    return xr.DataArray(arr, dims=("c", "y", "x"))


def test_rgb_order_kept_and_square_centred():
    img = np.zeros((3, 100, 100), np.uint8)
    img[0, 40:60, 40:60] = 255  # a red square
    img[1, 0:20, 80:100] = 200  # a green corner
    p = read_patches(_image(img), np.array([[50.0, 50.0], [90.0, 10.0]]), 20, out_px=20)
    assert (p[0, ..., 0] == 255).all()
    assert (p[0, ..., 1:] == 0).all()
    assert (p[1, ..., 1] == 200).all()
    assert (p[1, ..., 0] == 0).all()
    assert (p[1, ..., 2] == 0).all()


def test_border_is_padded_white_not_dropped():
    img = _image(np.zeros((3, 100, 100), np.uint8))
    p = read_patches(img, np.array([[0.0, 0.0], [100.0, 50.0], [500.0, 500.0]]), 20, out_px=20)
    assert p.shape == (3, 20, 20, 3)
    assert (p[0, :10, :10] == PAD_VALUE).all()
    assert (p[0, 10:, 10:] == 0).all()
    assert (p[1, :, 10:] == PAD_VALUE).all()
    assert (p[1, :, :10] == 0).all()
    assert (p[2] == PAD_VALUE).all()  # entirely outside: all glass


def test_resize_is_antialiased():
    # A 1-pixel checkerboard averages to mid grey when shrunk, instead of aliasing.
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    img = _image(np.stack([board] * 3))
    p = read_patches(img, np.array([[32.0, 32.0]]), 64, out_px=8)
    assert abs(float(p.mean()) - 127.5) < 12
    assert p.std() < 20


def test_only_chunks_under_patches_are_read():
    touched: list[tuple[int, int]] = []

    def block(block_info=None):
        loc = block_info[None]["chunk-location"]
        if loc[1] > 4 or loc[2] > 4:
            raise AssertionError("a chunk far from every patch was computed")
        touched.append(loc[1:])
        return np.full((3, 64, 64), 100, np.uint8)

    lazy = da.map_blocks(block, dtype=np.uint8, chunks=((3,), (64,) * 64, (64,) * 64))
    img = _image(lazy)  # 4096 x 4096: computing it whole would raise
    centres = np.array([[100.0, 100.0], [110.0, 90.0], [200.0, 150.0]])
    p = read_patches(img, centres, 32, out_px=16)
    assert p.shape == (3, 16, 16, 3)
    assert (p == 100).all()
    assert 0 < len(touched) <= 6
    assert len(set(touched)) == len(touched)  # shared chunks are computed once per batch


def test_multiscale_reads_coarse_level_for_large_patches():
    import spatialdata as sd  # noqa: F401
    from spatialdata.models import Image2DModel

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (3, 512, 512), dtype=np.uint8)
    tree = Image2DModel.parse(arr, dims=("c", "y", "x"), scale_factors=[2, 2], chunks=(3, 128, 128))
    assert len(image_levels(tree)) == 3
    assert level_scales(tree) == [1.0, 2.0, 4.0]
    assert choose_level(tree, 256 / 64) == 2
    assert choose_level(tree, 1.5) == 0
    single = _image(arr)
    c = np.array([[256.0, 256.0], [30.0, 500.0]])
    a = read_patches(tree, c, 256, out_px=64).astype(float)
    b = read_patches(single, c, 256, out_px=64).astype(float)
    assert np.abs(a - b).mean() < 20  # same content, read from a 4x coarser level


def test_several_sizes_and_context():
    img = np.full((3, 200, 200), 255, np.uint8)
    img[:, 90:110, 90:110] = 0  # a black 20 px square in white
    small, large = read_patches_multi(_image(img), np.array([[100.0, 100.0]]), [20, 80], out_px=40)
    assert small.shape == large.shape == (1, 40, 40, 3)
    assert small[:, 3:-3, 3:-3].max() < 10  # enlarged: only pixels at the edge blend
    dark = (large < 128).mean()
    assert abs(dark - (20 / 80) ** 2) < 0.03


def test_read_regions_pads_and_converts():
    lv = _image(np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4))
    a, b = read_regions(lv, [(-1, -1, 2, 2), (2, 2, 6, 6)])
    assert a.shape == (3, 3, 3)
    assert (a[0] == PAD_VALUE).all()
    assert a[1, 1, 0] == 0
    assert b[0, 0, 1] == 16 + 10
    assert (b[2:, 2:] == PAD_VALUE).all()


def test_patch_size_units_and_errors():
    assert patch_sizes_px([1, 2], "spot", diameter_px=100.0, um_per_px=0.5) == [100.0, 200.0]
    assert patch_sizes_px([55], "um", diameter_px=100.0, um_per_px=0.5) == [110.0]
    assert patch_sizes_px([64], "px", diameter_px=100.0, um_per_px=0.5) == [64.0]
    with pytest.raises(ValueError, match="patch_unit"):
        patch_sizes_px([1], "mm", diameter_px=100.0, um_per_px=0.5)
    with pytest.raises(ValueError, match="positive patch sizes"):
        patch_sizes_px([0], "px", diameter_px=100.0, um_per_px=0.5)
    with pytest.raises(ValueError, match="positive patch size"):
        read_patches(_image(np.zeros((3, 8, 8), np.uint8)), np.zeros((1, 2)), -1)
