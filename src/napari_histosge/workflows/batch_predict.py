"""Apply one trained model to H&E-only slides: one slide, or a cohort on dask.distributed.

``histosge predict SLIDE --checkpoint MODEL`` and ``histosge batch SLIDES... --checkpoint MODEL``
share :func:`predict_he_slide`: open the slide (a store, or a whole-slide file read lazily
through its pyramid), find the tissue at low resolution, lay the model's training lattice over
it, embed those positions with the model's encoder and patch sizes, predict from image and
coordinates alone and render the maps. In a batch, :func:`predict_slide_task` runs it as one
task per slide with the resumable markers and report of :func:`.batch.run_batch`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_histosge.base.progress import run_generator

from ._slide_task import slide_task
from .batch import SlideJob

if TYPE_CHECKING:
    from collections.abc import Callable

    from napari_histosge.maps import GeneMaps
    from napari_histosge.models.trained import TrainedModel
    from napari_histosge.predict import Predictions

    from .pipeline import ExtractOptions, Slide, SlideFeatures

__all__ = ["PredictJob", "predict_he_slide", "predict_slide_task", "prediction_options"]


@dataclass(frozen=True)
class PredictJob(SlideJob):
    """What to run on each slide of ``histosge batch --checkpoint``: apply a saved model.

    Parameters
    ----------
    checkpoint
        The model folder saved by ``histosge train`` or ``run --checkpoint-out``.
    um_per_px
        µm per pixel for slides whose files or stores record none.
    resolution_um
        Map pixel side in µm; a quarter of the position spacing when ``None``.

    Other fields as :class:`.batch.SlideJob` (``extract`` gives the weights,
    device, batch size, positions and cache; the encoder and patch sizes are the model's).
    """

    checkpoint: str = ""
    um_per_px: float | None = None
    resolution_um: float | None = None


def prediction_options(model: TrainedModel, base: ExtractOptions | None = None) -> ExtractOptions:
    """Feature options of ``base`` with the encoder, patch sizes, pooling and nuclei the model used.

    Examples
    --------
    >>> opts = prediction_options(load_checkpoint("model"))  # doctest: +SKIP
    """
    from .pipeline import ExtractOptions

    meta = model.feature_meta
    sizes = meta.get("patch_sizes_spot") or meta.get("patch_sizes")
    return replace(
        base or ExtractOptions(),
        encoder=str(meta.get("encoder", "histology")),
        patch_sizes=tuple(float(s) for s in sizes) if sizes else None,
        pooling=str(meta.get("pooling", "patch")),
        cell_features=bool(meta.get("cells")),
    )


def predict_he_slide(
    src: str | Path,
    model: TrainedModel,
    *,
    options: ExtractOptions,
    um_per_px: float | None = None,
    keys: dict[str, str | None] | None = None,
    resolution_um: float | None = None,
    extract: Callable[[Slide, ExtractOptions], SlideFeatures] | None = None,
) -> tuple[Slide, Predictions, GeneMaps]:
    """Predict a slide from its image and coordinates alone, and render the maps.

    Parameters
    ----------
    src
        A store, a slide folder or a whole-slide file.
    model
        The trained model.
    options
        Feature options (:func:`prediction_options`).
    um_per_px
        µm per pixel, when neither the file nor the store records it.
    keys
        ``image_key``, ``spots_key``, ``table_key`` to use instead of the detected ones.
    resolution_um
        Map pixel side in µm.
    extract
        ``extract(slide, options)`` giving the features;
        :func:`.whole_slide.iter_extract_blocked` run to the end when ``None``
        (block by block on a large slide; the store's cache on a small one).

    Returns
    -------
    The slide, the predictions and the Gaussian maps (a lazy dask array, a few genes a block).

    Examples
    --------
    >>> slide, preds, maps = predict_he_slide("B7.svs", model, options=opts)  # doctest: +SKIP
    """
    from .pipeline import predict_slide
    from .sections import open_for_prediction
    from .whole_slide import iter_extract_blocked, rasterize_gaussian_lazy

    slide = open_for_prediction(src, um_per_px=um_per_px, model=model, **(keys or {}))
    if extract is None:
        feats = run_generator(iter_extract_blocked(slide, options=options))
    else:
        feats = extract(slide, options)
    preds = predict_slide(slide, features=feats, model=model, use_measured=False)
    pitch = None if resolution_um is None else resolution_um / slide.geometry.um_per_px
    maps = rasterize_gaussian_lazy(preds, pitch_px=pitch, geometry=slide.geometry)
    return slide, preds, maps


def _extract_without_writing(slide: Slide, options: ExtractOptions) -> SlideFeatures:
    """Extract block by block, any cache kept in memory (written out with the outputs)."""
    from .whole_slide import iter_extract_blocked

    path = slide.sdata.path
    slide.sdata.path = None
    try:
        return run_generator(iter_extract_blocked(slide, options=options))
    finally:
        slide.sdata.path = path


class _PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def predict_slide_task(src: str, out: str, job: PredictJob) -> dict[str, Any]:
    """Apply the job's model to one slide and write ``out`` plus its marker (one batch task).

    The input is only read; an ``out`` without a marker (an interrupted attempt) is replaced.
    The report row adds ``peak_rss_mb`` (the task's peak resident memory) to the marker.

    Examples
    --------
    >>> job = PredictJob(checkpoint="model")
    >>> predict_slide_task("B7.svs", "out/B7.zarr", job)  # doctest: +SKIP
    """
    from napari_histosge.models.checkpoints import load_checkpoint

    from .pipeline import export_slide

    if not job.checkpoint:
        raise ValueError("Expected a model checkpoint (--checkpoint) for prediction, found none.")
    with slide_task(src, out, job.torch_threads) as clock, _PeakRss() as rss:
        model = load_checkpoint(job.checkpoint)
        opts = prediction_options(model, job.extract)
        slide, preds, maps = predict_he_slide(
            src,
            model,
            options=opts,
            um_per_px=job.um_per_px,
            keys=job.keys,
            resolution_um=job.resolution_um,
            extract=_extract_without_writing,
        )
        meta = {"command": "histosge batch --checkpoint", "source": str(src)}
        export_slide(slide, predictions=preds, maps=maps, out=clock.out, meta=meta, overwrite=True)
    return clock.finish(
        len(slide.geometry.spot_ids),
        len(preds.genes),
        positions=len(preds.positions_px),
        peak_rss_mb=round(rss.peak / 1024**2, 1),
    )
