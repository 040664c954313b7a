"""The dock's heavy work, run in a worker process of its own.

Every import of the core, torch, timm, scanpy and spatialdata that the dock needs happens in this
module, inside the worker process that :class:`~napari_histosge._widgets._runner.Runner` starts
with ``spawn``: the viewer's process never shares an interpreter lock or an OpenGL context with
this work. The module itself imports only the standard library at the top, so the viewer can name
it as the worker's entry point without loading anything.

Each task is ``task(state, payload, context, report, should_stop) -> dict`` and returns small
values; arrays go into ``.npy`` files in the session folder. ``context`` describes the session's
current slide, features, model and predictions, so a fresh worker (after a Cancel that had to stop
the process, or a crash) rebuilds what it needs from the store and the session folder.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["TASKS", "WorkerState", "train_form_defaults", "warm_up"]

#: ``source`` of the bundled sample; the worker copies it into the session folder as a store.
SAMPLE = "sample"

Report = Callable[[dict[str, Any]], None]
ShouldStop = Callable[[], bool]


class WorkerState:
    """What the worker holds between tasks, each with the context entry it was built from."""

    def __init__(self, session_dir: Path) -> None:
        self.session_dir = Path(session_dir)
        self.slide: Any = None
        self.slide_spec: Any = None
        self.features: Any = None
        self.features_spec: Any = None
        self.model: Any = None
        self.model_path: str | None = None
        self.predictions: Any = None
        self.predictions_path: str | None = None

    def new_path(self, stem: str, suffix: str = "") -> Path:
        """A new file name in the session folder."""
        return self.session_dir / f"{stem}-{uuid.uuid4().hex[:8]}{suffix}"


def warm_up() -> dict[str, Any]:
    """Import the core and its heavy libraries; return the training options' defaults."""
    import os
    from dataclasses import asdict

    import torch

    import napari_histosge.encoders  # noqa: F401
    import napari_histosge.expression  # noqa: F401
    import napari_histosge.features  # noqa: F401
    import napari_histosge.pipeline  # noqa: F401
    from napari_histosge.train import TrainConfig

    # Leave a core to the viewer.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    return {"train_defaults": asdict(TrainConfig())}


def train_form_defaults() -> tuple[dict[str, Any], list[str]]:
    """The training options' defaults and the model modes (light: no torch import).

    Examples
    --------
    >>> defaults, modes = train_form_defaults()
    >>> "improved" in modes
    True
    """
    import typing
    from dataclasses import asdict

    from napari_histosge.train import TrainConfig

    hint = typing.get_type_hints(TrainConfig)["mode"]
    modes = [str(m) for m in typing.get_args(hint)] or [TrainConfig().mode]
    return asdict(TrainConfig()), modes


def _run(gen: Any, report: Report, should_stop: ShouldStop) -> Any:
    from napari_histosge import run_generator

    def progress(item: Any) -> None:
        report(
            {
                "stage": item.stage,
                "step": item.step,
                "total": item.total,
                "message": item.message,
                "info": _plain(item.info),
            }
        )

    return run_generator(gen, progress=progress, cancel=should_stop)


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    """Keep the JSON-like values of a progress record (numbers, strings)."""
    out: dict[str, Any] = {}
    for k, v in (info or {}).items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif hasattr(v, "item") and getattr(v, "size", 2) == 1:
            out[k] = v.item()
    return out


# ---------------------------------------------------------------------------------------------
# Rebuilding the session's objects


def _slide(state: WorkerState, context: dict[str, Any]) -> Any:
    from napari_histosge.pipeline import Slide

    spec = context.get("slide")
    if spec is None:
        raise ValueError("Open a slide first.")
    if state.slide is None or state.slide_spec != spec:
        state.slide = Slide.open(Path(spec["source"]), **spec["keys"])
        state.slide_spec = spec
        state.features = state.features_spec = None
        state.predictions = state.predictions_path = None
    return state.slide


def _features(state: WorkerState, context: dict[str, Any], report: Report, stop: ShouldStop) -> Any:
    from napari_histosge.pipeline import ExtractOptions, iter_extract

    slide = _slide(state, context)
    spec = context.get("features")
    if spec is None:
        raise ValueError("Extract features first.")
    if state.features is None or state.features_spec != spec:
        options = ExtractOptions(**_extract_kwargs(spec))
        state.features = _run(iter_extract(slide, options), report, stop)
        state.features_spec = spec
    return state.features


def _model(state: WorkerState, context: dict[str, Any]) -> Any:
    from napari_histosge.train import load_checkpoint

    path = context.get("model")
    if path is None:
        raise ValueError("Train or load a model first.")
    if state.model is None or state.model_path != path:
        state.model = load_checkpoint(Path(path))
        state.model_path = path
    return state.model


def _predictions(state: WorkerState, context: dict[str, Any]) -> Any:
    from napari_histosge.predict import Predictions

    path = context.get("predictions")
    if path is None:
        raise ValueError("Predict first.")
    if state.predictions is None or state.predictions_path != path:
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            state.predictions = Predictions(
                genes=[str(g) for g in z["genes"]],
                positions_px=z["positions_px"],
                values=z["values"],
                kind=z["kind"],
                ids=z["ids"],
                spot_diameter_px=float(z["spot_diameter_px"]),
                meta=json.loads(str(z["meta"])),
            )
        state.predictions_path = path
    return state.predictions


def _extract_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(spec)
    if kwargs.get("patch_sizes") is not None:
        kwargs["patch_sizes"] = tuple(float(s) for s in kwargs["patch_sizes"])
    return kwargs


# ---------------------------------------------------------------------------------------------
# Tasks


def open_slide(
    state: WorkerState, payload: dict[str, Any], context: Any, report: Report, stop: ShouldStop
) -> dict[str, Any]:
    """Read a slide: a store as it is; the sample and folders as a store in the session folder."""
    import numpy as np

    from napari_histosge.io import convert, load_sample, read_slide, resolve_keys, validate_slide
    from napari_histosge.pipeline import Slide

    source = str(payload["source"])
    keys = {k: v or None for k, v in dict(payload.get("keys") or {}).items()}
    report({"stage": "open", "step": 0, "total": 3, "message": f"Reading {source}…", "info": {}})
    if source == SAMPLE:
        store = state.session_dir / "sample.zarr"
        if not store.exists():
            load_sample().write(store)
    else:
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise ValueError(f"Expected an existing .zarr store or slide folder, found `{path}`.")
        store = path
        if not (path / "zarr.json").exists() and not (path / ".zgroup").exists():
            store = state.new_path(path.name.replace(".", "_"), ".zarr")
            convert(path, store)
    report({"stage": "open", "step": 1, "total": 3, "message": "Checking the slide…", "info": {}})
    sdata = read_slide(store)
    elements = {
        "images": [k for k in sdata.images if not k.startswith("histosge_")],
        "shapes": [k for k in sdata.shapes if not k.startswith("histosge_")],
        "tables": [k for k in sdata.tables if not k.startswith("histosge_")],
    }
    out: dict[str, Any] = {"source": str(store), "label": source, "elements": elements}
    try:
        resolved = resolve_keys(sdata, **keys)
        validate_slide(sdata, resolved)
        slide = Slide.open(sdata, **_keys_of(resolved))
    except (ValueError, KeyError) as err:
        out["problem"] = _message(err)
        return out
    state.slide, state.slide_spec = slide, {"source": str(store), "keys": _keys_of(resolved)}
    state.features = state.features_spec = state.predictions = state.predictions_path = None
    geom = slide.geometry
    centers = state.new_path("centers", ".npy")
    np.save(centers, np.asarray(geom.centers_px, dtype=np.float64))
    out.update(
        keys=_keys_of(resolved),
        n_spots=len(geom.spot_ids),
        n_genes=len(slide.genes),
        lattice=str(geom.lattice),
        diameter_px=float(geom.diameter_px),
        um_per_px=float(geom.um_per_px),
        centers=str(centers),
        image_levels=_image_levels(store, resolved.image_key),
        outputs=[
            k
            for kind in ("images", "labels", "points", "shapes", "tables")
            for k in getattr(sdata, kind)
            if str(k).startswith("histosge_")
        ],
    )
    return out


def _keys_of(keys: Any) -> dict[str, str]:
    return {"image_key": keys.image_key, "spots_key": keys.spots_key, "table_key": keys.table_key}


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)


def _image_levels(store: Path, key: str) -> list[str]:
    """Paths of the image's zarr arrays, finest first (read lazily by the viewer)."""
    import zarr

    group = zarr.open_group(str(store / "images" / key), mode="r")
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return []
    paths = [str(store / "images" / key / d["path"]) for d in multiscales[0]["datasets"]]
    first = zarr.open_array(paths[0], mode="r")
    if first.ndim != 3 or first.shape[0] != 3 or str(first.dtype) != "uint8":
        return []  # converted while reading; the viewer cannot show the stored array as it is
    return paths


def extract(
    state: WorkerState,
    payload: dict[str, Any],
    context: dict[str, Any],
    report: Report,
    stop: ShouldStop,
) -> dict[str, Any]:
    """Embed the spots and the new positions (features are cached in the store)."""
    context = {**context, "features": payload["options"]}
    state.features = None
    features = _features(state, context, report, stop)
    spots = features.spots
    return {
        "options": payload["options"],
        "from_cache": bool(features.from_cache),
        "n_spots": len(spots.features),
        "n_positions": len(features.positions_px),
        "dims": int(spots.features.shape[1]),
        "encoder_id": str(spots.meta.get("encoder_id", "")),
    }


def train(
    state: WorkerState,
    payload: dict[str, Any],
    context: dict[str, Any],
    report: Report,
    stop: ShouldStop,
) -> dict[str, Any]:
    """Train a model with a live loss curve; Cancel discards the run."""
    from napari_histosge import Cancelled
    from napari_histosge.pipeline import iter_train
    from napari_histosge.train import TrainConfig, save_checkpoint

    slide = _slide(state, context)
    features = _features(state, context, report, stop)
    config = TrainConfig(**payload["config"])
    gen = iter_train(
        slide, features, config=config, n_top_genes=int(payload["n_top_genes"]), should_stop=stop
    )
    model = _run(gen, report, stop)
    if stop():
        raise Cancelled("training was cancelled")
    path = save_checkpoint(model, state.new_path("model"))
    state.model, state.model_path = model, str(path)
    return {"path": str(path), "n_genes": len(model.genes), "info": _plain(model.info)}


def save_model(
    state: WorkerState, payload: dict[str, Any], context: Any, report: Report, stop: ShouldStop
) -> dict[str, Any]:
    """Save the session's model as a checkpoint folder."""
    from napari_histosge.train import save_checkpoint

    return {"path": str(save_checkpoint(_model(state, context), Path(payload["path"])))}


def load_model(
    state: WorkerState, payload: dict[str, Any], context: Any, report: Report, stop: ShouldStop
) -> dict[str, Any]:
    """Load a checkpoint folder."""
    model = _model(state, {"model": str(Path(payload["path"]).resolve())})
    return {"path": state.model_path, "n_genes": len(model.genes), "info": _plain(model.info)}


def predict(
    state: WorkerState,
    payload: dict[str, Any],
    context: dict[str, Any],
    report: Report,
    stop: ShouldStop,
) -> dict[str, Any]:
    """Predict at the spots and the new positions; genes come back ranked by variability."""
    import numpy as np

    from napari_histosge.pipeline import predict as predict_slide

    slide = _slide(state, context)
    features = _features(state, context, report, stop)
    model = _model(state, context)
    report({"stage": "predict", "step": 0, "total": 1, "message": "Predicting…", "info": {}})
    preds = predict_slide(slide, features, model)
    path = state.new_path("predictions", ".npz")
    np.savez(
        path,
        genes=np.asarray(preds.genes, dtype=str),
        positions_px=preds.positions_px,
        values=preds.values,
        kind=np.asarray(preds.kind, dtype=str),
        ids=np.asarray(preds.ids, dtype=str),
        spot_diameter_px=np.float64(preds.spot_diameter_px),
        meta=np.asarray(json.dumps(preds.meta, default=str)),
    )
    state.predictions, state.predictions_path = preds, str(path)
    return {
        "path": str(path),
        "genes": preds.top_genes(len(preds.genes)),
        "n_positions": len(preds.positions_px),
    }


def _pitch_px(slide: Any, pitch_um: float | None) -> float | None:
    if not pitch_um:
        return None
    return float(pitch_um) / float(slide.geometry.um_per_px)


def render(
    state: WorkerState,
    payload: dict[str, Any],
    context: dict[str, Any],
    report: Report,
    stop: ShouldStop,
) -> dict[str, Any]:
    """Rasterise the chosen genes at the chosen resolution into a ``.npy`` stack."""
    import numpy as np

    from napari_histosge._layers import contrast_limits
    from napari_histosge.pipeline import render as render_maps

    slide = _slide(state, context)
    preds = _predictions(state, context)
    genes = list(payload["genes"])
    report({"stage": "render", "step": 0, "total": 1, "message": "Rendering…", "info": {}})
    maps = render_maps(
        slide, preds, genes=genes, pitch_px=_pitch_px(slide, payload.get("pitch_um"))
    )
    path = state.new_path("maps", ".npy")
    np.save(path, np.ascontiguousarray(maps.data, dtype=np.float32))
    out: dict[str, Any] = {
        "path": str(path),
        "genes": list(maps.genes),
        "scale": list(maps.scale),
        "translate": list(maps.translate),
        "limits": [list(contrast_limits(plane)) for plane in maps.data],
        "pitch_um": float(maps.pitch_px) * float(slide.geometry.um_per_px),
        "measured": None,
    }
    if payload.get("measured"):
        out["measured"] = _measured_file(state, slide, genes[0])
    return out


def _measured_file(state: WorkerState, slide: Any, gene: str) -> dict[str, Any]:
    import numpy as np

    from napari_histosge._layers import contrast_limits

    values = np.asarray(slide.measured([gene])[:, 0], dtype=np.float64)
    path = state.new_path("measured", ".npy")
    np.save(path, values)
    return {"gene": gene, "path": str(path), "limits": list(contrast_limits(values))}


def measured(
    state: WorkerState,
    payload: dict[str, Any],
    context: dict[str, Any],
    report: Report,
    stop: ShouldStop,
) -> dict[str, Any]:
    """Measured expression of one gene at the spots, as a ``.npy`` file."""
    return _measured_file(state, _slide(state, context), str(payload["gene"]))


def export(
    state: WorkerState,
    payload: dict[str, Any],
    context: dict[str, Any],
    report: Report,
    stop: ShouldStop,
) -> dict[str, Any]:
    """Render every predicted gene and write predictions, maps and features into a store."""
    from napari_histosge.pipeline import export as export_slide
    from napari_histosge.pipeline import render as render_maps

    slide = _slide(state, context)
    preds = _predictions(state, context)
    report(
        {"stage": "export", "step": 0, "total": 2, "message": "Rendering all genes…", "info": {}}
    )
    maps = render_maps(slide, preds, pitch_px=_pitch_px(slide, payload.get("pitch_um")))
    report({"stage": "export", "step": 1, "total": 2, "message": "Writing the store…", "info": {}})
    out = export_slide(slide, preds, maps, payload["path"], overwrite=bool(payload["overwrite"]))
    return {"path": str(Path(out).resolve())}


TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "open": open_slide,
    "extract": extract,
    "train": train,
    "save_model": save_model,
    "load_model": load_model,
    "predict": predict,
    "render": render,
    "measured": measured,
    "export": export,
}
