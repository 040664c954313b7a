"""Training: seeded fitting of any model mode, with progress and cancel."""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from .base.device import resolve_device
from .base.progress import Progress, run_generator
from .geometry.lattice import lattice_pitch
from .models import TrainConfig, get_model_kind
from .models.trained import TrainedModel

__all__ = ["TrainConfig", "TrainedModel", "fit", "iter_fit", "seed_everything"]


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


def _check_inputs(feats: np.ndarray, xy: np.ndarray, y: np.ndarray, genes: Sequence[str]) -> None:
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

    cfg = config or TrainConfig()
    feats = np.asarray(features, dtype=np.float32)
    xy = np.asarray(xy_um, dtype=np.float64)
    y = np.asarray(values, dtype=np.float32)
    _check_inputs(feats, xy, y, genes)
    kind = get_model_kind(cfg.mode)
    n = len(feats)

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    device = "cpu" if device == "mps" else device
    det_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    if cfg.cpu_threads is not None:
        torch.set_num_threads(cfg.cpu_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        mu = feats.mean(0)
        sd = feats.std(0)
        sd = np.where(sd < 1e-6, 1.0, sd)
        arrays: dict[str, np.ndarray] = {
            "feat_mu": mu.astype(np.float32),
            "feat_sd": sd.astype(np.float32),
            "pitch_um": np.array([lattice_pitch(xy)]),
        }
        z = (feats - mu) / sd
        info: dict[str, Any] = {"n_genes": int(y.shape[1]), "n_train": n}
        rng = np.random.default_rng(cfg.seed)
        n_val = int(round(n * cfg.val_fraction))
        perm = rng.permutation(n)
        val = np.sort(perm[:n_val])
        fit_idx = np.sort(perm[n_val:])
        eval_idx = val if len(val) else fit_idx
        z = kind.prepare(z, xy, y, fit_idx, arrays, info, cfg)

        states: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        total = cfg.epochs * cfg.ensemble
        stopped = False
        for member in range(cfg.ensemble):
            torch.manual_seed(cfg.seed * 1000 + member)
            module = kind.new_module(cfg, info)
            kind.initialise(module, arrays, info, z, xy, fit_idx, cfg)
            module = module.to(device)
            opt = torch.optim.Adam(
                module.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
            )
            cache: dict[Any, Any] = {}

            def loss_of(query: np.ndarray, _m: Any = module, _c: dict[Any, Any] = cache) -> Any:
                return kind.loss(_m, arrays, (z, xy, y, query, fit_idx), device, cfg, _c)

            module.eval()
            with torch.no_grad():
                v0 = float(loss_of(eval_idx))
            best = (v0, {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}, 0)
            since = 0
            for epoch in range(1, cfg.epochs + 1):
                module.train()
                opt.zero_grad()
                loss = loss_of(fit_idx)
                loss.backward()
                opt.step()
                module.eval()
                with torch.no_grad():
                    vloss = float(loss_of(eval_idx))
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
        return TrainedModel(
            cfg, list(genes), dict(feature_meta or {}), arrays, states, history, info
        )
    finally:
        torch.use_deterministic_algorithms(det_before)
        torch.set_num_threads(threads_before)


def fit(
    features: np.ndarray,
    xy_um: np.ndarray,
    values: np.ndarray,
    *,
    genes: Sequence[str],
    config: TrainConfig | None = None,
    feature_meta: dict[str, Any] | None = None,
) -> TrainedModel:
    """Run :func:`iter_fit` to the end.

    Examples
    --------
    >>> model = fit(features, xy_um, values, genes=genes)  # doctest: +SKIP
    """
    return run_generator(
        iter_fit(features, xy_um, values, genes=genes, config=config, feature_meta=feature_meta)
    )
