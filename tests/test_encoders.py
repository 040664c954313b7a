from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histosge.encoders import HistologyEncoder, get_encoder, load_state_dict


@pytest.fixture(scope="module")
def tiny_state():
    import timm

    return timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict()


def test_histology_encoder_is_default_and_deterministic():
    enc = get_encoder()
    assert isinstance(enc, HistologyEncoder) and enc.id == "histology@v1"
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    a, b = enc.embed(patches), enc.embed(patches)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, enc.dim) and np.isfinite(a).all()


def test_histology_separates_tissue_from_glass():
    enc = get_encoder()
    glass = np.full((1, 64, 64, 3), 245, np.uint8)
    tissue = np.zeros((1, 64, 64, 3), np.uint8)
    tissue[..., 0], tissue[..., 1], tissue[..., 2] = 120, 60, 150  # purple, haematoxylin-like
    i = HistologyEncoder.channels.index("tissue")
    assert enc.embed(tissue)[0, i] > enc.embed(glass)[0, i]
    h = HistologyEncoder.channels.index("h")
    assert enc.embed(tissue)[0, h] > enc.embed(glass)[0, h]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_round_trip(tmp_path, tiny_state, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_state.items()}}, path)
    enc = get_encoder("timm:test_vit", weights=str(path), device="cpu")
    assert enc.weights_sha256 is not None and len(enc.weights_sha256) == 64
    assert enc.id.startswith("timm:test_vit@")
    out = enc.embed(np.zeros((2, 40, 40, 3), np.uint8))
    assert out.shape == (2, enc.dim)
    for k, v in enc.model.state_dict().items():
        torch.testing.assert_close(v, tiny_state[k])


def test_wrong_architecture_is_refused(tmp_path, tiny_state):
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    path = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(path))
    with pytest.raises(ValueError, match="another architecture") as err:
        get_encoder("timm:test_vit", weights=str(path))
    assert "resnet.safetensors" in str(err.value) and "missing keys" in str(err.value)


def test_corrupt_and_missing_weights(tmp_path, tiny_state):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt"):
        get_encoder("timm:test_vit", weights=str(path))
    with pytest.raises(ValueError, match="found nothing"):
        load_state_dict(tmp_path / "absent.pth")
    pickled = tmp_path / "obj.pth"
    torch.save({"x": object()}, pickled)  # not loadable with weights_only=True
    with pytest.raises(ValueError, match="corrupt or unsupported"):
        load_state_dict(pickled)


def test_unknown_encoder_and_offline_hub():
    with pytest.raises(ValueError, match="encoder among"):
        get_encoder("vgg")
    with pytest.raises(ValueError, match="Expected a timm model name"):
        get_encoder("timm:not_a_model_xyz", weights="random")
    with pytest.raises(ValueError, match="no weights"):
        get_encoder("histology", weights="w.pth")


@pytest.mark.slow
def test_uni_architecture_random_weights():
    enc = get_encoder("uni", weights="random", device="cpu", bf16=True)
    assert enc.dim == 1024 and enc.input_size == 224 and enc.id == "uni@random"
    out = enc.embed(np.zeros((1, 224, 224, 3), np.uint8))
    assert out.shape == (1, 1024) and np.isfinite(out).all()
