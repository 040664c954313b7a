from __future__ import annotations

import numpy as np
import pytest

from napari_histosge.models import Reference
from napari_histosge.models.checkpoints import (
    check_features,
    check_genes,
    load_checkpoint,
    save_checkpoint,
)
from napari_histosge.train import (
    TrainConfig,
    fit,
    iter_fit,
)

META = {"encoder_id": "histology@v1", "patch_sizes_spot": [1.0, 2.0], "dim": 6}


def _data(n_side: int = 7, d: int = 6, g: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(n_side), np.arange(n_side))
    xy = np.c_[xs.ravel(), ys.ravel()].astype(float) * 100.0
    latent = np.sin(xy[:, :1] / 150.0) + np.cos(xy[:, 1:] / 200.0)
    feats = np.c_[latent + 0.1 * rng.normal(size=(len(xy), 1)), rng.normal(size=(len(xy), d - 1))]
    values = np.maximum(latent @ rng.random((1, g)) + 1 + 0.1 * rng.normal(size=(len(xy), g)), 0)
    return feats.astype(np.float32), xy, values.astype(np.float32), [f"g{i}" for i in range(g)]


@pytest.mark.parametrize("mode", ["improved", "faithful"])
def test_fit_predict_and_determinism(mode):
    feats, xy, values, genes = _data()
    cfg = TrainConfig(mode=mode, epochs=15, ensemble=2, seed=3)
    a = fit(feats, xy, values, genes=genes, config=cfg, feature_meta=META)
    b = fit(feats, xy, values, genes=genes, config=cfg, feature_meta=META)
    pa, pb = a.predict(feats, xy), b.predict(feats, xy)
    np.testing.assert_array_equal(pa, pb)
    assert pa.shape == values.shape
    assert (pa >= 0).all()
    c = fit(
        feats,
        xy,
        values,
        genes=genes,
        config=TrainConfig(mode=mode, epochs=15, ensemble=2, seed=4),
        feature_meta=META,
    )
    assert not np.array_equal(c.predict(feats, xy), pa)


def test_progress_per_epoch_and_cancel_keeps_best():
    feats, xy, values, genes = _data()
    gen = iter_fit(
        feats,
        xy,
        values,
        genes=genes,
        config=TrainConfig(epochs=50, ensemble=1, patience=100),
        should_stop=lambda: len(seen) >= 5,
    )
    seen = []
    try:
        while True:
            seen.append(next(gen))
    except StopIteration as stop:
        model = stop.value
    assert [p.info["epoch"] for p in seen] == [1, 2, 3, 4, 5]
    assert {"train_loss", "val_loss"} <= set(seen[0].info)
    assert model.info["cancelled"]
    assert len(model.states) == 1
    assert model.predict(feats, xy).shape == values.shape


def test_image_only_prediction_for_a_new_section():
    feats, xy, values, genes = _data()
    model = fit(feats, xy, values, genes=genes, config=TrainConfig(epochs=5, ensemble=1))
    far = xy + 1e6  # no measured spot anywhere near
    near = model.predict(feats, far, reference="train")
    alone = model.predict(feats, far, reference=None)
    np.testing.assert_allclose(near, alone, rtol=1e-5, atol=1e-6)
    r = np.corrcoef(alone[:, 0], values[:, 0])[0, 1]
    assert r > 0.5  # the image carries the latent signal


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    feats, xy, values, genes = _data()
    model = fit(
        feats, xy, values, genes=genes, config=TrainConfig(epochs=5, ensemble=2), feature_meta=META
    )
    path = save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == [
        ".histosge-output.json",
        "config.yaml",
        "model.json",
        "weights.safetensors",
    ]
    back = load_checkpoint(path)
    np.testing.assert_array_equal(back.predict(feats, xy), model.predict(feats, xy))
    assert back.genes == genes
    assert back.config == model.config
    check_features(back, META)
    with pytest.raises(ValueError, match="encoder"):
        check_features(back, {**META, "encoder_id": "uni@abc"})
    with pytest.raises(ValueError, match="patch sizes"):
        check_features(back, {**META, "patch_sizes_spot": [4.0]})
    with pytest.raises(ValueError, match="width 6"):
        back.predict(feats[:, :3], xy)
    with pytest.raises(ValueError, match="finite"):
        back.predict(np.full_like(feats, np.nan), xy)
    (path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(path)


def test_bad_training_input():
    feats, xy, values, genes = _data()
    with pytest.raises(ValueError, match="at least 10"):
        fit(feats[:5], xy[:5], values[:5], genes=genes)
    with pytest.raises(ValueError, match="finite features"):
        fit(np.full_like(feats, np.nan), xy, values, genes=genes)
    with pytest.raises(ValueError, match="gene names"):
        fit(feats, xy, values, genes=genes[:2])
    with pytest.raises(ValueError, match="mode"):
        TrainConfig(mode="other")  # type: ignore[arg-type]


def test_reference_set_and_gene_mismatch():
    feats, xy, values, genes = _data()
    model = fit(
        feats, xy, values, genes=genes, config=TrainConfig(epochs=5, ensemble=1), feature_meta=META
    )
    own = Reference(xy, feats, values)
    np.testing.assert_allclose(
        model.predict(feats, xy, reference=own), model.predict(feats, xy), atol=1e-5
    )
    moved = model.predict(feats, xy + 5000, reference=Reference(xy + 5000, feats, values))
    np.testing.assert_allclose(moved, model.predict(feats, xy), atol=1e-4)
    with pytest.raises(ValueError, match="model's gene order"):
        model.predict(feats, xy, reference=Reference(xy, feats, values[:, :2]))
    with pytest.raises(ValueError, match="reference"):
        model.predict(feats, xy, reference="other")  # type: ignore[arg-type]
    check_genes(model, [*genes, "extra"])
    with pytest.raises(ValueError, match="missing"):
        check_genes(model, genes[1:])


def test_training_never_attends_to_the_spot_itself():
    feats, xy, values, genes = _data()
    rng = np.random.default_rng(1)
    noise = rng.normal(size=values.shape).astype(np.float32)  # no spatial or image signal
    model = fit(
        feats, xy, noise, genes=genes, config=TrainConfig(epochs=20, ensemble=1, val_fraction=0.0)
    )
    pred = model.predict(feats, xy)
    r = [np.corrcoef(pred[:, j], noise[:, j])[0, 1] for j in range(noise.shape[1])]
    assert np.nanmean(r) < 0.6  # a copy of the training values would give r = 1


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    import safetensors.torch

    feats, xy, values, genes = _data()
    model = fit(feats, xy, values, genes=genes, config=TrainConfig(epochs=2, ensemble=1))
    path = save_checkpoint(model, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path, overwrite=True)
    # The old checkpoint is whole, and no temporary sibling is left behind.
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    load_checkpoint(path)
