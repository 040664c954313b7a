"""Held-out evaluation of a slide: extract, fit on some spots, score the others."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from napari_histosge.base.progress import Progress
from napari_histosge.train import TrainConfig, iter_fit
from napari_histosge.workflows.pipeline import ExtractOptions, Slide, iter_extract_at

from .protocols import score_all

__all__ = ["evaluate_holdout", "HoldoutResult"]


@dataclass
class HoldoutResult:
    """Held-out predictions (spots x genes, target space) and metrics of every method."""

    predictions: pd.DataFrame
    metrics: dict[str, Any]


def evaluate_holdout(
    slide: Slide,
    *,
    holdout: Sequence[str] | np.ndarray,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 1000,
    extract: ExtractOptions | None = None,
    config: TrainConfig | None = None,
) -> Generator[Progress, None, HoldoutResult]:
    """Recovery: train on the other spots, predict the held-out ones, score only those.

    Gene selection uses the training spots only; the model, kNN (k=4), smoothing + low-rank and
    a spatial-shuffle control of the model's predictions are scored on the same split.

    Parameters
    ----------
    slide
        The slide.
    holdout
        Held-out spot ids (table ``obs_names``) or a boolean mask of held-out spots.
    genes
        Genes to score; highly variable genes of the training spots when ``None``.
    n_top_genes
        Number of highly variable genes.
    extract
        Feature settings (as ``histosge run``).
    config
        Training settings (as ``histosge run``).

    Returns
    -------
    Predictions for the held-out spots and the metrics.

    Examples
    --------
    >>> res = run_generator(evaluate_holdout(slide, holdout=ids))  # doctest: +SKIP
    """
    import pandas as pd

    ids = np.asarray(slide.geometry.spot_ids, dtype=str)
    if isinstance(holdout, np.ndarray) and holdout.dtype == bool:
        if holdout.shape != ids.shape:
            raise ValueError(
                f"Expected a held-out mask of {len(ids)} spots, found {holdout.shape}."
            )
        held = holdout
    else:
        wanted = [str(h) for h in holdout]
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            raise ValueError(
                f"Expected held-out spot ids of the table, found {len(unknown)} unknown, "
                f"e.g. {unknown[:5]}."
            )
        held = np.isin(ids, wanted)
    train = ~held
    if held.sum() < 1:
        raise ValueError("Expected at least one held-out spot, found none.")
    if train.sum() < 10:
        raise ValueError(f"Expected at least 10 training spots, found {int(train.sum())}.")
    opts = extract or ExtractOptions()
    cfg = config or TrainConfig()
    targets = slide.targets(genes=genes, n_top_genes=n_top_genes, fit_mask=train)
    geom = slide.geometry
    feats = yield from iter_extract_at(slide, geom.centers_px, options=opts, cache_name="spots")
    xy_um = geom.centers_um
    y = targets.values
    model = yield from iter_fit(
        feats.features[train],
        xy_um[train],
        y[train],
        genes=targets.genes,
        config=cfg,
        feature_meta=feats.meta,
    )
    pred = model.predict(feats.features[held], xy_um[held], reference="train")
    methods = score_all(pred, xy_um[train], y[train], xy_um[held], y[held], targets.genes, cfg.seed)
    summary = {
        "n_train": int(train.sum()),
        "n_heldout": int(held.sum()),
        "genes": list(targets.genes),
        "values": "log1p of counts normalised to 1e4 per spot over all genes",
        "encoder": feats.meta.get("encoder_id"),
        "config": model.config_dict(),
        "methods": methods,
    }
    frame = pd.DataFrame(pred, index=pd.Index(ids[held], name="spot_id"), columns=targets.genes)
    return HoldoutResult(predictions=frame, metrics=summary)
