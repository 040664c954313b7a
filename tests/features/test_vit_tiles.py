"""ViT features pooled from the tokens of tissue tiles embedded once (features/vit_tiles.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_histosge import run_generator
from napari_histosge.features import extract_features, get_encoder
from napari_histosge.features.dense import iter_vit_token_maps, pool_maps
from napari_histosge.features.vit_tiles import token_tiles


@pytest.fixture
def slide():
    """A 320 x 320 textured image, 2 µm per pixel, and 16 spots of 20 px."""
    from spatialdata.models import Image2DModel
    from store_helpers import spots_sdata

    rng = np.random.default_rng(1)
    img = rng.integers(40, 230, size=(3, 320, 320), dtype=np.uint8)
    img[:, :, 160:] //= 2
    image = Image2DModel.parse(img, dims=("c", "y", "x"), chunks=(3, 128, 128))
    gx, gy = np.meshgrid(np.arange(70.0, 260, 40), np.arange(70.0, 260, 40))
    xy = np.c_[gx.ravel(), gy.ravel()][:16]
    sdata = spots_sdata(image, xy, 10.0, rng, 4)
    geom = SimpleNamespace(diameter_px=20.0, um_per_px=2.0, centers_px=xy)
    return sdata, geom, xy


def _counting(enc):
    """Count the tiles that go through the network."""
    seen = {"tiles": 0}
    forward = enc.model.forward_features

    def counted(x):
        seen["tiles"] += int(x.shape[0])
        return forward(x)

    enc.model.forward_features = counted
    return seen


def test_spots_4x_and_maps_share_one_pass_over_tiles(slide):
    sdata, geom, xy = slide
    enc = get_encoder("timm:test_vit", weights="random", device="cpu")
    seen = _counting(enc)
    spots = extract_features(sdata, xy, image_key="he", geometry=geom, encoder=enc)
    first = seen["tiles"]
    tiles = token_tiles(enc, sdata.images["he"], 2.0)
    assert first == len(tiles.tokens) > 0
    assert spots.key.endswith("_tiles")
    assert spots.meta["pooling"] == "tiles"
    assert spots.meta["token_um"] == pytest.approx(8.0)
    assert spots.features.shape == (16, enc.dim)  # default: one patch of 2 diameters
    # Positions between the spots lie under the same tiles: nothing new goes through the model.
    mid = (xy[:-1] + xy[1:]) / 2.0
    sub = extract_features(sdata, mid, image_key="he", geometry=geom, encoder=enc, cache_name="4x")
    assert seen["tiles"] == first
    assert np.isfinite(sub.features).all()
    # The dense maps over the spots' area reuse every tile and pool to the same features.
    box = (30.0, 30.0, 290.0, 290.0)
    maps = run_generator(iter_vit_token_maps(enc, sdata.images["he"], 2.0, box))
    assert len(tiles.tokens) > first
    assert seen["tiles"] == len(tiles.tokens)  # only the tiles not seen before were embedded
    np.testing.assert_allclose(pool_maps(maps, xy, 40.0), spots.features, rtol=1e-4, atol=1e-5)


def test_pooled_feature_is_the_mean_token_under_the_box(slide):
    sdata, geom, xy = slide
    enc = get_encoder("timm:test_vit", weights="random", device="cpu")
    tiles = token_tiles(enc, sdata.images["he"], 2.0)  # tokens of 4 px, tiles of 8 x 4 px
    centre = np.array([[64.0, 64.0]])  # a 16-px box: cells 14, 15 of tiles (1, 1)... (2, 2)
    keys = tiles.tiles_under(centre, 16.0)
    assert keys == [(1, 1), (1, 2), (2, 1), (2, 2)]
    from napari_histosge.features.vit_tiles import iter_fill_tiles

    run_generator(iter_fill_tiles(enc, tiles, keys))
    want = np.concatenate(
        [
            tiles.tokens[(1, 1)][6:, 6:].reshape(-1, enc.dim),
            tiles.tokens[(1, 2)][6:, :2].reshape(-1, enc.dim),
            tiles.tokens[(2, 1)][:2, 6:].reshape(-1, enc.dim),
            tiles.tokens[(2, 2)][:2, :2].reshape(-1, enc.dim),
        ]
    ).mean(0)
    np.testing.assert_allclose(tiles.pool(centre, [16.0])[0], want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="Expected the tiles under every position"):
        tiles.pool(np.array([[300.0, 300.0]]), [16.0])


def test_patch_pooling_stays_available_and_is_recorded(slide):
    sdata, geom, xy = slide
    enc = get_encoder("timm:test_vit", weights="random", device="cpu")
    seen = _counting(enc)
    old = extract_features(
        sdata, xy[:5], image_key="he", geometry=geom, encoder=enc, pooling="patch", cache=False
    )
    assert seen["tiles"] == 5  # one forward pass per position
    assert old.key == "X_timm-test_vit_random_p2"
    assert old.meta["pooling"] == "patch"
    new = extract_features(sdata, xy[:5], image_key="he", geometry=geom, encoder=enc, cache=False)
    assert new.features.shape == old.features.shape
    assert not np.allclose(new.features, old.features)
    with pytest.raises(ValueError, match="pooling"):
        extract_features(sdata, xy, image_key="he", geometry=geom, encoder=enc, pooling="mean")
    wrapped = SimpleNamespace(
        name="w",
        id="w@1",
        weights_sha256=None,
        dim=enc.dim,
        input_size=enc.input_size,
        embed=enc.embed,
    )
    with pytest.raises(ValueError, match="Expected a timm ViT encoder"):
        extract_features(sdata, xy, image_key="he", geometry=geom, encoder=wrapped, pooling="tiles")


def test_a_model_refuses_features_of_the_other_pooling():
    from napari_histosge.models.checkpoints import check_features

    model = SimpleNamespace(feature_meta={"encoder_id": "uni@abc", "dim": 8, "pooling": "patch"})
    check_features(model, {"encoder_id": "uni@abc", "dim": 8, "pooling": "patch"})
    with pytest.raises(ValueError, match="ViT pooling"):
        check_features(model, {"encoder_id": "uni@abc", "dim": 8, "pooling": "tiles"})


def test_spot_features_cached_under_another_tiling_are_recomputed(slide):
    import json

    from napari_histosge.features.cache import cache_element_name
    from napari_histosge.features.vit_tiles import TILES_VERSION

    sdata, geom, xy = slide
    enc = get_encoder("timm:test_vit", weights="random", device="cpu")
    first = extract_features(sdata, xy, image_key="he", geometry=geom, encoder=enc)
    assert first.meta["tiles_version"] == TILES_VERSION
    assert extract_features(sdata, xy, image_key="he", geometry=geom, encoder=enc).from_cache
    table = sdata.tables[cache_element_name("spots")]
    for field in ("tiles_version", "tile_context_tokens"):
        entries = dict(table.uns["histosge_features"])
        meta = json.loads(entries[first.key])
        if field == "tiles_version":
            del meta[field]  # written before the version was recorded
        else:
            meta[field] += 1  # another tiling
        entries[first.key] = json.dumps(meta)
        table.uns["histosge_features"] = entries
        again = extract_features(sdata, xy, image_key="he", geometry=geom, encoder=enc)
        assert not again.from_cache
        np.testing.assert_allclose(again.features, first.features, rtol=1e-5, atol=1e-6)
        table = sdata.tables[cache_element_name("spots")]
        assert json.loads(table.uns["histosge_features"][first.key]) == first.meta
