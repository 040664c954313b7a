"""The super-resolution step on a slide: superpixel grid, dense features, fit, maps.

``iter_superres`` lays a grid of superpixels (8 µm or a quarter of the smallest unit's
diameter) over the measured units, computes the dense image features once over that area, fits
:mod:`~napari_histosge.models.superres` to the units' footprints and returns the model with its
grid; ``superres_maps`` renders genes as :class:`~napari_histosge.maps.GeneMaps` on the H&E.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from napari_histosge.base.progress import Progress
from napari_histosge.features.dense import DEFAULT_SCALES_UM
from napari_histosge.features.superpixel_cache import cached_features
from napari_histosge.maps import GeneMaps, on_map, place_on_grid, pyramid_factors
from napari_histosge.models.superres import SuperResConfig
from napari_histosge.workflows._pyramid import keep_mantissa

if TYPE_CHECKING:
    from napari_histosge.geometry.footprints import SuperpixelGrid
    from napari_histosge.models.superres import SuperResModel
    from napari_histosge.predict import Predictions
    from napari_histosge.workflows.pipeline import Slide

__all__ = [
    "DEFAULT_RESOLUTION_UM",
    "SuperResOptions",
    "SuperResResult",
    "iter_superres",
    "export_superres",
    "superres_maps",
    "superres_predictions",
    "superres_uncertainty_maps",
    "SlideGrid",
    "check_resolution",
    "resolution_range",
    "slide_grid",
    "units_superpixel_grid",
]

#: Superpixel side (µm) unless the units are smaller than four times this.
DEFAULT_RESOLUTION_UM = 8.0
#: float32 mantissa bits of the sd maps at every scale (rounded, < 0.4 %): smaller, faster.
SD_MANTISSA_BITS = 7


@dataclass(frozen=True)
class SuperResOptions:
    """Settings of the super-resolution step.

    Parameters
    ----------
    resolution_um
        Superpixel side in µm; ``None``: 8 µm or a quarter of the smallest unit diameter.
    encoder
        ``"histology"`` (dense maps of the built-in encoder) or a ViT (``"uni"``, ``"uni2-h"``,
        ``"timm:<name>"``: patch tokens of tissue tiles).
    weights, device, bf16
        Encoder weights and execution, as for feature extraction.
    scales_um
        Box sides pooled around each superpixel for the histology encoder.
    batch_size
        Tiles per forward pass of a ViT encoder.
    cache
        Reuse and keep the superpixel features in the store (``False``: the store is not
        touched).
    cell_features
        Append nucleus statistics around each superpixel to the features
        (:func:`napari_histosge.cells.features.iter_add_cell_features`).
    config
        Model settings.
    """

    resolution_um: float | None = None
    encoder: str = "histology"
    weights: str | None = None
    device: str | None = None
    bf16: bool = False
    scales_um: tuple[float, ...] = DEFAULT_SCALES_UM
    batch_size: int = 8
    cache: bool = True
    cell_features: bool = False
    config: SuperResConfig = field(default_factory=SuperResConfig)

    def __post_init__(self) -> None:
        from napari_histosge.base.validation import assert_at_least

        assert_at_least("batch_size", int(self.batch_size), 1)
        if self.resolution_um is not None and not (
            np.isfinite(self.resolution_um) and self.resolution_um > 0
        ):
            raise ValueError(f"Expected a positive resolution in µm, found `{self.resolution_um}`.")
        if not self.scales_um or min(self.scales_um) <= 0:
            raise ValueError(f"Expected positive box sides in µm, found {list(self.scales_um)}.")

    @classmethod
    def from_seed(cls, seed: int, **kwargs: Any) -> SuperResOptions:
        """Build options whose model config carries ``seed`` (the other settings as given)."""
        return cls(config=SuperResConfig(seed=int(seed)), **kwargs)


@dataclass
class SuperResResult:
    """A fitted super-resolution model on a slide's superpixel grid (image pixels)."""

    model: SuperResModel
    grid: SuperpixelGrid
    resolution_um: float
    meta: dict[str, Any]

    @property
    def genes(self) -> list[str]:
        """Genes the model predicts."""
        return list(self.model.genes)


def _unit_pitch(centres: np.ndarray) -> float:
    from napari_histosge.geometry import lattice_pitch

    return lattice_pitch(centres) if len(centres) >= 2 else 1.0


def units_superpixel_grid(
    centres: np.ndarray, diameter_px: float, step: float, *, pitch: float | None = None
) -> tuple[SuperpixelGrid, tuple[np.ndarray, np.ndarray]]:
    """Return the superpixel grid over measured units, and the box ``(lo, hi)`` it was laid in.

    Superpixels of side ``step`` (scale-0 pixels) are kept within reach of a unit centre (three
    quarters of the units' ``pitch``, measured from ``centres`` by default, or the units'
    radius if larger), with pinholes in that mask closed.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    from napari_histosge.geometry.footprints import SuperpixelGrid, superpixel_grid

    pitch = _unit_pitch(centres) if pitch is None else pitch
    reach = max(0.75 * pitch, diameter_px / 2.0)
    lo, hi = centres.min(0) - reach - step, centres.max(0) + reach + step
    tree = cKDTree(centres)
    grid = superpixel_grid(
        (lo[0], lo[1], hi[0], hi[1]), step, keep=lambda p: tree.query(p)[0] <= reach
    )
    # Close pinholes in the mask (lattice points a little farther than `reach` from a unit).
    closed = ndimage.binary_closing(grid.mask, np.ones((3, 3), bool), border_value=0)
    return SuperpixelGrid(grid.origin, grid.step, grid.mask | closed), (lo, hi)


#: Most cells of a superpixel grid over its box; the finest resolution of a slide follows.
MAX_GRID_CELLS = 8_000_000


def resolution_range(
    centres_px: np.ndarray, diameters_px: np.ndarray, um_per_px: float
) -> tuple[float, float]:
    """Return the finest and coarsest superpixel side (µm) for units at ``centres_px``.

    The finest is the image's pixel, or the side at which the grid over the units would have
    :data:`MAX_GRID_CELLS` cells; the coarsest is the smallest unit's diameter (a coarser
    superpixel would hold several units and the map would say less than the units do).

    Examples
    --------
    >>> xy = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])
    >>> resolution_range(xy, np.full(4, 55.0), 1.0)
    (1.0, 55.0)
    """
    c = np.asarray(centres_px, dtype=float)
    d = np.asarray(diameters_px, dtype=float)
    pitch = _unit_pitch(c)
    reach = max(0.75 * pitch, float(d.max()) / 2.0)
    side = (c.max(0) - c.min(0) + 2.0 * reach) * um_per_px
    finest = max(float(um_per_px), float(np.sqrt(side[0] * side[1] / MAX_GRID_CELLS)))
    return finest, float(d.min()) * um_per_px


def check_resolution(resolution_um: float, finest: float, coarsest: float) -> float:
    """Return ``resolution_um`` if it lies in ``[finest, coarsest]``, else raise one clear line.

    Examples
    --------
    >>> check_resolution(8.0, 1.0, 55.0)
    8.0
    >>> check_resolution(200.0, 1.0, 55.0)
    Traceback (most recent call last):
    ...
    ValueError: Expected a map resolution between 1 and 55 µm for this slide (finest: ...
    """
    r = float(resolution_um)
    if not (np.isfinite(r) and finest * (1 - 1e-9) <= r <= coarsest * (1 + 1e-9)):
        raise ValueError(
            f"Expected a map resolution between {finest:.3g} and {coarsest:.3g} µm for this "
            f"slide (finest: the image's pixel or {MAX_GRID_CELLS:,} grid cells; coarsest: the "
            f"smallest unit's diameter), found {resolution_um:g} µm."
        )
    return r


def unit_depths(table: Any) -> np.ndarray | None:
    """Total counts of each unit (row of ``table``), or ``None`` when they are not known.

    They are not known when the table holds log-normalised values instead of raw counts, or
    when a unit has no counts (the count-density map needs positive depths).

    Examples
    --------
    >>> import anndata as ad
    >>> unit_depths(ad.AnnData(np.array([[1.0, 2.0], [0.0, 5.0]]))).tolist()
    [3.0, 5.0]
    >>> unit_depths(ad.AnnData(np.array([[0.5, 2.0], [0.0, 5.0]]))) is None
    True
    """
    from napari_histosge.expression import count_matrix, is_log_normalized

    if is_log_normalized(table):
        return None
    counts, _ = count_matrix(table)
    depth = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    return depth if bool(np.all(depth > 0)) else None


@dataclass(frozen=True)
class SlideGrid:
    """The superpixel grid of a slide's measured units (see :func:`slide_grid`)."""

    kind: str  # footprint kind of the units
    footprints: Any  # the units' footprints (for :func:`~.geometry.footprints.unit_membership`)
    grid: SuperpixelGrid
    box: tuple[np.ndarray, np.ndarray]  # (lo, hi) corners the grid was laid in (pixels)
    resolution_um: float
    step: float  # superpixel side in scale-0 pixels


def slide_grid(slide: Slide, resolution_um: float | None = None) -> SlideGrid:
    """Lay the superres grid over a slide's units at a valid resolution.

    ``None``: 8 µm or a quarter of the smallest unit's diameter (no finer than the finest
    allowed); otherwise ``resolution_um`` is checked against :func:`resolution_range`.

    Examples
    --------
    >>> sg = slide_grid(slide, 8.0)  # doctest: +SKIP
    >>> sg.grid.n, sg.resolution_um  # doctest: +SKIP
    """
    from napari_histosge.geometry.footprints import default_resolution, unit_footprints

    keys = slide.keys
    geom = slide.geometry
    um = geom.um_per_px
    kind, footprints, diam_px = unit_footprints(
        slide.sdata, image_key=keys.image_key, spots_key=keys.spots_key, table_key=keys.table_key
    )
    finest, coarsest = resolution_range(geom.centers_px, diam_px, um)
    if resolution_um is None:
        res_um = max(default_resolution(diam_px * um, DEFAULT_RESOLUTION_UM), finest)
    else:
        res_um = check_resolution(resolution_um, finest, coarsest)
    step = res_um / um
    grid, box = units_superpixel_grid(geom.centers_px, float(diam_px.max()), step)
    return SlideGrid(kind, footprints, grid, box, res_um, step)


def iter_superres(
    slide: Slide,
    *,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 1000,
    options: SuperResOptions | None = None,
) -> Generator[Progress, None, SuperResResult]:
    """Fit the super-resolution model to a slide's measured units, yielding progress.

    Parameters
    ----------
    slide
        The slide (units may be circles or (Multi)Polygons).
    genes
        Genes to model; highly variable genes when ``None``.
    n_top_genes
        Number of highly variable genes.
    options
        Resolution, encoder and model settings.

    Returns
    -------
    The model and its superpixel grid.

    Examples
    --------
    >>> res = run_generator(iter_superres(slide, genes=["Gfap"]))  # doctest: +SKIP
    """
    from napari_histosge.geometry.footprints import unit_membership
    from napari_histosge.models.superres import iter_fit_superres

    opts = options or SuperResOptions()
    sg = slide_grid(slide, opts.resolution_um)
    grid, res_um, kind, footprints = sg.grid, sg.resolution_um, sg.kind, sg.footprints
    um = slide.geometry.um_per_px
    pos = grid.positions
    yield Progress("superres", 0, 3, f"{grid.n} superpixels of {res_um:g} µm")
    feats, fmeta = yield from cached_features(slide, opts, pos, sg.step, sg.box, res_um)
    if opts.cell_features:
        from napari_histosge.cells.features import iter_add_cell_features

        feats, fmeta = yield from iter_add_cell_features(slide, feats, fmeta, pos)
    member = unit_membership(kind, footprints, pos)
    targets = slide.targets(genes=genes, n_top_genes=n_top_genes)
    model = yield from iter_fit_superres(
        feats,
        pos * um,
        member,
        np.asarray(targets.values, dtype=np.float64),
        genes=list(targets.genes),
        config=opts.config,
        depth=unit_depths(slide.table) if opts.config.measurement == "poisson" else None,
    )
    meta = {
        "model": model.config_dict(),
        "resolution_um": res_um,
        "footprints": kind,
        "features": fmeta,
        "options": {k: v for k, v in asdict(opts).items() if k != "config"},
    }
    return SuperResResult(model=model, grid=grid, resolution_um=res_um, meta=meta)


def superres_maps(
    result: SuperResResult,
    *,
    genes: Sequence[str] | None = None,
    chunk: int = 16,
    max_bytes: int = 1 << 30,
    what: Literal["mean", "sd"] = "mean",
) -> GeneMaps:
    """Render genes from the superpixel predictions: one map pixel per superpixel.

    Off-grid pixels are NaN. The maps carry pyramid scale factors so that the export writes
    them multiscale and chunked. Maps larger than ``max_bytes`` are a lazy dask array computed
    ``chunk`` genes at a time, so that whole slides with 1,000 genes never sit in memory.
    ``what="sd"`` renders the maps' standard deviations instead (same grid and genes).

    Examples
    --------
    >>> maps = superres_maps(res, genes=["Gfap"])  # doctest: +SKIP
    """
    names = list(result.genes) if genes is None else [str(g) for g in genes]
    if not names:
        raise ValueError("Expected at least one gene to render, found none.")
    result.model.gene_index(names)  # unknown genes raise here
    grid = result.grid
    h, w = grid.shape
    rows, cols = grid.rows_cols
    where = (rows, cols, (h, w))
    model, unc, bits = result.model, None, SD_MANTISSA_BITS if what == "sd" else None
    if what == "sd":  # on the map's pixels themselves (NaN off the grid): nothing to place
        model.predict_sd(names[:1])  # a model without its uncertainty raises here
        unc = replace(model.uncertainty, node_var=on_map(model.uncertainty.node_var, *where))
        if unc.image_lev is not None:
            unc.image_lev = on_map(unc.image_lev, *where)

    def block(sub: list[str]) -> np.ndarray:
        if unc is not None:
            sd = unc.sd(model.gene_index(sub)).T.reshape(len(sub), h, w)
            return keep_mantissa(sd, bits)
        out = np.full((len(sub), h, w), np.nan, dtype=np.float32)
        place_on_grid(out, rows, cols, model.predict(sub).T)
        return out

    chunks = [names[g0 : g0 + chunk] for g0 in range(0, len(names), chunk)]
    if len(names) * h * w * 4 <= max_bytes:
        data: Any = np.concatenate([block(c) for c in chunks])
    else:
        import dask.array

        lazy = dask.delayed(block)
        parts = [dask.array.from_delayed(lazy(c), (len(c), h, w), np.float32) for c in chunks]
        data = dask.array.concatenate(parts)
    return GeneMaps(
        data=data,
        genes=names,
        pitch_px=float(grid.step),
        origin_px=(float(grid.origin[0]), float(grid.origin[1])),
        scale_factors=pyramid_factors(h, w),
        mantissa_bits=bits,
    )


def superres_uncertainty_maps(
    result: SuperResResult, *, genes: Sequence[str] | None = None, **kwargs: Any
) -> GeneMaps:
    """Render the standard deviation of the maps of ``genes`` (see :func:`superres_maps`).

    Examples
    --------
    >>> sd_maps = superres_uncertainty_maps(res, genes=["Gfap"])  # doctest: +SKIP
    """
    return superres_maps(result, genes=genes, what="sd", **kwargs)


def superres_predictions(slide: Slide, result: SuperResResult, *, chunk: int = 64) -> Predictions:
    """Per-unit predictions: the map's mean over each unit's footprint (table for export).

    With the exact projection in log space (the default), these means are the units' fitted
    values by construction. The first ``chunk`` genes are predicted to confirm it (to float32
    rounding of the maps); the other genes then take the fitted values, so that a whole slide's
    maps are not computed once more for the table. Otherwise every gene is predicted.
    """
    from napari_histosge.predict import Predictions

    model = result.model
    genes = list(model.genes)
    values = np.empty((model.membership.shape[0], len(genes)), dtype=np.float32)
    exact = model.config.exact and model.config.aggregate == "log"
    for g0 in range(0, len(genes), chunk):
        cols = slice(g0, min(g0 + chunk, len(genes)))
        if exact and g0 > 0:
            values[:, cols] = model.values[:, cols]
            continue
        means = np.asarray(model.membership @ model.predict(genes[cols]))
        values[:, cols] = means
        fitted = model.values[:, cols]
        exact = exact and bool(
            np.abs(means - fitted).max() <= 1e-5 * max(1.0, float(np.abs(fitted).max()))
        )
    geom = slide.geometry
    n = len(values)
    return Predictions(
        genes=genes,
        positions_px=np.asarray(geom.centers_px, dtype=float),
        values=values,
        kind=np.array(["spot"] * n, dtype=str),
        ids=np.asarray(geom.spot_ids, dtype=str),
        spot_diameter_px=float(geom.diameter_px),
        meta=dict(result.meta),
        gene_info={k: v.to_numpy(dtype=np.float64) for k, v in model.reliability().items()}
        if model.uncertainty is not None
        else {},
    )


def export_superres(
    slide: Slide,
    result: SuperResResult,
    *,
    out: str | Path,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    domains: int | None = None,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
    in_place: bool = False,
) -> tuple[Path, GeneMaps]:
    """Write the per-unit predictions and the superpixel maps of every gene into ``out``.

    With a model fitted with its uncertainty (the default), ``histosge_uncertainty`` (the
    maps' standard deviations) is written too and the table's ``var`` holds each gene's
    reliability; ``domains=k`` adds ``histosge_domains`` and ``histosge_domain_genes``.
    ``extra`` holds further parsed ``histosge_*`` elements (see
    :func:`napari_histosge.workflows.export.build_output`).

    Examples
    --------
    >>> path, maps = export_superres(slide, res, out="out.zarr", domains=6)  # doctest: +SKIP
    """
    from napari_histosge.models.domains import superres_domains
    from napari_histosge.store import UNCERTAINTY_KEY

    from .export import domain_elements, parse_maps, write_predictions

    preds = superres_predictions(slide, result)
    maps = superres_maps(result)
    new: dict[str, Any] = dict(extra or {})
    image_key = slide.keys.image_key
    if result.model.uncertainty is not None:
        # Lazy, a block of genes at a time while it is written: never beside the maps in memory.
        sd_maps = superres_uncertainty_maps(result, max_bytes=0)
        new[UNCERTAINTY_KEY] = parse_maps(slide.sdata, image_key, sd_maps)
    if domains:
        found = superres_domains(result, k=int(domains), seed=seed)
        new.update(domain_elements(slide.sdata, image_key, found))
    info = dict(preds.meta)
    info.update(meta or {})
    path = write_predictions(
        slide.sdata,
        None if in_place else out,
        image_key=image_key,
        predictions=preds,
        maps=maps,
        meta=info,
        overwrite=overwrite,
        in_place=in_place,
        extra=new,
    )
    return path, maps
