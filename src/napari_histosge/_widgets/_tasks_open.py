"""The worker task that opens a slide: a store, a Visium or ST folder, or the bundled sample.

Runs in the worker process, like :mod:`._tasks_steps` (standard library imports at the top
only). A slide with a table is checked and opened whole; one with an image (and maybe spots)
and no table is kept for a loaded model to predict on: it is opened with
:func:`~.workflows.sections.open_for_prediction` (its positions come from its spots, or from a
lattice over the tissue sized by the loaded model) and embedded with the model's own encoder,
as ``histosge predict`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._files import image_level_paths
from ._task_job import Job

__all__ = ["SAMPLE", "image_only_info", "model_features", "open_image_only", "open_slide"]

#: ``source`` of the bundled sample; the worker copies it into the session folder as a store.
SAMPLE = "sample"


def open_slide(state: Any, job: Job) -> dict[str, Any]:
    """Read a slide: a store as it is; the sample and folders as a store in the session folder."""
    import numpy as np

    from napari_histosge.io import convert, load_sample, read_slide, resolve_keys, validate_slide
    from napari_histosge.store import write_sdata
    from napari_histosge.workflows.pipeline import Slide

    source = str(job.payload["source"])
    keys = {k: v or None for k, v in dict(job.payload.get("keys") or {}).items()}
    job.say("open", 0, 3, f"Reading {source}…")
    if source == SAMPLE:
        store = state.session_dir / "sample.zarr"
        if not store.exists():
            write_sdata(load_sample(), store)
    else:
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise ValueError(f"Expected an existing .zarr store or slide folder, found `{path}`.")
        store = path
        if not (path / "zarr.json").exists() and not (path / ".zgroup").exists():
            store = state.new_path(path.name.replace(".", "_"), ".zarr")
            convert(path, store)
    job.say("open", 1, 3, "Checking the slide…")
    try:
        sdata = read_slide(store)
    except (ValueError, KeyError):  # no units to find: an image-only slide, or keys to choose
        import spatialdata as sd

        sdata = sd.read_zarr(store)
    elements = {
        kind: [k for k in getattr(sdata, kind) if not k.startswith("histosge_")]
        for kind in ("images", "shapes", "tables")
    }
    out: dict[str, Any] = {"source": str(store), "label": source, "elements": elements}
    um_per_px = float(job.payload.get("um_per_px") or 0.0) or None
    spec: dict[str, Any] = {"source": str(store)}
    try:
        only = image_only_info(sdata, keys, um_per_px)
        if only is None:
            found = resolve_keys(sdata, **keys)
            validate_slide(sdata, found)
            resolved = _keys_of(found)
            slide = Slide.open(sdata, **resolved)
        else:  # an image (and maybe spots) without a table: for a loaded model only
            resolved, spec = only, {**spec, "image_only": True, "um_per_px": um_per_px}
            slide = open_image_only({**spec, "keys": resolved}, None) if only["spots_key"] else None
    except (ValueError, KeyError) as err:
        out["problem"] = _message(err)
        return out
    state.slide, state.slide_spec = slide, {**spec, "keys": resolved}
    state.features = state.features_spec = state.predictions = state.predictions_path = None
    geom = None if slide is None else slide.geometry
    centers = "" if geom is None else str(state.new_path("centers", ".npy"))
    if geom is not None:
        np.save(centers, np.asarray(geom.centers_px, dtype=np.float64))
    out.update(
        keys=resolved,
        n_spots=0 if geom is None else len(geom.spot_ids),
        n_genes=len(slide.genes) if only is None else 0,
        lattice="" if geom is None else str(geom.lattice),
        diameter_px=0.0 if geom is None else float(geom.diameter_px),
        um_per_px=float(um_per_px or 0.0) if geom is None else float(geom.um_per_px),
        centers=centers,
        has_table=only is None,
        um_per_px_given=um_per_px,
        image_levels=image_level_paths(store, resolved["image_key"]),
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


# Slides with an image and no table ------------------------------------------------------


def image_only_info(
    sdata: Any, keys: dict[str, str | None], um_per_px: float | None
) -> dict[str, str] | None:
    """Return the image and spots of a slide without a table of units (``None``: it has one).

    Raises a one-line error when such a slide has no spots and no µm per pixel was given.
    """
    from napari_histosge.images import image_levels
    from napari_histosge.io.keys import is_circles, table_regions

    if keys.get("table_key"):
        return None
    annotating = [
        k
        for k, t in sdata.tables.items()
        if not str(k).startswith("histosge_")
        and any(is_circles(sdata, r) for r in table_regions(t))
    ]
    images = [k for k in sdata.images if not str(k).startswith("histosge_")]
    if annotating or not images:
        return None
    image = keys.get("image_key") or max(
        images, key=lambda k: int(image_levels(sdata.images[k])[0].size)
    )
    spots = keys.get("spots_key") or next(
        (k for k in sdata.shapes if not str(k).startswith("histosge_") and is_circles(sdata, k)),
        None,
    )
    from napari_histosge.io.wsi import stored_um_per_px  # kept from a whole-slide file

    if spots is None and not um_per_px and stored_um_per_px(sdata, str(image)) is None:
        raise ValueError(
            "Expected µm per pixel (Data section) for a slide with an image only, found none."
        )
    return {"image_key": str(image), "spots_key": str(spots or ""), "table_key": ""}


def open_image_only(spec: dict[str, Any], model: Any) -> Any:
    """Open a slide without a table for prediction (its positions need ``model`` without spots)."""
    from napari_histosge.workflows.sections import open_for_prediction

    keys = {k: v or None for k, v in spec["keys"].items() if k != "table_key"}
    if model is None and not keys.get("spots_key"):
        raise ValueError("Load a model first: it sets the positions on a slide with an image only.")
    return open_for_prediction(
        Path(spec["source"]), um_per_px=spec.get("um_per_px") or None, model=model, **keys
    )


def model_features(slide: Any, model: Any, options: dict[str, Any], job: Job) -> Any:
    """Extract features with the model's own encoder and patch sizes (``histosge predict``).

    A whole slide is embedded block by block (:mod:`~.workflows.whole_slide`), in bounded
    memory; a slide that fits in one block exactly as ``iter_extract`` does.
    """
    from napari_histosge.workflows.batch_predict import prediction_options
    from napari_histosge.workflows.pipeline import ExtractOptions
    from napari_histosge.workflows.whole_slide import iter_extract_blocked

    base = ExtractOptions(
        weights=options.get("weights"),
        device=options.get("device"),
        batch_size=int(options.get("batch_size") or 32),
        positions=str(options.get("positions") or "4x"),
    )
    return job.run(iter_extract_blocked(slide, options=prediction_options(model, base)))
