from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import spatialdata as sd

from napari_histosge import Cancelled, Progress, run_generator
from napari_histosge.features import (
    FeatureSet,
    extract_features,
    get_encoder,
    iter_extract_features,
)
from napari_histosge.features.cache import cache_element_name
from napari_histosge.features.histology import HistologyEncoder
from napari_histosge.store import write_sdata

DIAMETER = 20.0


@pytest.fixture
def synthetic():
    """A 256 x 256 H&E-like image (tissue on the left, glass on the right) and 30 spots."""
    from spatialdata.models import Image2DModel
    from store_helpers import spots_sdata

    rng = np.random.default_rng(0)
    img = np.full((256, 256, 3), 242, np.uint8)
    img[:, :128] = (220, 150, 195)
    yy, xx = np.mgrid[:256, :128]
    for cy, cx in rng.uniform(0, [256, 128], (300, 2)):
        img[:, :128][(yy - cy) ** 2 + (xx - cx) ** 2 < 6] = (80, 45, 130)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    image = Image2DModel.parse(np.moveaxis(img, 2, 0), dims=("c", "y", "x"), chunks=(3, 64, 64))
    gx, gy = np.meshgrid(np.arange(24.0, 256, 40), np.arange(24.0, 256, 48))
    xy = np.c_[gx.ravel(), gy.ravel()][:30]
    sdata = spots_sdata(image, xy, DIAMETER / 2, rng, 5)
    geom = SimpleNamespace(diameter_px=DIAMETER, um_per_px=2.0, centers_px=xy)
    return sdata, geom, xy


class CountingEncoder:
    """Wraps an encoder and counts the patches it embeds."""

    def __init__(self, enc):
        self.enc, self.calls, self.patches = enc, 0, 0
        self.name, self.id, self.dim = enc.name, enc.id, enc.dim
        self.weights_sha256, self.input_size = enc.weights_sha256, enc.input_size

    def embed(self, patches):
        self.calls += 1
        self.patches += len(patches)
        return self.enc.embed(patches)


def test_histology_features_multiscale_and_tissue(synthetic):
    sdata, geom, xy = synthetic
    fs = extract_features(sdata, xy, image_key="he", geometry=geom, cache=False)
    assert isinstance(fs, FeatureSet)
    assert not fs.from_cache
    d = HistologyEncoder.dim_per_scale
    assert fs.features.shape == (30, 3 * d)
    assert fs.features.dtype == np.float32
    assert np.isfinite(fs.features).all()
    assert fs.meta["patch_sizes_spot"] == [1.0, 2.0, 4.0]
    assert fs.meta["patch_sizes_px"] == [20.0, 40.0, 80.0]
    assert fs.meta["patch_sizes_um"] == [40.0, 80.0, 160.0]
    assert fs.meta["encoder_id"] == "histology@v2"
    assert fs.meta["dim"] == 3 * d
    tissue = fs.features[:, HistologyEncoder.channels.index("tissue")]  # 1-spot patches
    left, right = xy[:, 0] < 100, xy[:, 0] > 156
    assert tissue[left].min() > 0.9
    assert tissue[right].max() < 0.1
    again = extract_features(sdata, xy, image_key="he", geometry=geom, cache=False)
    np.testing.assert_array_equal(again.features, fs.features)  # deterministic
    # Other sizes and units pool the same maps.
    px = extract_features(
        sdata, xy, image_key="he", geometry=geom, cache=False, patch_sizes=[80.0], patch_unit="um"
    )
    np.testing.assert_allclose(px.features, fs.features[:, d : 2 * d], rtol=1e-4, atol=1e-4)


def test_progress_and_cache_reuse_in_memory(synthetic):
    sdata, geom, xy = synthetic
    enc = get_encoder()
    steps = []
    fs = run_generator(
        iter_extract_features(sdata, xy, image_key="he", geometry=geom, encoder=enc, batch_size=8),
        progress=steps.append,
    )
    assert all(isinstance(p, Progress) and p.stage == "features" for p in steps)
    assert steps[-1].step == steps[-1].total == 4
    name = cache_element_name("spots")
    table = sdata.tables[name]
    assert table.n_obs == 30
    assert fs.key in table.obsm
    np.testing.assert_array_equal(table.obsm["spatial"], xy)
    assert fs.key in table.uns["histosge_features"]

    tiles = []
    enc.iter_dense_maps = lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed"))
    again = run_generator(
        iter_extract_features(sdata, xy, image_key="he", geometry=geom, encoder=enc),
        progress=tiles.append,
    )
    assert again.from_cache
    assert again.key == fs.key
    assert len(tiles) == 1
    np.testing.assert_array_equal(again.features, fs.features)


def test_subspot_positions_reuse_the_spot_maps(synthetic):
    sdata, geom, xy = synthetic
    enc = get_encoder()
    run_generator(iter_extract_features(sdata, xy, image_key="he", geometry=geom, encoder=enc))
    mid = (xy[:-1] + xy[1:]) / 2.0
    msgs = []
    sub = run_generator(
        iter_extract_features(
            sdata, mid, image_key="he", geometry=geom, encoder=enc, cache_name="4x"
        ),
        progress=msgs.append,
    )
    assert not any("tile" in p.message for p in msgs)  # no map recomputed
    assert sub.features.shape == (29, 3 * HistologyEncoder.dim_per_scale)
    assert cache_element_name("4x") in sdata.tables
    assert cache_element_name("spots") in sdata.tables


def test_vit_cache_counts_encoder_calls(synthetic):
    sdata, geom, xy = synthetic
    enc = CountingEncoder(get_encoder("timm:test_vit", weights="random", device="cpu"))
    xy = xy[:12]
    fs = extract_features(
        sdata, xy, image_key="he", geometry=geom, encoder=enc, patch_sizes=[1.0, 2.0], batch_size=8
    )
    assert fs.features.shape == (12, 2 * enc.dim)
    assert enc.patches == 24
    assert enc.calls == 4
    assert fs.meta["encoder_id"] == "timm:test_vit@random"
    assert fs.key == "X_timm-test_vit_random_p1-2"
    again = extract_features(
        sdata, xy, image_key="he", geometry=geom, encoder=enc, patch_sizes=[1.0, 2.0]
    )
    assert again.from_cache
    assert enc.calls == 4
    # Other positions invalidate the cache of that position set.
    moved = extract_features(
        sdata, xy[:4] + 1.0, image_key="he", geometry=geom, encoder=enc, patch_sizes=[1.0, 2.0]
    )
    assert not moved.from_cache
    assert enc.patches == 32


def test_cache_persists_in_a_zarr_store(synthetic, tmp_path):
    sdata, geom, xy = synthetic
    store = tmp_path / "s.zarr"
    write_sdata(sdata, store)
    backed = sd.read_zarr(store)
    a = extract_features(backed, xy, image_key="he", geometry=geom)
    b = extract_features(backed, xy, image_key="he", geometry=geom, patch_sizes=[2.0])
    reopened = sd.read_zarr(store)
    assert cache_element_name("spots") in reopened.tables
    ra = extract_features(reopened, xy, image_key="he", geometry=geom)
    rb = extract_features(reopened, xy, image_key="he", geometry=geom, patch_sizes=[2.0])
    assert ra.from_cache
    assert rb.from_cache
    np.testing.assert_array_equal(ra.features, a.features)
    np.testing.assert_array_equal(rb.features, b.features)
    assert ra.meta == a.meta


@pytest.mark.parametrize("encoder", ["histology", "timm:test_vit"])
def test_cancel_leaves_no_cache(synthetic, tmp_path, encoder):
    sdata, geom, xy = synthetic
    store = tmp_path / "s.zarr"
    write_sdata(sdata, store)
    backed = sd.read_zarr(store)
    weights = None if encoder == "histology" else "random"
    gen = iter_extract_features(
        backed,
        xy,
        image_key="he",
        geometry=geom,
        encoder=encoder,
        weights=weights,
        batch_size=8,
        cache_name="4x",
    )
    seen = []
    with pytest.raises(Cancelled):
        run_generator(gen, progress=seen.append, cancel=lambda: len(seen) >= 2)
    assert cache_element_name("4x") not in backed.tables
    assert cache_element_name("4x") not in sd.read_zarr(store).tables
    # Also when the caller closes the generator after the last batch.
    gen = iter_extract_features(
        backed,
        xy,
        image_key="he",
        geometry=geom,
        encoder=encoder,
        weights=weights,
        batch_size=64,
        cache_name="4x",
    )
    items = [next(gen) for _ in range(2 if encoder != "histology" else 3)]
    assert items[-1].step == items[-1].total
    gen.close()
    assert cache_element_name("4x") not in backed.tables


def test_input_errors(synthetic):
    sdata, geom, xy = synthetic
    with pytest.raises(KeyError, match="image_key"):
        extract_features(sdata, xy, image_key="nope", geometry=geom)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        extract_features(sdata, xy[:, :1], image_key="he", geometry=geom)
    with pytest.raises(ValueError, match="patch_unit"):
        extract_features(sdata, xy, image_key="he", geometry=geom, patch_unit="mm")
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(sdata, xy, image_key="he", geometry=geom, batch_size=0)


def test_sample_spots_and_4x(sample_sdata):
    from napari_histosge.geometry import spot_geometry, subspot_positions
    from napari_histosge.io import resolve_keys

    keys = resolve_keys(sample_sdata)
    geom = spot_geometry(sample_sdata, **keys.__dict__)
    enc = get_encoder()
    kw = {"image_key": keys.image_key, "geometry": geom, "encoder": enc}
    spots = extract_features(sample_sdata, geom.centers_px, **kw)
    sub = extract_features(
        sample_sdata,
        subspot_positions(geom.centers_px, lattice=geom.lattice),
        cache_name="4x",
        **kw,
    )
    assert spots.features.shape == (49, 66)
    assert np.isfinite(sub.features).all()
    assert spots.features.std(0).max() > 0  # not constant across spots
    assert extract_features(sample_sdata, geom.centers_px, **kw).from_cache


@pytest.mark.her2st
def test_her2st_tissue_versus_glass(her2st_c2_zarr):
    from napari_histosge.geometry import spot_geometry
    from napari_histosge.io import resolve_keys

    sdata = sd.read_zarr(her2st_c2_zarr)
    keys = resolve_keys(sdata)
    geom = spot_geometry(sdata, **keys.__dict__)
    corner = geom.centers_px.min(0) - 4 * geom.diameter_px  # glass beside the tissue
    xy = np.vstack([geom.centers_px, corner])
    fs = extract_features(sdata, xy, image_key=keys.image_key, geometry=geom, cache=False)
    assert fs.features.shape == (len(xy), 66)
    assert np.isfinite(fs.features).all()
    tissue = fs.features[:, HistologyEncoder.channels.index("tissue")]
    assert np.median(tissue[:-1]) > tissue[-1] + 0.3


def test_cache_lookup_checks_required_provenance(synthetic):
    from napari_histosge.features.cache import lookup, positions_digest, store

    sdata, _, xy = synthetic
    name, key, digest = cache_element_name("probe"), "X_probe_p1", positions_digest(xy)
    feats = np.arange(len(xy) * 2, dtype=np.float32).reshape(-1, 2)
    old = {"dim": 2, "positions_digest": digest, "patch_sizes_px": [20.0]}
    store(sdata, name, key, xy, feats, old)
    tiling = {"tiles_version": 2, "token_um": 8.0, "tile_context_tokens": 1}
    assert lookup(sdata, name, key, digest, [20.0]) is not None
    # An entry written before the tiling was recorded is a miss, not an error.
    assert lookup(sdata, name, key, digest, [20.0], require=tiling) is None
    store(sdata, name, key, xy, feats, {**old, **tiling, "token_um": 8.0 + 1e-12})
    hit = lookup(sdata, name, key, digest, [20.0], require=tiling)
    assert hit is not None
    np.testing.assert_array_equal(hit[0], feats)
    for field, other in (("tiles_version", 3), ("token_um", 4.0), ("tile_context_tokens", 0)):
        assert lookup(sdata, name, key, digest, [20.0], require={**tiling, field: other}) is None


def test_box_means_on_a_grid_equal_the_scattered_boxes():
    from napari_histosge.features._boxes import box_means, summed_area

    rng = np.random.default_rng(0)
    sat = summed_area(rng.random((3, 40, 50)))
    yy, xx = np.mgrid[0:20, 0:25]
    keep = rng.random(yy.size) < 0.9  # a grid with holes, as tissue superpixels are
    cx, cy = (0.3 + 2.1 * xx.ravel())[keep], (-0.4 + 2.1 * yy.ravel())[keep]
    for half in (0.7, 1.6, 4.0):  # boxes inside, straddling and past the map's edges
        box = (cx - half, cy - half, cx + half, cy + half)
        grid = box_means(sat, *box)
        # Fewer than 64 boxes at a time take the four-corner path.
        scattered = np.concatenate(
            [box_means(sat, *(b[i : i + 50] for b in box)) for i in range(0, len(cx), 50)]
        )
        np.testing.assert_allclose(grid, scattered, rtol=1e-10, atol=1e-12)
    direct = rng.random((1, 40, 50))
    mean = box_means(summed_area(direct), *(np.array([v] * 100) for v in (2.0, 3.0, 7.0, 9.0)))
    np.testing.assert_allclose(mean[0], direct[0, 3:9, 2:7].mean())
