from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from napari_histosge.features import get_encoder
from napari_histosge.features._boxes import box_means, summed_area
from napari_histosge.features.histology import HistologyEncoder
from napari_histosge.features.vit import TimmEncoder, load_state_dict


@pytest.fixture(scope="module")
def tiny_state():
    import timm

    return timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict()


def _save(path, state):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def _tissue_and_glass(n=1, size=64):
    rng = np.random.default_rng(1)
    glass = np.full((n, size, size, 3), 243, np.uint8)
    tissue = np.empty((n, size, size, 3), np.uint8)
    tissue[...] = (225, 160, 200)  # eosin-pink stroma
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        for cy, cx in rng.uniform(4, size - 4, (12, 2)):
            tissue[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 9] = (90, 50, 140)  # nuclei
    return tissue, glass


def test_histology_is_default_deterministic_and_finite():
    enc = get_encoder()
    assert isinstance(enc, HistologyEncoder)
    assert enc.id == "histology@v2"
    assert enc.weights_sha256 is None
    assert enc.dim == HistologyEncoder.dim_per_scale == 22
    patches = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    a, b = enc.embed(patches), get_encoder().embed(patches)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, enc.dim)
    assert a.dtype == np.float32
    assert np.isfinite(a).all()


def test_histology_separates_tissue_from_glass():
    enc = get_encoder()
    tissue, glass = _tissue_and_glass()
    ft, fg = enc.embed(tissue)[0], enc.embed(glass)[0]
    ch = HistologyEncoder.channels
    assert ft[ch.index("tissue")] > 0.9
    assert fg[ch.index("tissue")] < 0.1
    assert ft[ch.index("h")] > 2 * fg[ch.index("h")]
    assert ft[ch.index("e")] > fg[ch.index("e")]
    assert ft[ch.index("blob_fine")] > fg[ch.index("blob_fine")]
    assert ft[ch.index("grad")] > fg[ch.index("grad")]
    lbp = [ch.index(k) for k in ch if k.startswith("lbp")]
    np.testing.assert_allclose(ft[lbp].sum(), 1.0, atol=1e-5)  # a histogram


def test_summed_area_pooling_is_exact():
    rng = np.random.default_rng(0)
    cells = rng.random((3, 20, 30)).astype(np.float32)
    sat = summed_area(cells)
    got = box_means(sat, np.array([2.0]), np.array([3.0]), np.array([12.0]), np.array([9.0]))
    np.testing.assert_allclose(got[0], cells[:, 3:9, 2:12].mean(axis=(1, 2)), rtol=1e-6)
    # Fractional boxes: compare with the mean over a 4x finer copy of the maps.
    fine = cells.repeat(4, axis=1).repeat(4, axis=2)
    got = box_means(sat, np.array([2.25]), np.array([3.5]), np.array([11.75]), np.array([9.0]))
    np.testing.assert_allclose(got[0], fine[:, 14:36, 9:47].mean(axis=(1, 2)), rtol=1e-6)
    # Outside the maps is left out of the mean.
    got = box_means(sat, np.array([-5.0]), np.array([-5.0]), np.array([2.0]), np.array([2.0]))
    np.testing.assert_allclose(got[0], cells[:, :2, :2].mean(axis=(1, 2)), rtol=1e-6)


def test_dense_features_reuse_maps_and_match_sizes():
    tissue, glass = _tissue_and_glass(size=256)
    img = np.concatenate([tissue[0], glass[0]], axis=1)  # left tissue, right glass
    image = xr.DataArray(np.moveaxis(img, 2, 0), dims=("c", "y", "x"))
    enc = HistologyEncoder()
    centres = np.array([[128.0, 128.0], [384.0, 128.0]])
    extent = (0.0, 0.0, 512.0, 256.0)
    f = enc.dense_features(image, centres, [64.0, 128.0], 1.0, extent=extent)
    assert f.shape == (2, 2 * enc.dim)
    assert np.isfinite(f).all()
    i = HistologyEncoder.channels.index("tissue")
    assert f[0, i] > 0.9
    assert f[1, i] < 0.1
    maps = enc._cache
    ticks = list(enc.iter_dense_maps(image, 1.0, (10.0, 10.0, 400.0, 200.0)))
    assert ticks == []
    assert enc._cache is maps
    g = enc.dense_features(image, centres, [128.0], 1.0, extent=extent)
    np.testing.assert_allclose(g, f[:, enc.dim :], rtol=1e-5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_weights_round_trip(tmp_path, tiny_state, suffix):
    path = tmp_path / f"w{suffix}"
    state = (
        tiny_state
        if suffix == ".safetensors"
        else {"state_dict": {f"module.{k}": v for k, v in tiny_state.items()}}
    )
    _save(path, state)
    enc = get_encoder("timm:test_vit", weights=str(path), device="cpu")
    assert isinstance(enc, TimmEncoder)
    assert enc.weights_sha256 is not None
    assert len(enc.weights_sha256) == 64
    assert enc.id == f"timm:test_vit@{enc.weights_sha256[:12]}"
    for k, v in enc.model.state_dict().items():
        torch.testing.assert_close(v, tiny_state[k])
    out = enc.embed(np.zeros((2, 40, 40, 3), np.uint8))
    assert out.shape == (2, enc.dim)
    assert out.dtype == np.float32
    again = get_encoder("timm:test_vit", weights=str(path), device="cpu")
    np.testing.assert_array_equal(again.embed(np.zeros((2, 40, 40, 3), np.uint8)), out)


def test_wrong_architecture_is_refused(tmp_path):
    import timm

    other = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    path = tmp_path / "resnet.safetensors"
    _save(path, other)
    with pytest.raises(ValueError, match="another architecture") as err:
        get_encoder("timm:test_vit", weights=str(path))
    msg = str(err.value)
    assert "resnet.safetensors" in msg
    assert "test_vit" in msg
    assert "missing keys" in msg


def test_shape_mismatch_is_summarised(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["pos_embed"] = torch.zeros(1, 3, 7)
    path = tmp_path / "bad.pth"
    _save(path, state)
    with pytest.raises(ValueError, match="1 shape mismatches") as err:
        get_encoder("timm:test_vit", weights=str(path))
    assert "pos_embed" in str(err.value)


def test_corrupt_missing_and_pickled_weights(tmp_path, tiny_state):
    path = tmp_path / "w.safetensors"
    _save(path, tiny_state)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="corrupt") as err:
        get_encoder("timm:test_vit", weights=str(path))
    assert "w.safetensors" in str(err.value)
    pth = tmp_path / "w.pth"
    _save(pth, tiny_state)
    pth.write_bytes(pth.read_bytes()[:-200])
    with pytest.raises(ValueError, match="corrupt"):
        get_encoder("timm:test_vit", weights=str(pth))
    with pytest.raises(ValueError, match="found nothing"):
        get_encoder("timm:test_vit", weights=str(tmp_path / "absent.pth"))
    with pytest.raises(ValueError, match="found nothing"):
        load_state_dict(tmp_path / "absent.pth")
    pickled = tmp_path / "obj.pth"
    torch.save({"x": object()}, pickled)  # refused by weights_only=True, never executed
    with pytest.raises(ValueError, match="corrupt or unsupported"):
        load_state_dict(pickled)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], notdict)
    with pytest.raises(ValueError, match="dict of tensors"):
        load_state_dict(notdict)


def test_prefix_is_stripped_only_when_shared(tmp_path):
    path = tmp_path / "p.pth"
    torch.save({"model.a": torch.zeros(1), "model.b": torch.ones(1)}, path)
    assert sorted(load_state_dict(path)) == ["a", "b"]
    torch.save({"model.a": torch.zeros(1), "b": torch.ones(1)}, path)
    assert sorted(load_state_dict(path)) == ["b", "model.a"]


def test_registry_errors_and_no_download_by_default():
    with pytest.raises(ValueError, match="encoder among"):
        get_encoder("vgg")
    with pytest.raises(ValueError, match="timm model name"):
        get_encoder("timm:not_a_model_xyz", weights="random")
    with pytest.raises(ValueError, match="no weights"):
        get_encoder("histology", weights="w.pth")
    with pytest.raises(ValueError, match="Expected weights for encoder `uni`.*'hub'"):
        get_encoder("uni")  # never downloads unless asked


def test_random_weights_device_and_bf16(monkeypatch):
    import napari_histosge.features.vit as vit

    monkeypatch.setattr(vit, "cpu_bf16_native", lambda: True)  # the bf16 path on any CPU
    enc = get_encoder("timm:test_vit", weights="random", device="cpu", bf16=True)
    assert enc.bf16
    assert enc.id == "timm:test_vit@random"
    assert enc.weights_sha256 == "random"
    assert enc.device == "cpu"
    assert enc.input_size == 160
    out = enc.embed(np.random.default_rng(0).integers(0, 255, (3, 100, 100, 3), dtype=np.uint8))
    assert out.shape == (3, enc.dim)
    assert np.isfinite(out).all()
    with pytest.raises(ValueError, match=r"\(n, h, w, 3\)"):
        enc.embed(np.zeros((2, 8, 8), np.uint8))


def test_bf16_on_a_cpu_without_bf16_units_runs_in_float32_and_says_so(monkeypatch):
    import napari_histosge.features.vit as vit

    assert isinstance(vit.cpu_bf16_native(), bool)  # torch's answer for this CPU
    monkeypatch.setattr(vit, "cpu_bf16_native", lambda: False)
    with pytest.warns(UserWarning, match="no bf16 units.*float32"):
        enc = get_encoder("timm:test_vit", weights="random", device="cpu", bf16=True)
    assert not enc.bf16
    out = enc.embed(np.random.default_rng(0).integers(0, 255, (2, 100, 100, 3), dtype=np.uint8))
    assert out.shape == (2, enc.dim)
    assert str(next(enc.model.parameters()).dtype) == "torch.float32"


def test_uni2h_architecture_settings():
    import timm

    from napari_histosge.features.vit import _uni2h_kwargs

    kwargs = _uni2h_kwargs()
    name = kwargs.pop("model_name")
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = timm.create_model(name, pretrained=False, **kwargs)
    assert model.num_features == 1536
    assert model.num_reg_tokens == 8
    assert model.patch_embed.patch_size == (14, 14)
    assert len(model.blocks) == 24


@pytest.mark.slow
def test_uni_architecture_random_weights():
    enc = get_encoder("uni", weights="random", device="cpu", bf16=True)
    assert enc.dim == 1024
    assert enc.input_size == 224
    assert enc.id == "uni@random"
    out = enc.embed(np.zeros((1, 224, 224, 3), np.uint8))
    assert out.shape == (1, 1024)
    assert np.isfinite(out).all()
