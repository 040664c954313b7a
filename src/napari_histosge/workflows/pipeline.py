"""The workflow as steps: open a slide, extract features, train, predict, render, export.

The command line and the napari dock both drive these functions; each long step is a generator
that yields :class:`~napari_histosge.base.progress.Progress` and returns its result.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.base.progress import Progress
from napari_histosge.maps import GeneMaps
from napari_histosge.predict import Predictions

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from napari_histosge.expression import Targets
    from napari_histosge.features import Encoder, FeatureSet
    from napari_histosge.geometry import SpotGeometry
    from napari_histosge.io import SlideKeys
    from napari_histosge.models import TrainConfig
    from napari_histosge.models.trained import TrainedModel

__all__ = [
    "ExtractOptions",
    "Slide",
    "SlideFeatures",
    "export_slide",
    "iter_extract",
    "iter_extract_at",
    "iter_train",
    "parse_positions",
    "predict_slide",
    "render_maps",
]


@dataclass
class Slide:
    """One slide: the SpatialData object, the chosen elements and the spot geometry.

    Examples
    --------
    >>> from napari_histosge.io import load_sample
    >>> slide = Slide.open(load_sample())
    >>> slide.geometry.centers_px.shape[1]
    2
    """

    sdata: SpatialData
    keys: SlideKeys
    geometry: SpotGeometry
    source: Path | None = None
    _measured_cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(
        cls,
        src: str | Path | SpatialData,
        *,
        image_key: str | None = None,
        spots_key: str | None = None,
        table_key: str | None = None,
    ) -> Slide:
        """Read (if needed) and validate a slide, resolving its image, spots and table."""
        from spatialdata import SpatialData

        from napari_histosge.geometry import spot_geometry
        from napari_histosge.io import read_slide, resolve_keys, validate_slide

        if isinstance(src, SpatialData):
            sdata = src
            source = Path(sdata.path) if getattr(sdata, "path", None) else None
        else:
            source = Path(src)
            sdata = read_slide(
                source, image_key=image_key, spots_key=spots_key, table_key=table_key
            )
        keys = resolve_keys(sdata, image_key=image_key, spots_key=spots_key, table_key=table_key)
        validate_slide(sdata, keys)
        geom = spot_geometry(
            sdata, image_key=keys.image_key, spots_key=keys.spots_key, table_key=keys.table_key
        )
        return cls(sdata=sdata, keys=keys, geometry=geom, source=source)

    @property
    def table(self) -> AnnData:
        """The AnnData table annotating the spots."""
        return self.sdata.tables[self.keys.table_key]

    @property
    def genes(self) -> list[str]:
        """All genes of the spot table."""
        return [str(g) for g in self.table.var_names]

    def targets(
        self,
        genes: Sequence[str] | None = None,
        n_top_genes: int = 1000,
        fit_mask: np.ndarray | None = None,
        flavor: str = "seurat_v3",
    ) -> Targets:
        """Expression targets (log1p of counts normalised to 1e4) of the spots."""
        from napari_histosge.expression import prepare_targets

        return prepare_targets(
            self.table,
            genes=genes,
            n_top_genes=n_top_genes,
            fit_mask=fit_mask,
            flavor=flavor,  # type: ignore[arg-type]
        )

    def measured(self, genes: Sequence[str]) -> np.ndarray:
        """Measured expression of ``genes`` at the spots, in the target space, for display."""
        key = "all"
        if key not in self._measured_cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tg = self.targets(genes=self.genes)
            self._measured_cache[key] = tg
        tg = self._measured_cache[key]
        lookup = {g: i for i, g in enumerate(tg.genes)}
        missing = [g for g in genes if g not in lookup]
        if missing:
            raise KeyError(f"Expected genes of the spot table, found unknown `{missing[:5]}`.")
        return np.asarray(tg.values)[:, [lookup[g] for g in genes]]


@dataclass(frozen=True)
class ExtractOptions:
    """Feature extraction settings.

    Parameters
    ----------
    encoder
        ``"histology"`` (built in, no weights), ``"uni"``, ``"uni2-h"`` or ``"timm:<name>"``.
    weights
        Local weights file (``.safetensors``, ``.pth``, ``.bin``), ``"random"``, or ``None``.
    device
        ``"cpu"``, ``"cuda"``, ``"mps"``, or ``None`` to choose automatically.
    batch_size
        Patches per batch.
    patch_sizes
        Patch sizes in spot diameters; the encoder's default when ``None``.
    bf16
        bf16 autocast on CPUs that support it.
    positions
        ``"4x"`` (HisToSGE's positions half-way between neighbouring spots) or ``"grid:<µm>"``.
    cache
        Read and write the feature cache in the store.
    pooling
        ViT encoders: ``"tiles"`` (patch tokens of tissue tiles embedded once, pooled under
        each position's patch), ``"patch"`` (one forward pass per position and patch size) or
        ``"auto"`` (``"tiles"`` for timm ViTs). The built-in encoder ignores it.
    cell_features
        Append the nuclei statistics of each spot (:mod:`napari_histosge.cells.features`).
    """

    encoder: str = "histology"
    weights: str | None = None
    device: str | None = None
    batch_size: int = 32
    patch_sizes: tuple[float, ...] | None = None
    bf16: bool = False
    positions: str = "4x"
    cache: bool = True
    pooling: str = "auto"
    cell_features: bool = False

    def build_encoder(self) -> Encoder:
        """Build the encoder these options name, with their weights, device and precision."""
        from napari_histosge.features import get_encoder

        return get_encoder(self.encoder, weights=self.weights, device=self.device, bf16=self.bf16)


@dataclass
class SlideFeatures:
    """Features of the measured spots and of the super-resolution positions."""

    spots: FeatureSet
    positions_px: np.ndarray
    positions: FeatureSet
    positions_name: str
    from_cache: bool


def parse_positions(spec: str) -> tuple[str, float | None]:
    """Parse ``"4x"`` or ``"grid:<µm>"``.

    Examples
    --------
    >>> parse_positions("grid:25")
    ('grid', 25.0)
    """
    spec = spec.strip().lower()
    if spec == "4x":
        return "4x", None
    if spec.startswith("grid:"):
        try:
            pitch = float(spec.split(":", 1)[1])
        except ValueError:
            pitch = -1.0
        if not np.isfinite(pitch) or pitch <= 0:
            raise ValueError(
                f"Expected `grid:<pitch in µm>` with a positive pitch, found `{spec}`."
            )
        return "grid", pitch
    raise ValueError(f"Expected positions `4x` or `grid:<µm>`, found `{spec}`.")


def new_positions(slide: Slide, spec: str) -> tuple[str, np.ndarray]:
    """Super-resolution positions (image pixels) for ``spec``."""
    from napari_histosge.geometry import grid_positions, subspot_positions

    kind, pitch = parse_positions(spec)
    if kind == "4x":
        return "4x", subspot_positions(slide.geometry.centers_px, lattice=slide.geometry.lattice)
    assert pitch is not None
    name = f"grid{pitch:g}um".replace(".", "p")
    return name, grid_positions(slide.geometry, pitch_um=pitch)


def iter_extract_at(
    slide: Slide,
    positions_px: np.ndarray,
    *,
    options: ExtractOptions,
    cache_name: str,
    encoder: Encoder | None = None,
) -> Generator[Progress, None, FeatureSet]:
    """Embed positions of a slide with the options' encoder, patch sizes and cache setting.

    Parameters
    ----------
    slide
        The slide.
    positions_px
        ``(n, 2)`` positions in the image's scale-0 pixels.
    options
        Encoder, weights, device, patch sizes (in spot diameters), batch size, cache.
    cache_name
        Name of the position set in the store's feature cache.
    encoder
        An encoder built from ``options`` to share between calls (the built-in encoder then
        computes its dense maps once); built here when ``None``.

    Examples
    --------
    >>> fs = run_generator(iter_extract_at(slide, xy, options=ExtractOptions(),
    ...                                    cache_name="spots"))  # doctest: +SKIP
    """
    from napari_histosge.features import iter_extract_features

    sizes = tuple(options.patch_sizes) if options.patch_sizes is not None else None
    return (
        yield from iter_extract_features(
            slide.sdata,
            positions_px,
            image_key=slide.keys.image_key,
            geometry=slide.geometry,
            encoder=encoder if encoder is not None else options.build_encoder(),
            patch_sizes=sizes,
            patch_unit="spot",
            batch_size=options.batch_size,
            cache_name=cache_name,
            cache=options.cache,
            pooling=options.pooling,
        )
    )


def iter_extract(
    slide: Slide, *, options: ExtractOptions | None = None
) -> Generator[Progress, None, SlideFeatures]:
    """Embed the spots and the super-resolution positions (cached in the store).

    Parameters
    ----------
    slide
        The slide.
    options
        Encoder, weights, device, patch sizes and positions; the defaults when ``None``.

    Examples
    --------
    >>> from napari_histosge import run_generator
    >>> feats = run_generator(iter_extract(slide))  # doctest: +SKIP
    """
    opts = options or ExtractOptions()
    encoder = opts.build_encoder()
    name, xy = new_positions(slide, opts.positions)  # a bad spec fails before any work
    spots = yield from iter_extract_at(
        slide, slide.geometry.centers_px, options=opts, cache_name="spots", encoder=encoder
    )
    pos = yield from iter_extract_at(slide, xy, options=opts, cache_name=name, encoder=encoder)
    cached = bool(spots.from_cache and pos.from_cache)
    feats = SlideFeatures(spots, xy, pos, positions_name=name, from_cache=cached)
    if opts.cell_features:
        from napari_histosge.cells.features import iter_add_spot_cell_features

        feats = yield from iter_add_spot_cell_features(slide, feats, cache=opts.cache)
    return feats


def iter_train(
    slide: Slide,
    *,
    features: SlideFeatures,
    config: TrainConfig | None = None,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 1000,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Progress, None, TrainedModel]:
    """Train the HisToSGE model on the slide's spots.

    Examples
    --------
    >>> model = run_generator(iter_train(slide, features=feats))  # doctest: +SKIP
    """
    from napari_histosge.models import TrainConfig
    from napari_histosge.train import iter_fit

    cfg = config or TrainConfig()
    targets = slide.targets(genes=genes, n_top_genes=n_top_genes)
    xy_um = slide.geometry.centers_um
    model = yield from iter_fit(
        features.spots.features,
        xy_um,
        np.asarray(targets.values, dtype=np.float32),
        genes=list(targets.genes),
        config=cfg,
        feature_meta=dict(features.spots.meta),
        should_stop=should_stop,
    )
    return model


def predict_slide(
    slide: Slide,
    *,
    features: SlideFeatures,
    model: TrainedModel,
    use_measured: bool = True,
) -> Predictions:
    """Predict expression at the measured spots and at the new positions.

    Parameters
    ----------
    slide
        The slide the features belong to.
    features
        Output of :func:`iter_extract`.
    model
        A trained model; its encoder and patch sizes must match the features'.
    use_measured
        Let the model attend to the measured spots it was trained on. Set ``False`` to predict
        from image and coordinates alone, as for a section without spatial transcriptomics.

    Examples
    --------
    >>> preds = predict_slide(slide, features=feats, model=model)  # doctest: +SKIP
    """
    from napari_histosge.models.checkpoints import check_features

    check_features(model, features.spots.meta)
    um = slide.geometry.um_per_px
    reference = "train" if use_measured else None
    n_spots, n_pos = len(features.spots.features), len(features.positions_px)
    values = np.empty((n_spots + n_pos, len(model.genes)), dtype=np.float32)
    _predict_into(
        values[:n_spots], model, features.spots.features, slide.geometry.centers_um, reference
    )
    _predict_into(
        values[n_spots:], model, features.positions.features, features.positions_px * um, reference
    )
    # The slide's own positions are its spots, or the lattice over an image-only section.
    base = "spot" if slide.keys.spots_key else "lattice"
    kind = np.array([base] * n_spots + [features.positions_name] * n_pos, dtype=object)
    ids = np.concatenate(
        [
            np.asarray(slide.geometry.spot_ids, dtype=str),
            np.array([f"{features.positions_name}_{i}" for i in range(n_pos)], dtype=str),
        ]
    )
    meta = {
        "features": dict(features.spots.meta),
        "positions": features.positions_name,
        "used_measured_spots": bool(use_measured),
        "model": _model_meta(model),
    }
    return Predictions(
        genes=list(model.genes),
        positions_px=np.concatenate([slide.geometry.centers_px, features.positions_px]),
        values=values,
        kind=kind.astype(str),
        ids=ids,
        spot_diameter_px=float(slide.geometry.diameter_px),
        meta=meta,
    )


#: Positions per prediction call: bounds the model's temporary arrays (ensemble members,
#: float64 intermediates) to a fixed size whatever the number of positions and genes.
PREDICT_BLOCK = 2048


def _predict_into(
    out: np.ndarray, model: TrainedModel, feats: np.ndarray, xy_um: np.ndarray, reference: Any
) -> None:
    """Predict block by block of positions into ``out`` (whole groups of the faithful model)."""
    group = max(1, int(getattr(model.config, "group_size", 1) or 1))
    size = max(1, PREDICT_BLOCK // group) * group
    for s in range(0, len(feats), size):
        out[s : s + size] = model.predict(
            feats[s : s + size], xy_um[s : s + size], reference=reference
        )


def _model_meta(model: Any) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    out: dict[str, Any] = {}
    if cfg is not None and is_dataclass(cfg):
        out["config"] = asdict(cfg)
    history = getattr(model, "history", None)
    if history:
        out["history"] = history
    return out


def render_maps(
    slide: Slide,
    *,
    predictions: Predictions,
    genes: Sequence[str] | None = None,
    pitch_px: float | None = None,
    smooth: bool = False,
) -> GeneMaps:
    """Rasterise predictions into per-gene maps placed on the H&E image.

    ``smooth`` interpolates between positions (Gaussian weights) instead of copying the
    nearest position into each map pixel. Nearest-position maps are a lazy dask array computed
    a few genes at a time when shown or written, so memory does not grow with the number of
    genes (see :mod:`napari_histosge.lazy_maps`).

    Examples
    --------
    >>> maps = render_maps(slide, predictions=preds, genes=["Gfap"])  # doctest: +SKIP
    """
    from napari_histosge.lazy_maps import rasterize_lazy

    method = "gaussian" if smooth else "nearest"
    return rasterize_lazy(
        predictions, genes=genes, pitch_px=pitch_px, geometry=slide.geometry, method=method
    )


def export_slide(
    slide: Slide,
    *,
    predictions: Predictions,
    maps: GeneMaps | None,
    out: str | Path,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write predictions, positions, maps (and cached features) into a zarr store, atomically.

    Examples
    --------
    >>> export_slide(slide, predictions=preds, maps=maps, out="out.zarr")  # doctest: +SKIP
    """
    from .export import write_predictions

    info = dict(predictions.meta)
    if meta:
        info.update(meta)
    return write_predictions(
        slide.sdata,
        out,
        image_key=slide.keys.image_key,
        predictions=predictions,
        maps=maps,
        meta=info,
        overwrite=overwrite,
    )
