"""The published HisToSGE model (``mode="faithful"``).

Patch features plus learned embeddings of integer grid coordinates, one transformer block
(4 heads of 64) over groups of consecutive spots, and an MLP gene head with ReLU output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .base import Arrays
from .config import Reference, TrainConfig

__all__ = ["FAITHFUL", "FaithfulHisToSGE"]


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


def _grid_index(xy: np.ndarray, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    rel = (xy - arrays["grid_origin"]) / float(arrays["pitch_um"][0])
    # Truncation to integers, as in the published code.
    return rel[:, 0].astype(np.int64), rel[:, 1].astype(np.int64)


def _groups(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(s, min(n, s + size)) for s in range(0, n, size)]


class _Faithful:
    """:class:`~napari_histosge.models.base.ModelKind` of the published model."""

    name = "faithful"

    def prepare(
        self,
        z: np.ndarray,
        xy: np.ndarray,
        y: np.ndarray,
        fit_idx: np.ndarray,
        arrays: Arrays,
        info: dict[str, Any],
        cfg: TrainConfig,
    ) -> np.ndarray:
        pitch = float(arrays["pitch_um"][0])
        arrays["grid_origin"] = xy.min(0) - 0.5 * pitch
        gx, gy = _grid_index(xy, arrays)
        info.update({"feat_dim": int(z.shape[1]), "n_pos": int(max(gx.max(), gy.max()) + 2)})
        return z.astype(np.float32)

    def new_module(self, cfg: TrainConfig, info: dict[str, Any]) -> nn.Module:
        return FaithfulHisToSGE(
            int(info["feat_dim"]), int(info["n_genes"]), heads=cfg.heads, n_pos=int(info["n_pos"])
        )

    def initialise(
        self,
        module: nn.Module,
        arrays: Arrays,
        info: dict[str, Any],
        z: np.ndarray,
        xy: np.ndarray,
        fit_idx: np.ndarray,
        cfg: TrainConfig,
    ) -> None:
        """Keep torch's random initialisation, as published."""

    def loss(
        self,
        module: nn.Module,
        arrays: Arrays,
        batch: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        device: str,
        cfg: TrainConfig,
        cache: dict[Any, Any],
    ) -> torch.Tensor:
        z, xy, y, query, _ = batch
        ix, iy = _grid_index(xy[query], arrays)
        losses = []
        for g in _groups(len(query), cfg.group_size):
            pred = module(
                torch.from_numpy(z[query][g])[None].to(device),
                torch.from_numpy(ix[g])[None].to(device),
                torch.from_numpy(iy[g])[None].to(device),
            )
            target = torch.from_numpy(y[query][g]).to(device)
            losses.append(((pred[0] - target) ** 2).mean() * len(g))
        return torch.stack(losses).sum() / len(query)

    def predict(
        self,
        module: nn.Module,
        arrays: Arrays,
        genes: int,
        z: np.ndarray,
        xy: np.ndarray,
        reference: Arrays | None,
        cfg: TrainConfig,
    ) -> np.ndarray:
        ix, iy = _grid_index(xy, arrays)
        out = np.empty((len(z), genes), dtype=np.float32)
        for g in _groups(len(z), cfg.group_size):
            pred = module(
                torch.from_numpy(z[g])[None],
                torch.from_numpy(ix[g])[None],
                torch.from_numpy(iy[g])[None],
            )
            out[g] = pred[0].numpy()
        return out

    def reference_arrays(self, arrays: Arrays, ref: Reference, z: np.ndarray) -> Arrays:
        """Return ``arrays``: the published model never attends to measured spots."""
        return dict(arrays)


#: The published model mode.
FAITHFUL = _Faithful()
