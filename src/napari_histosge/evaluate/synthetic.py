"""Synthetic slides with a known sub-spot truth, and super-resolution maps scored against it.

:func:`synthetic_slide` draws a few cell-type-like fields at sub-spot scale (smooth random
fields turned into per-pixel type fractions by a softmax), renders an H&E-like image from them
(each type has its own colour and its own nuclei: density and size) and gives every type an
expression profile. The truth at any superpixel is the mixture of the profiles by the type
fractions under it (log1p of the rates normalised to 1e4, the model's target space).
Optionally a share of the expression follows one more field that the image does not show
(``hidden``), so image-driven and image-blind signal can be mixed. Visium-like spots (55 µm,
100 µm apart on a hexagonal lattice) measure negative binomial counts of the mixture under
their footprints.

:func:`score_synthetic` runs the super-resolution step exactly as ``histosge run --mode
superres`` does (:func:`napari_histosge.workflows.superres.iter_superres`) and the no-image
baselines of :func:`napari_histosge.evaluate.superres.superres_baselines` on the same
superpixels, and scores every map against the truth at the map's resolution: Pearson r per
gene over the superpixels, and SSIM per gene on the 2-D map (scikit-image, Gaussian 11-pixel
window with sigma 1.5 as in Wang et al. 2004, data range of the truth, averaged over the
superpixels of the grid; the pixels off the grid hold the truth's mean in both maps).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.base.progress import run_generator
from napari_histosge.metrics import pearson_per_gene

from .superres import superres_baselines

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from napari_histosge.models.superres import SuperResConfig

__all__ = ["SyntheticConfig", "SyntheticSlide", "score_synthetic", "synthetic_slide"]

#: RGB of the cytoplasm / stroma of each type and its nuclei: density per 100 µm², radius (µm).
_TYPES = (
    ((236, 168, 196), 0.6, 2.5),  # stroma: pink, sparse nuclei
    ((196, 128, 186), 3.0, 4.0),  # tumour: purple, dense large nuclei
    ((218, 160, 206), 7.0, 2.0),  # immune: light, very dense small nuclei
    ((246, 236, 242), 0.0, 0.0),  # fat / glass: pale, no nuclei
    ((226, 140, 170), 1.5, 3.0),  # muscle-like: red, medium nuclei
    ((205, 175, 215), 4.5, 3.0),  # lavender, medium-dense nuclei
)
_NUCLEUS = np.array((78, 46, 128), dtype=np.float32)


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of a synthetic slide.

    Parameters
    ----------
    size_px
        Image side in pixels.
    um_per_px
        Resolution.
    n_types
        Cell-type-like fields (at most 6).
    n_genes
        Genes.
    type_scale_um
        Smoothing (Gaussian sigma, µm) of the type fields: the scale of the tissue pattern.
    sharpness
        Softmax gain of the type fields: larger gives purer regions.
    hidden
        Largest share of expression that follows a field the image does not show (0: the image
        explains all of it).
    umi_per_spot
        Mean counts per spot.
    dispersion
        Negative binomial dispersion (variance = mean + dispersion x mean²).
    seed
        Everything drawn is a function of this seed.
    """

    size_px: int = 1000
    um_per_px: float = 1.0
    n_types: int = 4
    n_genes: int = 40
    type_scale_um: float = 14.0
    sharpness: float = 3.0
    hidden: float = 0.0
    umi_per_spot: float = 5000.0
    dispersion: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.n_types <= len(_TYPES):
            raise ValueError(f"Expected 2 to {len(_TYPES)} types, found `{self.n_types}`.")
        if not 0.0 <= self.hidden < 1.0:
            raise ValueError(f"Expected `hidden` in [0, 1), found `{self.hidden}`.")
        if self.size_px * self.um_per_px < 300:
            raise ValueError(
                f"Expected a slide of at least 300 µm, found {self.size_px * self.um_per_px} µm."
            )
        if self.n_genes < 2:
            raise ValueError(f"Expected at least 2 genes, found `{self.n_genes}`.")


@dataclass
class SyntheticSlide:
    """A synthetic slide and its truth.

    Parameters
    ----------
    sdata
        Image ``he``, circles ``spots``, counts table ``table``.
    config
        How it was drawn.
    fractions
        ``(sources, h, w)`` per-pixel fractions of every type (and of the hidden source, last,
        when ``config.hidden > 0``); they sum to 1 at every pixel.
    profiles
        ``(sources, genes)`` expression rates of every source (rows sum to 1).
    genes
        Gene names.
    nuclei
        ``(h, w)`` int32 labels of the nuclei drawn (0 = none; a nucleus drawn over an
        earlier one hides it where they overlap), the truth of a nucleus segmentation.
    """

    sdata: SpatialData
    config: SyntheticConfig
    fractions: np.ndarray
    profiles: np.ndarray
    genes: list[str]
    nuclei: np.ndarray | None = None

    def truth(self, positions_px: np.ndarray, side_px: float) -> np.ndarray:
        """Return the true log-normalised expression of ``side_px`` squares around positions.

        Returns
        -------
        ``(n, genes)``: ``log1p(1e4 x rates)`` of the mixture under each square.
        """
        from napari_histosge.features._boxes import box_means, summed_area

        xy = np.asarray(positions_px, dtype=float).reshape(-1, 2)
        sat = summed_area(self.fractions)
        h = float(side_px) / 2.0
        frac = box_means(sat, xy[:, 0] - h, xy[:, 1] - h, xy[:, 0] + h, xy[:, 1] + h)
        rates = frac @ self.profiles
        return np.log1p(1e4 * rates / rates.sum(1, keepdims=True))


def _fields(rng: np.random.Generator, n: int, size: int, sigma_px: float) -> np.ndarray:
    """``n`` standardised smooth random fields of ``size x size`` pixels."""
    from scipy.ndimage import gaussian_filter

    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        f = gaussian_filter(rng.standard_normal((size, size)), sigma_px, mode="reflect")
        out[i] = (f - f.mean()) / max(f.std(), 1e-12)
    return out


def _render(
    rng: np.random.Generator, frac: np.ndarray, um_per_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """H&E-like ``(3, h, w)`` uint8 image of the type fractions ``(types, h, w)``; its nuclei."""
    k, h, w = frac.shape
    labels = np.zeros((h, w), np.int32)
    drawn = 0
    colours = np.array([t[0] for t in _TYPES[:k]], dtype=np.float32)
    rgb = np.einsum("khw,kc->hwc", frac, colours)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(k):
        _, density, radius_um = _TYPES[i]
        n = int(rng.poisson(density * h * w * um_per_px**2 / 1e4))
        if n == 0:
            continue
        cx, cy = rng.uniform(0, w, n), rng.uniform(0, h, n)
        keep = rng.uniform(size=n) < frac[i, cy.astype(int), cx.astype(int)]
        r = radius_um / um_per_px
        mask = np.zeros((h, w), bool)
        for x, y in zip(cx[keep], cy[keep], strict=True):
            x0, x1 = max(0, int(x - r - 1)), min(w, int(x + r + 2))
            y0, y1 = max(0, int(y - r - 1)), min(h, int(y + r + 2))
            sub = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2 <= r * r
            mask[y0:y1, x0:x1] |= sub
            drawn += 1
            labels[y0:y1, x0:x1][sub] = drawn
        rgb[mask] = 0.25 * rgb[mask] + 0.75 * _NUCLEUS
    rgb += rng.normal(0.0, 6.0, rgb.shape).astype(np.float32)
    return np.moveaxis(np.clip(rgb, 0, 255).round().astype(np.uint8), -1, 0), labels


def _hex_spots(size_px: int, um_per_px: float) -> np.ndarray:
    """Visium lattice (100 µm pitch), 100 µm from the edge: the superpixel grid stays inside."""
    pitch = 100.0 / um_per_px
    edge = 100.0 / um_per_px
    rows = np.arange(edge, size_px - edge + 1e-9, pitch * np.sqrt(3) / 2)
    pts = []
    for r, y in enumerate(rows):
        xs = np.arange(edge + (pitch / 2 if r % 2 else 0.0), size_px - edge + 1e-9, pitch)
        pts.extend((x, y) for x in xs)
    return np.asarray(pts, dtype=float)


def synthetic_slide(config: SyntheticConfig | None = None) -> SyntheticSlide:
    """Draw a synthetic slide whose expression is a known function of the image at sub-spot scale.

    Examples
    --------
    >>> syn = synthetic_slide(SyntheticConfig(size_px=400, n_genes=5))
    >>> syn.fractions.shape, syn.sdata.tables["table"].n_obs
    ((4, 400, 400), 8)
    """
    import scipy.sparse as sp
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel

    from napari_histosge.geometry.footprints import circle_membership
    from napari_histosge.io._elements import make_circles, make_table

    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    size, um = int(cfg.size_px), float(cfg.um_per_px)
    z = _fields(rng, cfg.n_types, size, cfg.type_scale_um / um)
    e = np.exp(cfg.sharpness * (z - z.max(0, keepdims=True)))
    visible = (e / e.sum(0, keepdims=True)).astype(np.float32)
    image, nuclei = _render(rng, visible, um)
    base = rng.lognormal(0.0, 1.0, cfg.n_genes)
    n_src = cfg.n_types + (1 if cfg.hidden > 0 else 0)
    profiles = base * rng.lognormal(0.0, 1.0, (n_src, cfg.n_genes))
    profiles /= profiles.sum(1, keepdims=True)
    if cfg.hidden > 0:
        hid = _fields(rng, 1, size, 4.0 * cfg.type_scale_um / um)[0]
        w = (cfg.hidden / (1.0 + np.exp(-2.0 * hid))).astype(np.float32)
        fractions = np.concatenate([visible * (1.0 - w), w[None]], axis=0)
    else:
        fractions = visible
    xy = _hex_spots(size, um)
    radius = 27.5 / um
    gy, gx = np.mgrid[0:size, 0:size]
    pix = np.c_[gx.ravel() + 0.5, gy.ravel() + 0.5]
    member = circle_membership(pix, xy, np.full(len(xy), radius))
    frac_spots = np.asarray(member @ fractions.reshape(n_src, -1).T)
    mu = cfg.umi_per_spot * (frac_spots @ profiles)
    shape = 1.0 / cfg.dispersion
    counts = rng.poisson(rng.gamma(shape, mu / shape)).astype(np.float32)
    genes = [f"Gene{g:03d}" for g in range(cfg.n_genes)]
    ids = [f"spot{i:04d}" for i in range(len(xy))]
    table = make_table(sp.csr_matrix(counts), ids, genes, "spots", xy, {"spot_diameter_um": 55.0})
    sdata = SpatialData(
        images={"he": Image2DModel.parse(image, dims=("c", "y", "x"), c_coords=["r", "g", "b"])},
        shapes={"spots": make_circles(xy, radius)},
        tables={"table": table},
    )
    return SyntheticSlide(sdata, cfg, fractions.astype(np.float32), profiles, genes, nuclei)


def _ssim(
    pred: np.ndarray, truth: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: Any
) -> float:
    """SSIM of one gene's map against the truth, averaged over the grid's superpixels."""
    from skimage.metrics import structural_similarity

    fill = float(truth.mean())
    a = np.full(shape, fill, dtype=np.float64)
    b = np.full(shape, fill, dtype=np.float64)
    a[rows, cols], b[rows, cols] = pred, truth
    rng = float(truth.max() - truth.min())
    if rng <= 0:
        return float("nan")
    _, full = structural_similarity(
        a,
        b,
        data_range=rng,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    return float(full[rows, cols].mean())


def score_synthetic(
    syn: SyntheticSlide,
    *,
    configs: Mapping[str, SuperResConfig] | None = None,
    resolution_um: float | None = None,
) -> dict[str, Any]:
    """Fit the super-resolution model and the baselines on a synthetic slide; score vs the truth.

    Parameters
    ----------
    syn
        The slide (:func:`synthetic_slide`).
    configs
        Super-resolution model settings by name (``{"superres": SuperResConfig()}`` when
        ``None``).
    resolution_um
        Superpixel side; the step's default when ``None``.

    Returns
    -------
    ``{"mean_r": {method: float}, "mean_ssim": {...}, "per_gene_r": {...},
    "per_gene_ssim": {...}, "n_superpixels", "n_spots", "resolution_um", "config"}``.

    Examples
    --------
    >>> res = score_synthetic(synthetic_slide())  # doctest: +SKIP
    >>> res["mean_r"]["superres"] > res["mean_r"]["own_unit"]  # doctest: +SKIP
    True
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    from napari_histosge.models.superres import SuperResConfig
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import SuperResOptions, iter_superres

    slide = Slide.open(syn.sdata)
    out: dict[str, Any] = {"mean_r": {}, "mean_ssim": {}, "per_gene_r": {}, "per_gene_ssim": {}}
    maps: dict[str, np.ndarray] = {}
    grid = None
    for name, cfg in (configs or {"superres": SuperResConfig()}).items():
        opts = SuperResOptions(resolution_um=resolution_um, config=cfg)
        res = run_generator(iter_superres(slide, genes=syn.genes, options=opts))
        grid, res_um = res.grid, res.resolution_um
        maps[name] = np.asarray(res.model.predict(syn.genes), dtype=np.float64)
    assert grid is not None
    size = syn.fractions.shape[-1]
    half = grid.step / 2.0
    inside = ((grid.positions >= half) & (grid.positions <= size - half)).all(1)
    pos = grid.positions[inside]
    maps = {k: v[inside] for k, v in maps.items()}
    truth = syn.truth(pos, grid.step)
    xy = slide.geometry.centers_px
    measured = slide.targets(genes=syn.genes).values
    label = cKDTree(xy).query(pos)[1]  # the unit each superpixel lies in (or is nearest to)
    base = superres_baselines(xy, measured, label, pos, sp.identity(len(pos), format="csr"))
    maps.update({k: np.asarray(v, dtype=np.float64) for k, v in base.items()})
    rows, cols = (rc[inside] for rc in grid.rows_cols)
    for name, pred in maps.items():
        r = pearson_per_gene(pred, truth)
        s = np.array(
            [_ssim(pred[:, g], truth[:, g], rows, cols, grid.shape) for g in range(truth.shape[1])]
        )
        out["mean_r"][name] = float(np.nanmean(r))
        out["mean_ssim"][name] = float(np.nanmean(s))
        out["per_gene_r"][name] = [round(float(v), 4) for v in r]
        out["per_gene_ssim"][name] = [round(float(v), 4) for v in s]
    out.update(
        n_superpixels=int(len(pos)),
        n_superpixels_off_image=int((~inside).sum()),
        n_spots=int(len(xy)),
        resolution_um=float(res_um),
        config=asdict(syn.config),
    )
    return out
