"""Several sections, one model; and sections with an H&E image only, for prediction.

Training on several sections pools their spots: genes are the ones every table measures, each
section is log-normalised on its own, and the sections are laid side by side in µm with a gap of
many spot pitches, so that no spot of one section is a spatial neighbour of another's.

A section to predict may have an H&E image only: with spot circles (no table) the model
predicts at those spots and their 4x positions; without spots it predicts on a lattice laid over
the tissue mask at the training spots' pitch.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.base.progress import Progress

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from napari_histosge.features import FeatureSet
    from napari_histosge.geometry import SpotGeometry
    from napari_histosge.models import TrainConfig
    from napari_histosge.models.trained import TrainedModel

    from .pipeline import ExtractOptions, Slide

__all__ = [
    "SECTION_GAP_PITCHES",
    "choose_genes",
    "common_genes",
    "iter_train_sections",
    "open_for_prediction",
    "place_apart",
]

#: Gap between sections laid side by side, in spot pitches.
SECTION_GAP_PITCHES = 50.0


def common_genes(slides: Sequence[Slide]) -> list[str]:
    """Genes measured in every section, in the first section's order.

    Examples
    --------
    >>> common_genes([slide_a, slide_b])[:3]  # doctest: +SKIP
    ['ERBB2', 'GRB7', 'KRT19']
    """
    if not slides:
        raise ValueError("Expected at least one section, found none.")
    shared = set(slides[0].genes)
    for s in slides[1:]:
        shared &= set(s.genes)
    genes = [g for g in slides[0].genes if g in shared]
    if not genes:
        raise ValueError("Expected genes measured in every section, found none in common.")
    return genes


def choose_genes(slides: Sequence[Slide], genes: Sequence[str], n_top_genes: int) -> list[str]:
    """Highly variable genes agreed by the sections: each ranks ``genes``; most votes win.

    Each section picks its ``n_top_genes`` highly variable genes among ``genes`` (scanpy's
    ``seurat_v3`` on its counts); genes picked by more sections come first, ties broken by the
    sum of their ranks.

    Examples
    --------
    >>> choose_genes([slide_a, slide_b], common_genes([slide_a, slide_b]), 250)  # doctest: +SKIP
    """
    from napari_histosge.expression import counts_or_lognorm, select_genes

    n = min(int(n_top_genes), len(genes))
    votes: dict[str, int] = {}
    ranks: dict[str, int] = {}
    for s in slides:
        table = s.table[:, list(genes)]
        _, lognorm = counts_or_lognorm(table)
        picked = select_genes(table, n_top_genes=n, lognorm=lognorm)
        for rank, g in enumerate(picked):
            votes[g] = votes.get(g, 0) + 1
            ranks[g] = ranks.get(g, 0) + rank
    for g in genes:  # genes no section picked rank last, each worst-ranked everywhere
        ranks[g] = ranks.get(g, 0) + n * (len(slides) - votes.get(g, 0))
    order = sorted(genes, key=lambda g: (-votes.get(g, 0), ranks[g]))
    return order[:n]


def place_apart(xy_um: Sequence[np.ndarray], *, gap_um: float) -> list[np.ndarray]:
    """Shift sections so they lie side by side along x, ``gap_um`` apart, none overlapping.

    Examples
    --------
    >>> a = np.array([[0.0, 0.0], [100.0, 0.0]]); b = a + 5.0
    >>> [p[:, 0].tolist() for p in place_apart([a, b], gap_um=1000.0)]
    [[0.0, 100.0], [1100.0, 1200.0]]
    """
    out = []
    x0 = 0.0
    for xy in xy_um:
        xy = np.asarray(xy, dtype=np.float64)
        shifted = xy - xy.min(axis=0) + np.array([x0, 0.0])
        out.append(shifted)
        x0 = float(shifted[:, 0].max()) + gap_um
    return out


def iter_train_sections(
    slides: Sequence[Slide],
    *,
    options: ExtractOptions | None = None,
    config: TrainConfig | None = None,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 1000,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Progress, None, TrainedModel]:
    """Train one model on the spots of several sections.

    Parameters
    ----------
    slides
        The sections (each with a table).
    options
        Feature extraction settings, the same for every section.
    config
        Training options.
    genes
        Genes to predict (all must be in every section); chosen by :func:`choose_genes`
        among the genes of every section when ``None``.
    n_top_genes
        Number of genes to choose when ``genes`` is ``None``.
    should_stop
        Cancellation check between epochs.

    Returns
    -------
    The model; ``info["sections"]`` names the sections and their spot counts.

    Examples
    --------
    >>> from napari_histosge import run_generator
    >>> model = run_generator(iter_train_sections([a, b, c]))  # doctest: +SKIP
    """
    from napari_histosge.geometry.lattice import lattice_pitch
    from napari_histosge.models import TrainConfig
    from napari_histosge.models.checkpoints import check_features
    from napari_histosge.train import iter_fit

    from .pipeline import ExtractOptions, iter_extract_at

    if not slides:
        raise ValueError("Expected at least one section to train on, found none.")
    opts = options or ExtractOptions()
    shared = common_genes(slides)
    if genes is None:
        chosen = choose_genes(slides, shared, n_top_genes)
    else:
        chosen = [str(g) for g in genes]
        missing = sorted(set(chosen) - set(shared))
        if missing:
            raise ValueError(
                f"Expected genes measured in every section, found {len(missing)} that are not, "
                f"e.g. {missing[:5]}."
            )
    encoder = opts.build_encoder()
    feats: list[FeatureSet] = []
    values, xy_um = [], []
    for s in slides:
        fs = yield from iter_extract_at(
            s, s.geometry.centers_px, options=opts, cache_name="spots", encoder=encoder
        )
        if feats:
            check_features_like(feats[0].meta, fs.meta)
        feats.append(fs)
        values.append(np.asarray(s.targets(genes=chosen).values, dtype=np.float32))
        xy_um.append(s.geometry.centers_um)
    pitch = max(lattice_pitch(xy) for xy in xy_um)
    placed = place_apart(xy_um, gap_um=SECTION_GAP_PITCHES * pitch)
    meta = dict(feats[0].meta)
    names = [
        str(s.source.name) if s.source is not None else f"section{i}" for i, s in enumerate(slides)
    ]
    meta["sections"] = names
    model = yield from iter_fit(
        np.concatenate([f.features for f in feats]),
        np.concatenate(placed),
        np.concatenate(values),
        genes=chosen,
        config=config or TrainConfig(),
        feature_meta=meta,
        should_stop=should_stop,
    )
    model.info["sections"] = [
        {"name": n, "spots": int(len(v))} for n, v in zip(names, values, strict=True)
    ]
    model.info["spot_diameter_um"] = float(
        np.median([s.geometry.diameter_px * s.geometry.um_per_px for s in slides])
    )
    check_features(model, feats[0].meta)
    return model


def check_features_like(first: dict[str, Any], other: dict[str, Any]) -> None:
    """Raise ``ValueError`` when two sections' features come from different encoders or sizes."""
    for key in ("encoder_id", "dim", "patch_sizes_spot", "pooling"):
        if (
            key in first
            and key in other
            and list(np.atleast_1d(first[key])) != list(np.atleast_1d(other[key]))
        ):
            raise ValueError(
                f"Expected every section's features to share `{key}` `{first[key]}`, found "
                f"`{other[key]}`."
            )


def _pick(container: Any, key: str | None, what: str, ok: Callable[[str], bool]) -> str | None:
    if key is not None:
        if key not in container:
            raise KeyError(f"Expected `{what}` to be one of {list(container)}, found `{key}`.")
        return key
    names = [k for k in container if not str(k).startswith("histosge_") and ok(k)]
    return names[0] if len(names) == 1 else None


def _circles_geometry(
    sdata: SpatialData, image_key: str, spots_key: str, um_per_px: float | None
) -> SpotGeometry:
    from napari_histosge.geometry import SpotGeometry
    from napari_histosge.geometry.lattice import detect_lattice
    from napari_histosge.geometry.spots import guess_um_per_px, spots_to_image_affine

    shapes = sdata.shapes[spots_key]
    to_px = spots_to_image_affine(sdata, image_key=image_key, spots_key=spots_key)
    xy = np.c_[shapes.geometry.x.to_numpy(), shapes.geometry.y.to_numpy(), np.ones(len(shapes))]
    centers = np.ascontiguousarray((xy @ to_px.T)[:, :2], dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(to_px[:2, :2]))))
    diameter_px = 2.0 * float(np.median(shapes["radius"].to_numpy(dtype=float))) * scale
    lattice = detect_lattice(centers)
    if um_per_px is None:
        um_per_px = guess_um_per_px(centers, lattice, diameter_px)
    return SpotGeometry(
        spot_ids=np.asarray(shapes.index.astype(str)),
        centers_px=centers,
        diameter_px=diameter_px,
        um_per_px=float(um_per_px),
        lattice=lattice,
        image_key=image_key,
    )


def _tissue_geometry(
    sdata: SpatialData, image_key: str, um_per_px: float, diameter_um: float, pitch_um: float
) -> SpotGeometry:
    from napari_histosge.geometry import SpotGeometry, tissue_mask
    from napari_histosge.images import image_levels

    mask, scale = tissue_mask(sdata.images[image_key])
    first = image_levels(sdata.images[image_key])[0]
    step = pitch_um / um_per_px
    gx = np.arange(step / 2, first.sizes["x"], step)
    gy = np.arange(step / 2, first.sizes["y"], step)
    grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    rc = np.minimum(np.floor(grid[:, ::-1] / scale).astype(int), np.array(mask.shape) - 1)
    centers = grid[mask[rc[:, 0], rc[:, 1]]]
    if len(centers) < 2:
        raise ValueError(
            f"Expected tissue on image `{image_key}`, found {len(centers)} positions on it at "
            f"{pitch_um:g} µm; check `um_per_px` ({um_per_px:g})."
        )
    return SpotGeometry(
        spot_ids=np.array([f"tissue_{i}" for i in range(len(centers))]),
        centers_px=centers,
        diameter_px=diameter_um / um_per_px,
        um_per_px=float(um_per_px),
        lattice="square",
        image_key=image_key,
    )


def open_for_prediction(
    src: str | Path | SpatialData,
    *,
    image_key: str | None = None,
    spots_key: str | None = None,
    table_key: str | None = None,
    um_per_px: float | None = None,
    model: TrainedModel | None = None,
) -> Slide:
    """Open a section to predict on; a table is optional, and so are the spots.

    With a table annotating the spots, this is :meth:`Slide.open`. Without one, the spots'
    circles (when there is one circles element, or ``spots_key``) give the positions; without
    spots, a square lattice over the tissue at the training spots' pitch does, and then
    ``um_per_px`` is required unless the store or whole-slide file records it.

    Parameters
    ----------
    src
        A ``.zarr`` store (or anything :func:`~napari_histosge.io.read_slide` reads) or a
        SpatialData object.
    image_key, spots_key, table_key
        Elements to use instead of the detected ones.
    um_per_px
        Micrometres per image pixel; detected from the spots when there are spots.
    model
        The model to apply: its training spot diameter and pitch size the tissue lattice.

    Returns
    -------
    The slide; ``keys.table_key`` is ``""`` when there is no table.

    Examples
    --------
    >>> slide = open_for_prediction("he_only.zarr", um_per_px=0.5, model=model)  # doctest: +SKIP
    """
    import spatialdata as sd

    from napari_histosge.io import SlideKeys, read_slide
    from napari_histosge.io.keys import is_circles, table_regions

    from .pipeline import Slide

    if isinstance(src, sd.SpatialData):
        sdata, source = src, Path(src.path) if getattr(src, "path", None) else None
    else:
        source = Path(src)
        sdata = sd.read_zarr(source) if source.suffix == ".zarr" else read_slide(source)
    annotating = [
        k
        for k, t in sdata.tables.items()
        if not str(k).startswith("histosge_")
        and any(is_circles(sdata, r) for r in table_regions(t))
    ]
    if table_key is not None or annotating:
        return Slide.open(sdata, image_key=image_key, spots_key=spots_key, table_key=table_key)
    if not sdata.images:
        raise ValueError("Expected an H&E image element in the store, found no image.")
    if image_key is None:
        from napari_histosge.images import image_levels

        candidates = [k for k in sdata.images if not str(k).startswith("histosge_")]
        if not candidates:
            raise ValueError("Expected an H&E image besides the histosge_* outputs, found none.")
        image_key = max(
            candidates,
            key=lambda k: int(np.prod([image_levels(sdata.images[k])[0].sizes[d] for d in "yx"])),
        )
    elif image_key not in sdata.images:
        raise KeyError(
            f"Expected `image_key` to be one of {list(sdata.images)}, found `{image_key}`."
        )
    spots = _pick(sdata.shapes, spots_key, "spots_key", lambda k: is_circles(sdata, k))
    if spots is not None:
        geom = _circles_geometry(sdata, image_key, spots, um_per_px)
    else:
        from napari_histosge.io.wsi import is_wsi_path, missing_um_message, stored_um_per_px

        if um_per_px is None:  # recorded from a whole-slide file's metadata
            um_per_px = stored_um_per_px(sdata, image_key)
        if um_per_px is None and source is not None and is_wsi_path(source):
            raise ValueError(missing_um_message(source))
        if um_per_px is None or not np.isfinite(um_per_px) or um_per_px <= 0:
            raise ValueError(
                "Expected `um_per_px` (--um-per-px) for a section with an image only (no spots "
                f"to measure the scale from), found `{um_per_px}`."
            )
        info = model.info if model is not None else {}
        diameter = float(info.get("spot_diameter_um", 55.0))
        pitch = float(np.asarray(model.arrays["pitch_um"]).reshape(-1)[0]) if model else 100.0
        geom = _tissue_geometry(sdata, image_key, um_per_px, diameter, pitch)
    keys = SlideKeys(image_key, spots or "", "")
    return Slide(sdata=sdata, keys=keys, geometry=geom, source=source)
