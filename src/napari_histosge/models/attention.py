"""The improved model (``mode="improved"``): neighbour attention in µm, low-rank gene space.

Each position attends, with several heads, to its nearest *measured* spots; attention logits
combine a learned distance kernel in µm, the similarity of image features and a Fourier encoding
of the offsets, and the attended values are the spots' expression in a low-rank gene space. A
residual term maps the difference between the position's image features and its neighbours' to
an expression difference, a direct term maps the position's own features, and a separate
image-only head predicts where no measured spot is near. Training starts from regression
kriging (the spatial smoother plus a ridge fit of its leave-one-out residual on the image).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import Arrays
from .config import Reference, TrainConfig
from .smoothing import smooth_lowrank

__all__ = ["IMPROVED", "NeighbourAttention", "fourier_encoding"]


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


# --------------------------------------------------------------------------------------------
# Neighbour batches


def _neighbours(
    ref_xy: np.ndarray, query_xy: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Find the ``k`` nearest reference spots (never ``exclude[i]``): indices, distances."""
    from scipy.spatial import cKDTree

    kk = min(len(ref_xy), k + (1 if exclude is not None else 0))
    dist, idx = cKDTree(ref_xy).query(query_xy, k=kk)
    dist = np.asarray(dist).reshape(len(query_xy), kk)
    idx = np.asarray(idx).reshape(len(query_xy), kk)
    if exclude is not None:
        # Move the excluded spot (if present) to the end, keeping distance order otherwise.
        order = np.argsort(idx == exclude[:, None], axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, 1)
        dist = np.take_along_axis(dist, order, 1)
        k = min(k, kk - 1) if kk <= k else k
    return idx[:, :k], dist[:, :k]


def _gate(dmin_pitch: np.ndarray) -> np.ndarray:
    """1 where a measured spot is within 2 pitches, 0 beyond 4, linear in between."""
    return np.clip((4.0 - dmin_pitch) / 2.0, 0.0, 1.0)


def _ridge(x: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Ridge regression of ``t`` on ``x`` with the penalty chosen by generalised CV."""
    from sklearn.linear_model import RidgeCV

    reg = RidgeCV(alphas=np.logspace(-1, 5, 31)).fit(x, t)
    return (
        float(reg.alpha_),
        reg.coef_.astype(np.float32),
        np.atleast_1d(reg.intercept_).astype(np.float32),
    )


def _batch(
    arrays: Arrays,
    q_z: np.ndarray,
    q_xy: np.ndarray,
    ref_idx: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
) -> tuple[torch.Tensor, ...]:
    ref_xy = arrays["ref_xy"][ref_idx]
    idx, _ = _neighbours(ref_xy, q_xy, k, exclude)
    pitch = float(arrays["pitch_um"][0])
    n_z = arrays["ref_z"][ref_idx][idx]
    n_c = arrays["ref_coef"][ref_idx][idx]
    offs = (ref_xy[idx] - q_xy[:, None, :]) / pitch
    return (
        torch.from_numpy(q_z),
        torch.from_numpy(n_z.astype(np.float32)),
        torch.from_numpy(n_c.astype(np.float32)),
        torch.from_numpy(offs.astype(np.float32)),
    )


def _loo_batch(
    arrays: Arrays, z: np.ndarray, xy: np.ndarray, query: np.ndarray, ref: np.ndarray, k: int
) -> tuple[torch.Tensor, ...]:
    """Neighbour batch of ``query`` spots among ``ref`` spots, never a spot itself."""
    pos_in_ref = {int(r): i for i, r in enumerate(ref)}
    exclude = np.array([pos_in_ref.get(int(q), -1) for q in query])
    return _batch(arrays, z[query], xy[query], ref, k, exclude)


# --------------------------------------------------------------------------------------------
# The mode


class _Improved:
    """:class:`~napari_histosge.models.base.ModelKind` of the improved model."""

    name = "improved"

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
        n = len(z)
        p = int(min(cfg.feature_dims, z.shape[1], max(1, len(fit_idx) - 2)))
        _, _, vt = np.linalg.svd(z[fit_idx] - z[fit_idx].mean(0), full_matrices=False)
        proj = vt[:p].T  # a rotation onto the top components: ridge penalties stay comparable
        arrays["feat_proj"] = proj.astype(np.float32)
        z = (z @ proj).astype(np.float32)
        slr = smooth_lowrank(xy, y)
        rank = int(cfg.rank or slr.rank)
        rank = max(1, min(rank, n - 1, y.shape[1]))
        gmean = y.mean(0)
        _, _, gvt = np.linalg.svd(y - gmean, full_matrices=False)
        basis = gvt[:rank].T.astype(np.float32)
        arrays["gene_mean"] = gmean.astype(np.float32)
        arrays["gene_basis"] = basis
        arrays["ref_xy"] = xy
        arrays["ref_z"] = z
        arrays["ref_coef"] = ((y - gmean) @ basis).astype(np.float32)
        arrays["ref_values"] = y
        alpha, w_img, b_img = _ridge(z[fit_idx], arrays["ref_coef"][fit_idx])
        arrays["init_ridge_w"] = w_img
        arrays["init_ridge_b"] = b_img
        info.update(
            {
                "feat_dim": int(z.shape[1]),
                "rank": rank,
                "smooth_bandwidth_um": float(slr.bandwidth),
                "ridge_alpha": alpha,
            }
        )
        return z

    def new_module(self, cfg: TrainConfig, info: dict[str, Any]) -> nn.Module:
        return NeighbourAttention(int(info["feat_dim"]), int(info["rank"]), heads=cfg.heads)

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
        """Start from regression kriging: the smoother's kernel, ridge fits of the residual."""
        with torch.no_grad():
            bw = info["smooth_bandwidth_um"] / float(arrays["pitch_um"][0])
            spread = torch.linspace(-0.2, 0.2, module.log_bandwidth.numel())
            module.log_bandwidth.copy_(float(np.log(bw)) + spread)
            w = torch.from_numpy(arrays["init_ridge_w"])
            module.residual.weight.copy_(w)
            module.image_head[0].weight.copy_(w)
            module.image_head[0].bias.copy_(torch.from_numpy(arrays["init_ridge_b"]))
        batch = _loo_batch(arrays, z, xy, fit_idx, fit_idx, cfg.n_neighbors)
        with torch.no_grad():
            smooth, context = module.smooth_and_context(*batch)
        q = batch[0].numpy()
        x = np.concatenate([q - context.numpy(), q], axis=1)
        target = arrays["ref_coef"][fit_idx] - smooth.numpy()
        alpha, w2, b2 = _ridge(x, target)
        p = q.shape[1]
        with torch.no_grad():
            module.residual.weight.copy_(torch.from_numpy(np.ascontiguousarray(w2[:, :p])))
            module.direct.weight.copy_(torch.from_numpy(np.ascontiguousarray(w2[:, p:])))
            module.direct.bias.copy_(torch.from_numpy(b2))
        info["residual_alpha"] = alpha

    def loss(
        self,
        module: nn.Module,
        arrays: Arrays,
        batch: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        device: str,
        cfg: TrainConfig,
        cache: dict[Any, Any],
    ) -> torch.Tensor:
        z, xy, y, query, ref = batch
        # Neighbours come from the fitting spots, never the query itself (leave-one-out).
        key = (query.tobytes(), ref.tobytes())
        if key not in cache:
            loo = _loo_batch(arrays, z, xy, query, ref, cfg.n_neighbors)
            cache[key] = tuple(t.to(device) for t in loo)
        tensors = cache[key]
        coef = module(*tensors)
        img = module.image_only(tensors[0])
        mean = torch.from_numpy(arrays["gene_mean"]).to(device)
        basis = torch.from_numpy(arrays["gene_basis"]).to(device)
        target = torch.from_numpy(y[query]).to(device)
        full = torch.relu(mean + coef @ basis.T)
        image = torch.relu(mean + img @ basis.T)
        return ((full - target) ** 2).mean() + cfg.image_loss_weight * (
            (image - target) ** 2
        ).mean()

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
        from scipy.spatial import cKDTree

        img = module.image_only(torch.from_numpy(z)).numpy()
        coef = img
        if reference is not None:
            ref = np.arange(len(reference["ref_xy"]))
            batch = _batch(reference, z, xy, ref, cfg.n_neighbors, None)
            full = module(*batch).numpy()
            dmin = np.asarray(cKDTree(reference["ref_xy"]).query(xy, k=1)[0]).reshape(-1)
            g = _gate(dmin / float(arrays["pitch_um"][0]))[:, None]
            coef = g * full + (1 - g) * img
        return arrays["gene_mean"] + coef @ arrays["gene_basis"].T

    def reference_arrays(self, arrays: Arrays, ref: Reference, z: np.ndarray) -> Arrays:
        out = dict(arrays)
        out["ref_xy"] = np.asarray(ref.xy_um, dtype=np.float64)
        out["ref_z"] = z
        vals = np.asarray(ref.values, dtype=np.float32)
        out["ref_coef"] = ((vals - arrays["gene_mean"]) @ arrays["gene_basis"]).astype(np.float32)
        return out


#: The improved model mode.
IMPROVED = _Improved()
