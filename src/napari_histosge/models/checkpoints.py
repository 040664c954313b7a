"""Checkpoints: a folder of safetensors weights, JSON metadata and the YAML config (no pickle).

Also the checks that a checkpoint fits the features and genes it is applied to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_histosge.base.json_io import json_default
from napari_histosge.store import check_target, write_folder_atomic

from . import TrainConfig
from ._checkpoint_schema import check_checkpoint_doc
from .trained import TrainedModel

__all__ = [
    "CHECKPOINT_FORMAT",
    "check_features",
    "check_genes",
    "load_checkpoint",
    "save_checkpoint",
]


CHECKPOINT_FORMAT = "napari-histosge-checkpoint/1"


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
            f"Expected the table to hold the model's {len(model.genes)} genes, found "
            f"{len(missing)} "
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
        ("pooling", "ViT pooling"),
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


def save_checkpoint(model: TrainedModel, path: str | Path, *, overwrite: bool = False) -> Path:
    """Save a model as a folder: ``weights.safetensors``, ``model.json`` and ``config.yaml``.

    Written to a temporary sibling and moved into place. No pickle is involved. An existing
    ``path`` is replaced only with ``overwrite`` and only when it is an earlier checkpoint (see
    :func:`~napari_histosge.store.check_target`).

    Examples
    --------
    >>> save_checkpoint(model, "model")  # doctest: +SKIP
    """
    import torch
    import yaml
    from safetensors.torch import save_file

    out = check_target(path, overwrite=overwrite, kind="folder", option="--checkpoint-out")
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

    def write(tmp: Path) -> None:
        tmp.mkdir()
        save_file(tensors, str(tmp / "weights.safetensors"))
        (tmp / "model.json").write_text(json.dumps(doc, indent=1, default=json_default))
        (tmp / "config.yaml").write_text(yaml.safe_dump(asdict(model.config), sort_keys=False))

    return write_folder_atomic(out, write, kind="checkpoint")


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
    check_checkpoint_doc(doc, meta, CHECKPOINT_FORMAT)
    known = {f.name for f in fields(TrainConfig)}
    try:
        config = replace(TrainConfig(), **{k: v for k, v in doc["config"].items() if k in known})
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"Expected a valid `config` in `{meta}`, found one that fails: {err}; save the "
            "checkpoint again with `histosge run --checkpoint-out`."
        ) from err
    arrays = {k[6:]: v.numpy() for k, v in tensors.items() if k.startswith("array.")}
    n_members = int(doc["n_members"])
    states: list[dict[str, Any]] = [{} for _ in range(n_members)]
    for k, v in tensors.items():
        if k.startswith("member"):
            head, name = k.split(".", 1)
            idx = int(head[6:]) if head[6:].isdigit() else -1
            if not 0 <= idx < n_members:
                raise ValueError(
                    f"Expected weights of {n_members} members in `{weights}`, found `{k}`; the "
                    "weights and model.json come from different checkpoints."
                )
            states[idx][name] = v
    model = TrainedModel(
        config,
        list(doc["genes"]),
        dict(doc["feature_meta"]),
        arrays,
        states,
        list(doc.get("history", [])),
        dict(doc["info"]),
    )
    try:
        model.modules()
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"Expected weights matching `{meta}` in `{weights}`, found others ({first}); use "
            "the weights saved together with that model.json."
        ) from err
    return model
    model.modules()
    return model
