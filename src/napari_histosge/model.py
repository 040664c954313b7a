"""The HisToSGE attention models (``nn.Module`` only: no I/O, no training loop).

* :class:`FaithfulHisToSGE` reproduces the published architecture: patch features plus learned
  embeddings of integer grid coordinates, one transformer block (4 heads of 64) over groups of
  consecutive spots, and an MLP gene head with ReLU output.
* :class:`NeighbourAttention` is the improved model: each position attends, with several heads,
  to its nearest *measured* spots; attention logits combine a learned distance kernel in µm, the
  similarity of image features and a Fourier encoding of the offsets, and the attended values
  are the spots' expression in a low-rank gene space. A residual term maps the difference
  between the position's image features and its neighbours' to an expression difference, a
  direct term maps the position's own features, and a separate image-only head predicts where
  no measured spot is near.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FaithfulHisToSGE", "NeighbourAttention", "fourier_encoding"]


def fourier_encoding(offsets: torch.Tensor, n_freq: int) -> torch.Tensor:
    """Continuous encoding of ``(..., 2)`` offsets (in lattice pitches): sines and cosines.

    Examples
    --------
    >>> fourier_encoding(torch.zeros(3, 2), 4).shape
    torch.Size([3, 16])
    """
    freqs = (2.0 ** torch.arange(n_freq, dtype=offsets.dtype, device=offsets.device)) * (
        math.pi / 4
    )
    ang = offsets[..., None] * freqs  # (..., 2, F)
    enc = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
    return enc.flatten(-2)


class NeighbourAttention(nn.Module):
    """Multi-head attention from each position to its nearest measured spots.

    Parameters
    ----------
    feat_dim
        Width of the (reduced) image features.
    rank
        Width of the low-rank gene space the attended values live in.
    heads
        Attention heads.
    key_dim
        Width of each head's feature query/key.
    n_freq
        Frequencies of the offset encoding.

    Examples
    --------
    >>> m = NeighbourAttention(feat_dim=7, rank=5)
    >>> q = torch.zeros(4, 7); nf = torch.zeros(4, 8, 7); ny = torch.zeros(4, 8, 5)
    >>> m(q, nf, ny, torch.ones(4, 8, 2)).shape
    torch.Size([4, 5])
    """

    def __init__(self, feat_dim: int, rank: int, heads: int = 4, key_dim: int = 8, n_freq: int = 4):
        super().__init__()
        self.heads = heads
        self.key_dim = key_dim
        self.n_freq = n_freq
        self.log_bandwidth = nn.Parameter(torch.linspace(-0.7, 0.7, heads))
        self.query = nn.Linear(feat_dim, heads * key_dim, bias=False)
        self.key = nn.Linear(feat_dim, heads * key_dim, bias=False)
        self.offset_bias = nn.Linear(4 * n_freq, heads)
        self.head_mix = nn.Parameter(torch.zeros(heads))
        self.residual = nn.Linear(feat_dim, rank, bias=False)
        self.direct = nn.Linear(feat_dim, rank)
        self.image_head = nn.Sequential(nn.Linear(feat_dim, rank))
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.direct.weight)
        nn.init.zeros_(self.direct.bias)
        nn.init.zeros_(self.offset_bias.weight)
        nn.init.zeros_(self.offset_bias.bias)
        nn.init.normal_(self.query.weight, std=0.01)
        nn.init.normal_(self.key.weight, std=0.01)

    def attention(
        self,
        q_feat: torch.Tensor,
        n_feat: torch.Tensor,
        offsets: torch.Tensor,
        valid: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention weights ``(b, heads, k)`` of each position over its neighbours."""
        b, k, _ = n_feat.shape
        d2 = (offsets**2).sum(-1)  # (b, k) in squared pitches
        bw = torch.exp(self.log_bandwidth)  # (h,)
        logits = -d2[:, None, :] / (2 * bw[None, :, None] ** 2)
        qh = self.query(q_feat).view(b, self.heads, 1, self.key_dim)
        kh = self.key(n_feat).view(b, k, self.heads, self.key_dim).transpose(1, 2)
        logits = logits + (qh * kh).sum(-1) / math.sqrt(self.key_dim)
        logits = logits + self.offset_bias(fourier_encoding(offsets, self.n_freq)).permute(0, 2, 1)
        if valid is not None:
            logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(
        self,
        q_feat: torch.Tensor,
        n_feat: torch.Tensor,
        n_values: torch.Tensor,
        offsets: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Low-rank expression coefficients ``(b, rank)`` of the query positions.

        Parameters
        ----------
        q_feat
            ``(b, f)`` features of the positions.
        n_feat
            ``(b, k, f)`` features of their nearest measured spots.
        n_values
            ``(b, k, rank)`` expression coefficients of those spots.
        offsets
            ``(b, k, 2)`` neighbour minus position, in lattice pitches.
        valid
            ``(b, k)`` which neighbours exist.
        """
        smooth, context = self.smooth_and_context(q_feat, n_feat, n_values, offsets, valid)
        return smooth + self.residual(q_feat - context) + self.direct(q_feat)

    def smooth_and_context(
        self,
        q_feat: torch.Tensor,
        n_feat: torch.Tensor,
        n_values: torch.Tensor,
        offsets: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the attended neighbour expression ``(b, rank)`` and image features ``(b, f)``."""
        attn = self.attention(q_feat, n_feat, offsets, valid)
        mix = torch.softmax(self.head_mix, dim=0)
        weights = (attn * mix[None, :, None]).sum(1)
        return torch.einsum("bk,bkr->br", weights, n_values), torch.einsum(
            "bk,bkf->bf", weights, n_feat
        )

    def image_only(self, q_feat: torch.Tensor) -> torch.Tensor:
        """Coefficients from the position's image features alone (no measured spot near)."""
        return self.image_head(q_feat)


class FaithfulHisToSGE(nn.Module):
    """The published HisToSGE feature-learning model.

    Patch features are projected to ``dim``, learned embeddings of the integer grid coordinates
    are added, one pre-norm transformer block (``heads`` heads of ``dim_head``) mixes each group
    of consecutive spots, and an MLP gene head with ReLU output predicts all genes.

    Examples
    --------
    >>> m = FaithfulHisToSGE(feat_dim=10, n_genes=6)
    >>> m(torch.zeros(2, 50, 10), torch.zeros(2, 50, dtype=torch.long),
    ...   torch.zeros(2, 50, dtype=torch.long)).shape
    torch.Size([2, 50, 6])
    """

    def __init__(
        self,
        feat_dim: int,
        n_genes: int,
        *,
        dim: int = 256,
        heads: int = 4,
        dim_head: int = 64,
        depth: int = 1,
        n_pos: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.n_pos = n_pos
        self.patch_embedding = nn.Linear(feat_dim, dim)
        self.x_embed = nn.Embedding(n_pos, dim)
        self.y_embed = nn.Embedding(n_pos, dim)
        inner = heads * dim_head
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "norm1": nn.LayerNorm(dim),
                        "to_in": nn.Linear(dim, inner),
                        "attn": nn.MultiheadAttention(
                            inner, heads, dropout=dropout, batch_first=True
                        ),
                        "to_out": nn.Linear(inner, dim),
                        "norm2": nn.LayerNorm(dim),
                        "mlp": nn.Sequential(
                            nn.Linear(dim, 2 * dim),
                            nn.GELU(),
                            nn.Dropout(dropout),
                            nn.Linear(2 * dim, dim),
                        ),
                    }
                )
            )
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_genes), nn.ReLU())

    def forward(self, feats: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
        """Predict ``(b, n, genes)`` from features ``(b, n, f)`` and grid indices ``(b, n)``."""
        ix = ix.clamp(0, self.n_pos - 1)
        iy = iy.clamp(0, self.n_pos - 1)
        x = self.patch_embedding(feats) + self.x_embed(ix) + self.y_embed(iy)
        for blk in self.blocks:
            h = blk["to_in"](blk["norm1"](x))
            h, _ = blk["attn"](h, h, h, need_weights=False)
            x = x + blk["to_out"](h)
            x = x + blk["mlp"](blk["norm2"](x))
        return self.head(x)
