"""The super-resolution step on a slide: superpixel grid, dense features, fit, maps.

``iter_superres`` lays a grid of superpixels (``resolution_um``; by default 8 µm or a quarter
of the smallest unit's diameter, whichever is finer) over the measured units, computes the
dense image features once over that area, fits :mod:`napari_histosge.models.superres` to the
units' footprints and returns the model with its grid; ``superres_maps`` renders any genes as
:class:`~napari_histosge.maps.GeneMaps` placed on the H&E (one map pixel per superpixel).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._progress import Progress
from .features.dense import DEFAULT_SCALES_UM
from .maps import GeneMaps
from .models.superres import SuperResConfig

if TYPE_CHECKING:
    from .geometry.footprints import SuperpixelGrid
    from .models.superres import SuperResModel
    from .pipeline import Slide
    from .predict import Predictions

__all__ = [
    "DEFAULT_RESOLUTION_UM",
    "SuperResOptions",
    "SuperResResult",
    "iter_superres",
    "export_superres",
    "superres_maps",
    "superres_predictions",
    "units_superpixel_grid",
]

#: Superpixel side (µm) unless the units are smaller than four times this.
DEFAULT_RESOLUTION_UM = 8.0


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
    config: SuperResConfig = field(default_factory=SuperResConfig)

    def __post_init__(self) -> None:
        from ._validation import assert_at_least

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
    from .geometry import lattice_pitch

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

    from .geometry.footprints import SuperpixelGrid, superpixel_grid

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
    from .expression import count_matrix, is_log_normalized

    if is_log_normalized(table):
        return None
    counts, _ = count_matrix(table)
    depth = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    return depth if bool(np.all(depth > 0)) else None


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
    from .geometry.footprints import default_resolution, unit_footprints, unit_membership
    from .models.superres import iter_fit_superres

    opts = options or SuperResOptions()
    keys = slide.keys
    geom = slide.geometry
    um = geom.um_per_px
    kind, footprints, diam_px = unit_footprints(
        slide.sdata, image_key=keys.image_key, spots_key=keys.spots_key, table_key=keys.table_key
    )
    if opts.resolution_um is None:
        res_um = default_resolution(diam_px * um, DEFAULT_RESOLUTION_UM)
    else:
        res_um = float(opts.resolution_um)
        if not (np.isfinite(res_um) and res_um > 0):
            raise ValueError(f"Expected a positive resolution in µm, found `{res_um}`.")
    step = res_um / um
    grid, (lo, hi) = units_superpixel_grid(geom.centers_px, float(diam_px.max()), step)
    pos = grid.positions
    yield Progress("superres", 0, 3, f"{grid.n} superpixels of {res_um:g} µm")
    feats, fmeta = yield from _cached_features(slide, opts, pos, step, (lo, hi), res_um)
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


def _cached_features(
    slide: Slide,
    opts: SuperResOptions,
    pos: np.ndarray,
    step: float,
    box: tuple[Any, Any],
    res_um: float,
) -> Generator[Progress, None, tuple[np.ndarray, dict[str, Any]]]:
    """Superpixel features from the store's cache, or computed once and cached there."""
    from .features import get_encoder
    from .features.cache import cache_element_name, cache_key, lookup, positions_digest, store
    from .features.dense import histology_dense_maps, superpixel_features
    from .features.histology import HistologyEncoder

    um = slide.geometry.um_per_px
    lo, hi = box
    enc: Any = None
    tiling: dict[str, Any] = {}  # the ViT tiling the features depend on, checked on lookup
    if opts.encoder == "histology":
        encoder_id = HistologyEncoder().id
        sizes_um = [float(v) for v in opts.scales_um]
    else:
        from .features.vit_tiles import tiles_provenance, token_tiles

        enc = get_encoder(opts.encoder, weights=opts.weights, device=opts.device, bf16=opts.bf16)
        encoder_id = enc.id
        own = max(step * um, 0.5 * int(enc.model.patch_embed.patch_size[0]))
        sizes_um = [own, 3 * own]
        tiling = tiles_provenance(token_tiles(enc, slide.sdata.images[slide.keys.image_key], um))
    sizes_px = [v / um for v in sizes_um]
    name = cache_element_name(f"superpixels_{res_um:g}um".replace(".", "p"))
    key = cache_key(encoder_id, sizes_um)
    digest = positions_digest(pos)
    hit = lookup(slide.sdata, name, key, digest, sizes_px, require=tiling) if opts.cache else None
    if hit is not None:
        return hit[0], {**hit[1], "from_cache": True}
    if enc is None:
        ctx = max(sizes_um) / um
        extent = (lo[0] - ctx, lo[1] - ctx, hi[0] + ctx, hi[1] + ctx)
        maps = yield from histology_dense_maps(slide.sdata.images[slide.keys.image_key], um, extent)
        feats = superpixel_features(maps, pos, scales_um=sizes_um)
    else:
        feats = yield from _vit_features(slide, enc, pos, sizes_px, box, opts.batch_size)
    meta = {
        "encoder": opts.encoder,
        "encoder_id": encoder_id,
        "dim": int(feats.shape[1]),
        "positions_digest": digest,
        "patch_sizes_px": sizes_px,
        "patch_sizes_um": sizes_um,
        "resolution_um": res_um,
        "positions": "superpixels",
        **tiling,
    }
    if opts.cache:
        store(slide.sdata, name, key, pos, feats, meta)
    return feats, {**meta, "from_cache": False}


def _vit_features(
    slide: Slide,
    enc: Any,
    pos: np.ndarray,
    sizes_px: Sequence[float],
    box: tuple[Any, Any],
    batch_size: int,
) -> Generator[Progress, None, np.ndarray]:
    """Patch-token features of a ViT: means over boxes of ``sizes_px`` around each superpixel."""
    from .features.dense import iter_vit_token_maps, pool_maps

    lo, hi = box
    maps = yield from iter_vit_token_maps(
        enc,
        slide.sdata.images[slide.keys.image_key],
        slide.geometry.um_per_px,
        (lo[0], lo[1], hi[0], hi[1]),
        batch_size=batch_size,
    )
    return np.concatenate([pool_maps(maps, pos, s) for s in sizes_px], axis=1)


def superres_maps(
    result: SuperResResult,
    *,
    genes: Sequence[str] | None = None,
    chunk: int = 16,
    max_bytes: int = 1 << 30,
) -> GeneMaps:
    """Render genes from the superpixel predictions: one map pixel per superpixel.

    Off-grid pixels are NaN. The maps carry pyramid scale factors so that the export writes
    them multiscale and chunked. Maps larger than ``max_bytes`` are a lazy dask array computed
    ``chunk`` genes at a time, so that whole slides with 1,000 genes never sit in memory.

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

    def block(sub: list[str]) -> np.ndarray:
        out = np.full((len(sub), h, w), np.nan, dtype=np.float32)
        out[:, rows, cols] = result.model.predict(sub).T
        return out

    chunks = [names[g0 : g0 + chunk] for g0 in range(0, len(names), chunk)]
    if len(names) * h * w * 4 <= max_bytes:
        data: Any = np.concatenate([block(c) for c in chunks])
    else:
        import dask
        import dask.array as da

        data = da.concatenate(
            [
                da.from_delayed(dask.delayed(block)(c), (len(c), h, w), dtype=np.float32)
                for c in chunks
            ]
        )
    factors = []
    side = max(h, w)
    while side >= 256 and len(factors) < 5:
        factors.append(2)
        side //= 2
    return GeneMaps(
        data=data,
        genes=names,
        pitch_px=float(grid.step),
        origin_px=(float(grid.origin[0]), float(grid.origin[1])),
        scale_factors=tuple(factors),
    )


def superres_predictions(slide: Slide, result: SuperResResult, *, chunk: int = 64) -> Predictions:
    """Per-unit predictions: the map's mean over each unit's footprint (table for export).

    With the exact projection in log space (the default), these means are the units' fitted
    values by construction. The first ``chunk`` genes are predicted to confirm it (to float32
    rounding of the maps); the other genes then take the fitted values, so that a whole slide's
    maps are not computed once more for the table. Otherwise every gene is predicted.
    """
    from .predict import Predictions

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
    )


def export_superres(
    slide: Slide,
    result: SuperResResult,
    *,
    out: str | Path,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> tuple[Path, GeneMaps]:
    """Write the per-unit predictions and the superpixel maps of every gene into ``out``.

    Examples
    --------
    >>> path, maps = export_superres(slide, res, out="out.zarr")  # doctest: +SKIP
    """
    from .pipeline import export_slide

    preds = superres_predictions(slide, result)
    maps = superres_maps(result)
    path = export_slide(
        slide, predictions=preds, maps=maps, out=out, meta=meta, overwrite=overwrite
    )
    return path, maps
