"""The maps' coarser scales: the same values as SpatialData's own pyramid, computed faster."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histosge.maps import place_on_grid
from napari_histosge.workflows._pyramid import coarsen_mean, keep_mantissa, rebuild_pyramid


def _maps(shape: tuple[int, int, int], seed: int = 0, shared: bool = False) -> np.ndarray:
    """Random maps with NaN; ``shared``: at the same pixels in every channel, as a map's."""
    rng = np.random.default_rng(seed)
    a = (rng.random(shape) * 10).astype(np.float32)
    off = rng.random(shape) < 0.3
    a[np.broadcast_to(off[:1], shape) if shared else off] = np.nan
    a[:, :5, :7] = np.nan  # whole blocks off the grid
    return a


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 301, 205), (1, 9, 2)])
def test_coarsen_mean_equals_xarray_coarsen(shape: tuple[int, int, int], shared: bool) -> None:
    import dask.array as da
    import xarray as xr

    a = _maps(shape, shared=shared)
    for data in (a, da.from_array(a, chunks=(1, 64, 64))):
        ref = (
            xr.DataArray(data, dims=("c", "y", "x"))
            .coarsen(y=2, x=2, boundary="trim", side="right")
            .mean()
            .astype(np.float32)
            .values
        )
        got = coarsen_mean(a)
        assert np.array_equal(np.isnan(got), np.isnan(ref))
        if shape[2] > 2:  # same order of the sums (numpy's differs for a one-wide output)
            assert np.array_equal(got, ref, equal_nan=True)
        else:
            assert np.allclose(got, ref, rtol=1e-6, atol=0.0, equal_nan=True)


@pytest.mark.parametrize(
    ("shape", "chunks"), [((3, 301, 205), (1, 128, 128)), ((2, 40, 33), (2, 40, 33))]
)
def test_rebuild_pyramid_matches_spatialdata(
    shape: tuple[int, int, int], chunks: tuple[int, int, int]
) -> None:
    from spatialdata.models import Image2DModel

    a = _maps(shape, seed=1)

    def parse() -> object:
        return Image2DModel.parse(a, dims=("c", "y", "x"), scale_factors=[2, 2], chunks=chunks)

    ref, fast = parse(), rebuild_pyramid(parse())
    Image2DModel.validate(fast)
    for name in ("scale0", "scale1", "scale2"):
        x, y = ref[name]["image"], fast[name]["image"]
        assert x.data.chunks == y.data.chunks
        assert x.attrs == y.attrs
        assert np.array_equal(x.values, y.values, equal_nan=True)


def test_rebuild_pyramid_keeps_mantissa_bits() -> None:
    from spatialdata.models import Image2DModel

    a = keep_mantissa(_maps((2, 64, 64)), 10)
    tree = rebuild_pyramid(Image2DModel.parse(a, scale_factors=[2, 2]), bits=10)
    for name in ("scale1", "scale2"):
        level = tree[name]["image"].values
        assert not (level.view(np.uint32) & np.uint32(0x1FFF)).any()
    full = coarsen_mean(a)
    coarse = tree["scale1"]["image"].values
    ok = np.isfinite(full)
    assert np.array_equal(ok, np.isfinite(coarse))
    assert np.all(np.abs(coarse[ok] - full[ok]) <= full[ok] * 2.0**-10)


def test_rebuild_pyramid_from_source_blocks_with_several_genes_per_chunk() -> None:
    import dask.array as da
    from spatialdata.models import Image2DModel

    a = _maps((10, 301, 205), seed=3)
    source = da.from_array(a, chunks=(4, 301, 205))  # the lazy maps: 4 genes a block

    def parse() -> object:
        return Image2DModel.parse(
            source, dims=("c", "y", "x"), scale_factors=[2, 2], chunks=(1, 128, 128)
        )

    ref = parse()
    fast = rebuild_pyramid(parse(), source=source, chunk_bytes=4 * 2 * 128 * 128)
    Image2DModel.validate(fast)
    assert fast["scale0"]["image"].data.chunks == ref["scale0"]["image"].data.chunks
    assert fast["scale1"]["image"].data.chunks[0] == (2, 2, 2, 2, 2)  # divides the block of 4
    assert fast["scale2"]["image"].data.chunks[0] == (4, 4, 2)
    for name in ("scale0", "scale1", "scale2"):
        x, y = ref[name]["image"], fast[name]["image"]
        assert x.shape == y.shape
        assert x.attrs == y.attrs
        assert x.data.chunks[1:] == y.data.chunks[1:]
        assert np.array_equal(x.values, y.values, equal_nan=True)


def test_place_on_grid_runs_and_scatter() -> None:
    rng = np.random.default_rng(2)
    h, w = 30, 40
    mask = np.zeros((h, w), bool)
    mask[3:25, 5:33] = True
    mask[10:12, 8:20] = False
    rows, cols = np.nonzero(mask)  # sorted along the rows: copied as runs
    values = rng.random((4, len(rows))).astype(np.float32)
    for r, c in ((rows, cols), (rows[::-1], cols[::-1])):  # out of order: scattered
        v = values if r is rows else values[:, ::-1]
        out = np.full((4, h, w), np.nan, np.float32)
        place_on_grid(out, r, c, v)
        ref = np.full((4, h, w), np.nan, np.float32)
        ref[:, r, c] = v
        assert np.array_equal(out, ref, equal_nan=True)
