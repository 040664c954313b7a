from __future__ import annotations

import pytest
import torch

from napari_histosge.models.attention import NeighbourAttention, fourier_encoding
from napari_histosge.models.faithful import FaithfulHisToSGE


@pytest.mark.parametrize("width", [7, 64, 1024])
def test_both_models_take_any_feature_width(width):
    m = NeighbourAttention(feat_dim=width, rank=4)
    out = m(
        torch.zeros(3, width), torch.zeros(3, 8, width), torch.zeros(3, 8, 4), torch.ones(3, 8, 2)
    )
    assert out.shape == (3, 4)
    assert m.image_only(torch.zeros(3, width)).shape == (3, 4)
    f = FaithfulHisToSGE(feat_dim=width, n_genes=9)
    ix = torch.zeros(1, 50, dtype=torch.long)
    y = f(torch.zeros(1, 50, width), ix, ix)
    assert y.shape == (1, 50, 9)
    assert (y >= 0).all()


def test_fourier_encoding_separates_half_steps():
    enc = fourier_encoding(torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]]), 4)
    assert enc.shape == (3, 16)
    assert not torch.allclose(enc[0], enc[1])
    assert not torch.allclose(enc[1], enc[2])


def test_attention_weights_favour_near_spots_and_respect_mask():
    torch.manual_seed(0)
    m = NeighbourAttention(feat_dim=5, rank=2, heads=2)
    offsets = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]]])
    valid = torch.tensor([[True, True, False]])
    w = m.attention(torch.zeros(1, 5), torch.zeros(1, 3, 5), offsets, valid)
    assert w.shape == (1, 2, 3)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2))
    assert (w[..., 2] == 0).all()
    assert (w[..., 0] > w[..., 1]).all()


def test_smooth_is_weighted_mean_of_neighbour_values():
    m = NeighbourAttention(feat_dim=3, rank=2)
    values = torch.tensor([[[1.0, 2.0], [1.0, 2.0]]])
    smooth, context = m.smooth_and_context(
        torch.zeros(1, 3), torch.ones(1, 2, 3), values, torch.ones(1, 2, 2)
    )
    assert torch.allclose(smooth, torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(context, torch.ones(1, 3))
