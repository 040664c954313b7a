"""Training: config, seeded fitting with progress and cancel, prediction, checkpoints."""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._json import json_default
from ._progress import Progress, run_generator

__all__ = [
    "Reference",
    "TrainConfig",
    "TrainedModel",
    "check_features",
    "check_genes",
    "fit",
    "iter_fit",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
]

CHECKPOINT_FORMAT = "napari-histosge-checkpoint/1"


@dataclass(frozen=True)
class TrainConfig:
    """Training options.

    Parameters
    ----------
    mode
        ``"improved"`` (neighbour attention in µm, low-rank output; the default) or
        ``"faithful"`` (the published HisToSGE settings).
    epochs
        Maximum epochs per ensemble member.
    lr
        Adam learning rate; ``None`` means 1e-3 (the published setting).
    weight_decay
        Adam weight decay.
    seed
        Seed for torch, numpy and random.
    val_fraction
        Fraction of the training spots used for validation and early stopping.
    patience
        Epochs without validation improvement before stopping.
    n_neighbors
        Measured spots each position attends to (``improved``).
    heads
        Attention heads.
    feature_dims
        Image features are reduced to this many principal components (``improved``).
    rank
        Width of the low-rank gene space; chosen by leave-one-out on the training spots when
        ``None``.
    ensemble
        Members averaged (different initialisations).
    image_loss_weight
        Weight of the image-only head's loss (``improved``).
    group_size
        Spots per attention group (``faithful``).
    device
        Torch device; CUDA when available, else CPU, when ``None``.
    cpu_threads
        Torch CPU threads while fitting (restored afterwards). One thread keeps the small
        batches fast and the results bit-identical; ``None`` leaves torch's setting.
    """

    mode: Literal["improved", "faithful"] = "improved"
    epochs: int = 100
    lr: float | None = None
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.15
    patience: int = 20
    n_neighbors: int = 8
    heads: int = 4
    feature_dims: int = 16
    rank: int | None = None
    ensemble: int = 3
    image_loss_weight: float = 0.5
    group_size: int = 50
    device: str | None = None
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.mode not in ("improved", "faithful"):
            raise ValueError(
                f"Expected `mode` to be one of ['improved', 'faithful'], found `{self.mode}`."
            )
        if self.epochs < 1:
            raise ValueError(f"Expected `epochs` >= 1, found `{self.epochs}`.")
        if not 0.0 <= self.val_fraction < 0.9:
            raise ValueError(f"Expected `val_fraction` in [0, 0.9), found `{self.val_fraction}`.")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"Expected a positive `lr`, found `{self.lr}`.")
        if self.ensemble < 1 or self.n_neighbors < 1 or self.heads < 1:
            raise ValueError("Expected `ensemble`, `n_neighbors` and `heads` to be >= 1.")

    @property
    def learning_rate(self) -> float:
        """The learning rate in use."""
        if self.lr is not None:
            return float(self.lr)
        return 1e-3


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random together.

    Examples
    --------
    >>> seed_everything(0)
    """
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _device(name: str | None) -> str:
    from .encoders import resolve_device

    dev = resolve_device(name)
    return "cpu" if dev == "mps" else dev


# --------------------------------------------------------------------------------------------
# The trained model


@dataclass(frozen=True)
class Reference:
    """Measured spots the improved model attends to at prediction time.

    Parameters
    ----------
    xy_um
        ``(n, 2)`` positions in µm, in the frame of the positions to predict.
    features
        ``(n, d)`` their image features (same encoder and patch sizes as in training).
    values
        ``(n, g)`` their measured expression in target space, genes in the model's order.

    Examples
    --------
    >>> ref = Reference(np.zeros((3, 2)), np.zeros((3, 4)), np.zeros((3, 2)))
    >>> ref.values.shape
    (3, 2)
    """

    xy_um: np.ndarray
    features: np.ndarray
    values: np.ndarray


@dataclass
class TrainedModel:
    """A fitted model with everything needed to predict and to check its inputs.

    ``arrays`` holds the preprocessing fitted on the training spots (feature scaling and
    projection, gene mean and low-rank basis) and the reference set the improved model attends
    to (the training spots' positions, features and expression).
    """

    config: TrainConfig
    genes: list[str]
    feature_meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    states: list[dict[str, Any]]
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    _modules: list[Any] | None = field(default=None, repr=False)

    def config_dict(self) -> dict[str, Any]:
        """Return the config as a plain dict, with the learning rate in use."""
        out = asdict(self.config)
        out["learning_rate"] = self.config.learning_rate
        return out

    # -- modules -------------------------------------------------------------------------
    def _build(self) -> list[Any]:
        if self._modules is None:
            mods = []
            for state in self.states:
                m = _new_module(self.config, self.info)
                m.load_state_dict(dict(state))
                m.eval()
                mods.append(m)
            self._modules = mods
        return self._modules

    # -- preprocessing -------------------------------------------------------------------
    def _reference_arrays(self, ref: Reference) -> dict[str, np.ndarray]:
        """Scaled features and low-rank coefficients of a user reference set."""
        xy = np.asarray(ref.xy_um, dtype=np.float64)
        feats = np.asarray(ref.features, dtype=np.float32)
        vals = np.asarray(ref.values, dtype=np.float32)
        width = int(self.arrays["feat_mu"].shape[0])
        n = len(xy)
        if (
            n < 1
            or xy.shape != (n, 2)
            or feats.shape != (n, width)
            or vals.shape != (n, len(self.genes))
        ):
            raise ValueError(
                f"Expected a reference of positions (n, 2), features (n, {width}) and values "
                f"(n, {len(self.genes)}) in the model's gene order, found {xy.shape}, {feats.shape} "
                f"and {vals.shape}."
            )
        if not (np.isfinite(feats).all() and np.isfinite(vals).all() and np.isfinite(xy).all()):
            raise ValueError("Expected a finite reference set, found NaN or inf values.")
        out = dict(self.arrays)
        out["ref_xy"] = xy
        if self.config.mode == "improved":
            out["ref_z"] = self._scale(feats)
            out["ref_coef"] = (
                (vals - self.arrays["gene_mean"]) @ self.arrays["gene_basis"]
            ).astype(np.float32)
        return out

    def _scale(self, features: np.ndarray) -> np.ndarray:
        a = self.arrays
        z = (np.asarray(features, dtype=np.float32) - a["feat_mu"]) / a["feat_sd"]
        if "feat_proj" in a:
            z = z @ a["feat_proj"]
        return z.astype(np.float32)

    def predict(
        self,
        features: np.ndarray,
        xy_um: np.ndarray,
        *,
        reference: Literal["train"] | Reference | None = "train",
    ) -> np.ndarray:
        """Predict expression (target space) at positions with these features.

        Parameters
        ----------
        features
            ``(m, d)`` features from the same encoder and patch sizes as in training.
        xy_um
            ``(m, 2)`` positions in µm, in the same frame as the training spots.
        reference
            ``"train"``: attend to the measured training spots (same section). A
            :class:`Reference`: attend to these measured spots instead (for example another
            section's). ``None``: image features and positions alone, for a section without
            measured spots. The ``faithful`` model never attends to measured spots.

        Returns
        -------
        ``(m, genes)`` float32, non-negative.
        """
        import torch

        feats = np.asarray(features, dtype=np.float32)
        xy = np.asarray(xy_um, dtype=np.float64)
        expected = int(self.arrays["feat_mu"].shape[0])
        if feats.ndim != 2 or feats.shape[1] != expected:
            raise ValueError(
                f"Expected features of width {expected} ({self.feature_meta.get('encoder_id')}), "
                f"found shape {feats.shape}."
            )
        if not np.isfinite(feats).all():
            raise ValueError("Expected finite features, found NaN or inf values.")
        if xy.shape != (len(feats), 2):
            raise ValueError(f"Expected positions of shape ({len(feats)}, 2), found {xy.shape}.")
        if isinstance(reference, Reference):
            reference = self._reference_arrays(reference)
        elif reference not in ("train", None):
            raise ValueError(
                f"Expected `reference` to be 'train', None or a Reference, found `{reference!r}`."
            )
        mods = self._build()
        with torch.inference_mode():
            if self.config.mode == "faithful":
                out = np.mean([_faithful_predict(m, self, feats, xy) for m in mods], axis=0)
            else:
                out = np.mean(
                    [_improved_predict(m, self, feats, xy, reference) for m in mods], axis=0
                )
        return np.maximum(out, 0.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Improved model: data and prediction


def _new_module(config: TrainConfig, info: dict[str, Any]) -> Any:
    from .model import FaithfulHisToSGE, NeighbourAttention

    if config.mode == "faithful":
        return FaithfulHisToSGE(
            int(info["feat_dim"]),
            int(info["n_genes"]),
            heads=config.heads,
            n_pos=int(info["n_pos"]),
        )
    return NeighbourAttention(int(info["feat_dim"]), int(info["rank"]), heads=config.heads)


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


def _improved_batch(
    model: TrainedModel | None,
    arrays: dict[str, np.ndarray],
    q_z: np.ndarray,
    q_xy: np.ndarray,
    ref_idx: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
) -> tuple[Any, ...]:
    import torch

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


def _gate(dmin_pitch: np.ndarray) -> np.ndarray:
    """1 where a measured spot is within 2 pitches, 0 beyond 4, linear in between."""
    return np.clip((4.0 - dmin_pitch) / 2.0, 0.0, 1.0)


def _improved_predict(
    module: Any,
    model: TrainedModel,
    feats: np.ndarray,
    xy: np.ndarray,
    reference: str | dict[str, np.ndarray] | None,
) -> np.ndarray:
    import torch
    from scipy.spatial import cKDTree

    a = model.arrays
    z = model._scale(feats)
    img = module.image_only(torch.from_numpy(z)).numpy()
    coef = img
    if reference is not None:
        r = a if isinstance(reference, str) else reference
        ref = np.arange(len(r["ref_xy"]))
        batch = _improved_batch(model, r, z, xy, ref, model.config.n_neighbors, None)
        full = module(*batch).numpy()
        dmin = np.asarray(cKDTree(r["ref_xy"]).query(xy, k=1)[0]).reshape(-1)
        g = _gate(dmin / float(a["pitch_um"][0]))[:, None]
        coef = g * full + (1 - g) * img
    return a["gene_mean"] + coef @ a["gene_basis"].T


# --------------------------------------------------------------------------------------------
# Faithful model: grid indices and groups


def _grid_index(xy: np.ndarray, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    rel = (xy - arrays["grid_origin"]) / float(arrays["pitch_um"][0])
    # Truncation to integers, as in the published code.
    return rel[:, 0].astype(np.int64), rel[:, 1].astype(np.int64)


def _groups(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(s, min(n, s + size)) for s in range(0, n, size)]


def _faithful_predict(
    module: Any, model: TrainedModel, feats: np.ndarray, xy: np.ndarray
) -> np.ndarray:
    import torch

    a = model.arrays
    z = model._scale(feats)
    ix, iy = _grid_index(xy, a)
    out = np.empty((len(z), len(model.genes)), dtype=np.float32)
    for g in _groups(len(z), model.config.group_size):
        pred = module(
            torch.from_numpy(z[g])[None],
            torch.from_numpy(ix[g])[None],
            torch.from_numpy(iy[g])[None],
        )
        out[g] = pred[0].numpy()
    return out


# --------------------------------------------------------------------------------------------
# Fitting


def iter_fit(
    features: np.ndarray,
    xy_um: np.ndarray,
    values: np.ndarray,
    *,
    genes: Sequence[str],
    config: TrainConfig | None = None,
    feature_meta: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Progress, None, TrainedModel]:
    """Fit the model on measured spots, yielding progress once per epoch.

    Each epoch yields ``Progress("train", step, total, info={"epoch", "train_loss",
    "val_loss", "member"})``. ``should_stop`` is polled between epochs: when it returns
    ``True`` training ends and the best weights so far are kept.

    Parameters
    ----------
    features
        ``(n, d)`` image features of the training spots.
    xy_um
        ``(n, 2)`` spot positions in µm.
    values
        ``(n, g)`` expression targets.
    genes
        The ``g`` gene names.
    config
        Training options.
    feature_meta
        Provenance of the features (encoder id, weights checksum, patch sizes).
    should_stop
        Cancellation check.

    Returns
    -------
    The trained model.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> xy = np.stack(np.meshgrid(np.arange(6.0), np.arange(5.0)), -1).reshape(-1, 2) * 100
    >>> m = fit(rng.random((30, 4)), xy, rng.random((30, 3)), genes=list("abc"),
    ...         config=TrainConfig(epochs=3, ensemble=1))
    >>> m.predict(rng.random((2, 4)), xy[:2]).shape
    (2, 3)
    """
    import torch

    from .evaluate import smooth_lowrank
    from .geometry import lattice_pitch

    cfg = config or TrainConfig()
    feats = np.asarray(features, dtype=np.float32)
    xy = np.asarray(xy_um, dtype=np.float64)
    y = np.asarray(values, dtype=np.float32)
    n = len(feats)
    if n < 10:
        raise ValueError(f"Expected at least 10 training spots, found {n}.")
    if xy.shape != (n, 2) or y.shape[0] != n or y.ndim != 2:
        raise ValueError(
            f"Expected features (n, d), positions (n, 2) and values (n, g) for one n, found "
            f"{feats.shape}, {xy.shape} and {y.shape}."
        )
    if y.shape[1] != len(genes):
        raise ValueError(f"Expected {y.shape[1]} gene names, found {len(genes)}.")
    if not np.isfinite(feats).all():
        raise ValueError("Expected finite features, found NaN or inf values.")
    if not np.isfinite(y).all():
        raise ValueError("Expected finite expression values, found NaN or inf.")

    seed_everything(cfg.seed)
    device = _device(cfg.device)
    det_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        arrays: dict[str, np.ndarray] = {}
        mu = feats.mean(0)
        sd = feats.std(0)
        sd = np.where(sd < 1e-6, 1.0, sd)
        arrays["feat_mu"] = mu.astype(np.float32)
        arrays["feat_sd"] = sd.astype(np.float32)
        z = (feats - mu) / sd
        pitch = lattice_pitch(xy)
        arrays["pitch_um"] = np.array([pitch])
        info: dict[str, Any] = {"n_genes": int(y.shape[1]), "n_train": n}
        rng = np.random.default_rng(cfg.seed)
        n_val = int(round(n * cfg.val_fraction))
        perm = rng.permutation(n)
        val = np.sort(perm[:n_val])
        fit_idx = np.sort(perm[n_val:])

        if cfg.mode == "improved":
            p = int(min(cfg.feature_dims, z.shape[1], max(1, len(fit_idx) - 2)))
            _, s_, vt = np.linalg.svd(z[fit_idx] - z[fit_idx].mean(0), full_matrices=False)
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
            arrays["ref_features"] = feats
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
        else:
            z = z.astype(np.float32)
            arrays["grid_origin"] = xy.min(0) - 0.5 * pitch
            gx, gy = _grid_index(xy, arrays)
            info.update({"feat_dim": int(z.shape[1]), "n_pos": int(max(gx.max(), gy.max()) + 2)})

        shell = TrainedModel(cfg, list(genes), dict(feature_meta or {}), arrays, [], [], info)
        states: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        total = cfg.epochs * cfg.ensemble
        stopped = False
        for member in range(cfg.ensemble):
            torch.manual_seed(cfg.seed * 1000 + member)
            module = _new_module(cfg, info)
            if cfg.mode == "improved":
                _init_improved(module, arrays, info)
                _init_residual(module, shell, z, xy, fit_idx, cfg)
            module = module.to(device)
            opt = torch.optim.Adam(
                module.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
            )
            base_step = _improved_step if cfg.mode == "improved" else _faithful_step
            cache: dict[Any, Any] = {}

            def step_fn(*args: Any, _base: Any = base_step, _cache: dict[Any, Any] = cache) -> Any:
                return _base(*args, cache=_cache)

            module.eval()
            with torch.no_grad():
                v0 = float(
                    step_fn(
                        module, shell, z, xy, y, val if len(val) else fit_idx, fit_idx, device, cfg
                    )
                )
            best = (v0, {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}, 0)
            since = 0
            for epoch in range(1, cfg.epochs + 1):
                module.train()
                opt.zero_grad()
                loss = step_fn(module, shell, z, xy, y, fit_idx, fit_idx, device, cfg)
                loss.backward()
                opt.step()
                module.eval()
                with torch.no_grad():
                    eval_idx = val if len(val) else fit_idx
                    vloss = float(step_fn(module, shell, z, xy, y, eval_idx, fit_idx, device, cfg))
                tloss = float(loss.detach())
                record = {"member": member, "epoch": epoch, "train_loss": tloss, "val_loss": vloss}
                history.append(record)
                if vloss < best[0] - 1e-7:
                    best = (
                        vloss,
                        {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
                        epoch,
                    )
                    since = 0
                else:
                    since += 1
                yield Progress(
                    "train",
                    member * cfg.epochs + epoch,
                    total,
                    f"member {member + 1}/{cfg.ensemble}, epoch {epoch}",
                    dict(record),
                )
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                if since >= cfg.patience:
                    break
            states.append(best[1])
            info.setdefault("best_epochs", []).append(best[2])
            if stopped:
                break
        info["cancelled"] = stopped
        shell.states = states
        shell.history = history
        shell._modules = None
        return shell
    finally:
        torch.use_deterministic_algorithms(det_before)
        torch.set_num_threads(threads_before)


def _ridge(x: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Ridge regression of ``t`` on ``x`` with the penalty chosen by generalised CV."""
    from sklearn.linear_model import RidgeCV

    reg = RidgeCV(alphas=np.logspace(-1, 5, 31)).fit(x, t)
    return (
        float(reg.alpha_),
        reg.coef_.astype(np.float32),
        np.atleast_1d(reg.intercept_).astype(np.float32),
    )


def _init_improved(module: Any, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    """Start from regression kriging: distance kernel of the smoother, ridge image terms."""
    import torch

    with torch.no_grad():
        bw = info["smooth_bandwidth_um"] / float(arrays["pitch_um"][0])
        spread = torch.linspace(-0.2, 0.2, module.log_bandwidth.numel())
        module.log_bandwidth.copy_(float(np.log(bw)) + spread)
        w = torch.from_numpy(arrays["init_ridge_w"])
        module.residual.weight.copy_(w)
        module.image_head[0].weight.copy_(w)
        module.image_head[0].bias.copy_(torch.from_numpy(arrays["init_ridge_b"]))


def _loo_batch(
    model: TrainedModel,
    z: np.ndarray,
    xy: np.ndarray,
    query: np.ndarray,
    ref: np.ndarray,
    cfg: TrainConfig,
) -> tuple[Any, ...]:
    """Neighbour batch of ``query`` spots among ``ref`` spots, never a spot itself."""
    pos_in_ref = {int(r): i for i, r in enumerate(ref)}
    exclude = np.array([pos_in_ref.get(int(q), -1) for q in query])
    return _improved_batch(model, model.arrays, z[query], xy[query], ref, cfg.n_neighbors, exclude)


def _init_residual(
    module: Any,
    model: TrainedModel,
    z: np.ndarray,
    xy: np.ndarray,
    fit_idx: np.ndarray,
    cfg: TrainConfig,
) -> None:
    """Regression kriging: ridge of the leave-one-out smoothing residual on image features."""
    import torch

    batch = _loo_batch(model, z, xy, fit_idx, fit_idx, cfg)
    with torch.no_grad():
        smooth, context = module.smooth_and_context(*batch)
    q = batch[0].numpy()
    x = np.concatenate([q - context.numpy(), q], axis=1)
    target = model.arrays["ref_coef"][fit_idx] - smooth.numpy()
    alpha, w, b = _ridge(x, target)
    p = q.shape[1]
    with torch.no_grad():
        module.residual.weight.copy_(torch.from_numpy(np.ascontiguousarray(w[:, :p])))
        module.direct.weight.copy_(torch.from_numpy(np.ascontiguousarray(w[:, p:])))
        module.direct.bias.copy_(torch.from_numpy(b))
    model.info["residual_alpha"] = alpha


def _improved_step(
    module: Any,
    model: TrainedModel,
    z: np.ndarray,
    xy: np.ndarray,
    y: np.ndarray,
    query: np.ndarray,
    ref: np.ndarray,
    device: str,
    cfg: TrainConfig,
    cache: dict[Any, Any] | None = None,
) -> Any:
    import torch

    a = model.arrays
    # Neighbours come from the fitting spots, never the query itself (leave-one-out).
    key = (query.tobytes(), ref.tobytes())
    if cache is not None and key in cache:
        batch = cache[key]
    else:
        batch = tuple(t.to(device) for t in _loo_batch(model, z, xy, query, ref, cfg))
        if cache is not None:
            cache[key] = batch
    coef = module(*batch)
    img = module.image_only(batch[0])
    mean = torch.from_numpy(a["gene_mean"]).to(device)
    basis = torch.from_numpy(a["gene_basis"]).to(device)
    target = torch.from_numpy(y[query]).to(device)
    full = torch.relu(mean + coef @ basis.T)
    image = torch.relu(mean + img @ basis.T)
    return ((full - target) ** 2).mean() + cfg.image_loss_weight * ((image - target) ** 2).mean()


def _faithful_step(
    module: Any,
    model: TrainedModel,
    z: np.ndarray,
    xy: np.ndarray,
    y: np.ndarray,
    query: np.ndarray,
    ref: np.ndarray,
    device: str,
    cfg: TrainConfig,
    cache: dict[Any, Any] | None = None,
) -> Any:
    import torch

    ix, iy = _grid_index(xy[query], model.arrays)
    losses = []
    for g in _groups(len(query), cfg.group_size):
        pred = module(
            torch.from_numpy(z[query][g])[None].to(device),
            torch.from_numpy(ix[g])[None].to(device),
            torch.from_numpy(iy[g])[None].to(device),
        )
        losses.append(((pred[0] - torch.from_numpy(y[query][g]).to(device)) ** 2).mean() * len(g))
    return torch.stack(losses).sum() / len(query)


def fit(
    features: np.ndarray,
    xy_um: np.ndarray,
    values: np.ndarray,
    **kwargs: Any,
) -> TrainedModel:
    """Run :func:`iter_fit` to the end.

    Examples
    --------
    >>> model = fit(features, xy_um, values, genes=genes)  # doctest: +SKIP
    """
    return run_generator(iter_fit(features, xy_um, values, **kwargs))


# --------------------------------------------------------------------------------------------
# Checkpoints


def check_genes(model: TrainedModel, genes: Sequence[str]) -> None:
    """Raise ``ValueError`` when a table lacks genes the model predicts.

    Applying a checkpoint to a table measured with another gene set cannot be scored or used
    as a reference; the message names the missing genes.

    Examples
    --------
    >>> check_genes(model, adata.var_names)  # doctest: +SKIP
    """
    have = {str(g) for g in genes}
    missing = [g for g in model.genes if g not in have]
    if missing:
        raise ValueError(
            f"Expected the table to hold the model's {len(model.genes)} genes, found {len(missing)} "
            f"missing, e.g. {missing[:5]}; train a model on this table's genes or pass `genes=` "
            "with genes both share."
        )


def check_features(model: TrainedModel, feature_meta: dict[str, Any]) -> None:
    """Raise ``ValueError`` when features do not come from the model's encoder and patch sizes.

    Examples
    --------
    >>> check_features(model, feats.meta)  # doctest: +SKIP
    """
    want = model.feature_meta
    for key, label in (
        ("encoder_id", "encoder"),
        ("patch_sizes_spot", "patch sizes (spot diameters)"),
        ("dim", "feature width"),
    ):
        if key in want and key in feature_meta:
            a, b = want[key], feature_meta[key]
            if isinstance(a, list | tuple):
                same = len(a) == len(b) and np.allclose(np.asarray(a, float), np.asarray(b, float))
            else:
                same = a == b
            if not same:
                raise ValueError(
                    f"Expected features with the model's {label} `{a}`, found `{b}`; extract "
                    "features with the same encoder, weights and patch sizes as in training."
                )


def save_checkpoint(model: TrainedModel, path: str | Path) -> Path:
    """Save a model as a folder: ``weights.safetensors`` (tensors) + ``model.json`` + ``config.yaml``.

    Written to a temporary sibling and moved into place. No pickle is involved.

    Examples
    --------
    >>> save_checkpoint(model, "model")  # doctest: +SKIP
    """
    import torch
    import yaml
    from safetensors.torch import save_file

    out = Path(path)
    tensors: dict[str, Any] = {}
    for i, state in enumerate(model.states):
        for k, v in state.items():
            tensors[f"member{i}.{k}"] = v.detach().cpu().contiguous()
    for k, v in model.arrays.items():
        tensors[f"array.{k}"] = torch.from_numpy(np.ascontiguousarray(v))
    doc = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.config),
        "genes": list(model.genes),
        "feature_meta": model.feature_meta,
        "info": model.info,
        "history": model.history,
        "n_members": len(model.states),
    }
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / "weights.safetensors"))
        (tmp / "model.json").write_text(json.dumps(doc, indent=1, default=json_default))
        (tmp / "config.yaml").write_text(yaml.safe_dump(asdict(model.config), sort_keys=False))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_checkpoint(path: str | Path) -> TrainedModel:
    """Load a model saved by :func:`save_checkpoint` (safetensors + JSON only).

    Examples
    --------
    >>> model = load_checkpoint("model")  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    p = Path(path)
    weights, meta = p / "weights.safetensors", p / "model.json"
    if not weights.is_file() or not meta.is_file():
        raise ValueError(
            f"Expected a checkpoint folder with weights.safetensors and model.json at `{p}`, found "
            f"{sorted(x.name for x in p.iterdir()) if p.is_dir() else 'nothing'}."
        )
    try:
        doc = json.loads(meta.read_text())
        tensors = load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - any parse error means a damaged checkpoint
        raise ValueError(
            f"Expected a readable checkpoint at `{p}`, found a damaged one: {err}"
        ) from err
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"Expected checkpoint format `{CHECKPOINT_FORMAT}`, found `{doc.get('format')}`."
        )
    known = {f.name for f in fields(TrainConfig)}
    config = replace(TrainConfig(), **{k: v for k, v in doc["config"].items() if k in known})
    arrays = {k[6:]: v.numpy() for k, v in tensors.items() if k.startswith("array.")}
    states: list[dict[str, Any]] = [{} for _ in range(int(doc["n_members"]))]
    for k, v in tensors.items():
        if k.startswith("member"):
            head, name = k.split(".", 1)
            states[int(head[6:])][name] = v
    model = TrainedModel(
        config,
        list(doc["genes"]),
        dict(doc["feature_meta"]),
        arrays,
        states,
        list(doc.get("history", [])),
        dict(doc["info"]),
    )
    model._build()
    return model
