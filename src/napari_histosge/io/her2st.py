"""Reader of legacy Spatial Transcriptomics sections laid out as in the her2st repository."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histosge.geometry.lattice import ST_DIAMETER_UM, ST_PITCH_UM, neighbour_pairs
from napari_histosge.images import cyx_view, parse_image, read_image_file

from ._elements import MIN_SPOTS, check_counts, find_one, make_circles, make_table

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["is_her2st_folder", "read_her2st"]


def is_her2st_folder(path: Path) -> bool:
    """Whether ``path`` looks like an ST section folder (counts, spot file)."""
    return path.is_dir() and any(path.glob("*_selection.tsv")) and any(path.glob("*.tsv.gz"))


def _st_px_per_pitch(spots: Any) -> float | None:
    """Pixels per array step (200 µm) from a linear fit of pixel positions on array positions."""
    cols = ("new_x", "new_y") if {"new_x", "new_y"} <= set(spots.columns) else ("x", "y")
    slopes = []
    for array_col, pixel_col in zip(cols, ("pixel_x", "pixel_y"), strict=True):
        u = spots[array_col].to_numpy(dtype=float)
        v = spots[pixel_col].to_numpy(dtype=float)
        if np.ptp(u) >= 1:
            slopes.append(abs(float(np.polyfit(u, v, 1)[0])))
    return float(np.mean(slopes)) if slopes else None


def _check_spot_rows(spots: Any, filename: str) -> Any:
    """Numeric spot rows indexed ``"{x}x{y}"``; repeated rows must agree (one is kept).

    Raises ``ValueError`` naming the file and the line (the header is line 1) of the first
    garbage value, or of a repeated spot whose position differs.
    """
    import pandas as pd

    cols = [c for c in ("x", "y", "new_x", "new_y", "pixel_x", "pixel_y") if c in spots.columns]
    out = spots.copy()
    for col in cols:
        num = pd.to_numeric(spots[col], errors="coerce")
        bad = ~np.isfinite(num.to_numpy(dtype=float))
        if col in ("x", "y"):
            bad |= ~bad & (num.fillna(0) % 1 != 0).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"Expected a number in column `{col}` of `{filename}` line {i + 2}, found "
                f"`{spots[col].iloc[i]}`; fix or delete that line."
            )
        out[col] = num
    ids = [f"{int(x)}x{int(y)}" for x, y in zip(out["x"], out["y"], strict=True)]
    out.index = pd.Index(ids)
    dup = out.index.duplicated(keep=False)
    if dup.any():
        pix = out.loc[dup, ["pixel_x", "pixel_y"]]
        spread = pix.groupby(level=0).agg(lambda v: float(np.ptp(v.to_numpy(dtype=float))))
        conflict = spread.index[(spread > 0.5).any(axis=1).to_numpy()]
        if len(conflict):
            lines = [i + 2 for i in np.flatnonzero(out.index == conflict[0])]
            raise ValueError(
                f"Expected one position per spot in `{filename}`, found spot `{conflict[0]}` on "
                f"lines {lines} at different pixel positions; delete the wrong line."
            )
    return out


def read_her2st(folder: str | Path) -> SpatialData:
    """Read one legacy Spatial Transcriptomics section laid out as in the her2st repository.

    The folder holds the counts (``*.tsv.gz``, spots x genes, rows named ``"{x}x{y}"``), the
    spot file (``*_selection.tsv`` with ``x y new_x new_y pixel_x pixel_y``) and one H&E
    ``.jpg``. ``pixel_x`` is the column and ``pixel_y`` the row of the spot centre in the JPEG
    and are used as they are (identity transformation). Spots are 100 µm across, 200 µm apart
    on a square array; µm per pixel comes from a linear fit of the pixel positions on the
    array positions (pixels per 200 µm step). Spots of the spot file without counts are
    dropped.

    Parameters
    ----------
    folder
        The section's folder.

    Returns
    -------
    SpatialData with ``{section}_image`` (RGB, a chunked pyramid), ``{section}_spots``
    (circles of 50 µm radius) and ``table`` (raw counts in ``X``, sparse; spot ids
    ``"{x}x{y}"`` as ``obs_names``).

    Examples
    --------
    >>> sdata = read_her2st("C2/")  # doctest: +SKIP
    >>> sorted(sdata.shapes)  # doctest: +SKIP
    ['C2_spots']
    """
    import pandas as pd
    import scipy.sparse as sp
    from spatialdata import SpatialData

    folder = Path(folder)
    counts_path = find_one(folder, "*.tsv.gz", "counts file")
    spots_path = find_one(folder, "*_selection.tsv", "spot file")
    image_path = find_one(folder, "*.jpg", "H&E image")
    section = spots_path.name.replace("_selection.tsv", "")

    try:
        counts = pd.read_csv(counts_path, sep="\t", index_col=0)
        spots = pd.read_csv(spots_path, sep="\t")
    except (OSError, EOFError, ValueError, pd.errors.ParserError) as err:
        raise ValueError(
            f"Expected tab-separated counts and spot files in `{folder}`, could not parse them: "
            f"{err}"
        ) from err
    need = {"x", "y", "pixel_x", "pixel_y"}
    if not need.issubset(spots.columns):
        raise ValueError(
            f"Expected columns {sorted(need)} in `{spots_path.name}`, found {list(spots.columns)}."
        )
    spots = _check_spot_rows(spots, spots_path.name)
    counts.index = counts.index.astype(str)
    if not counts.index.is_unique:
        dup = counts.index[counts.index.duplicated()].unique().tolist()
        raise ValueError(
            f"Expected unique spot ids in `{counts_path.name}`, found repeats {dup[:5]}."
        )
    missing = [s for s in counts.index if s not in spots.index]
    if missing:
        raise ValueError(
            f'Expected every counts row of `{counts_path.name}` (named "{{x}}x{{y}}") in '
            f"`{spots_path.name}`; {len(missing)} of {len(counts)} spot ids have no position, "
            f"e.g. {missing[:5]}."
        )
    if len(counts) < MIN_SPOTS:
        raise ValueError(f"Expected at least {MIN_SPOTS} spots with counts, found {len(counts)}.")
    values = counts.to_numpy()
    check_counts(values, f"`{counts_path.name}`")
    spots_all = spots
    spots = spots.loc[~spots.index.duplicated()].loc[counts.index]
    xy = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    if not np.isfinite(xy).all():
        raise ValueError(f"Expected finite pixel_x and pixel_y in `{spots_path.name}`, found NaN.")

    rgb = read_image_file(image_path)
    h, w = rgb.shape[:2]
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] < 0) | (xy[:, 1] >= h)
    if outside.any():
        raise ValueError(
            f"Expected spot centres inside the {w} x {h} image `{image_path.name}`, found "
            f"{int(outside.sum())} outside (e.g. {list(spots.index[outside][:3])})."
        )
    px_per_pitch = _st_px_per_pitch(spots_all) or neighbour_pairs(xy)[1]
    um_per_px = ST_PITCH_UM / px_per_pitch
    spots_key = f"{section}_spots"
    meta = {
        "technology": "ST",
        "spot_diameter_um": ST_DIAMETER_UM,
        "spot_pitch_um": ST_PITCH_UM,
        "um_per_px": um_per_px,
        "image": image_path.name,
        "source": folder.name,
    }
    table = make_table(
        sp.csr_matrix(values.astype(np.float32)),
        list(counts.index),
        [str(g) for g in counts.columns],
        spots_key,
        xy,
        meta,
        {"array_x": spots["x"].to_numpy(int), "array_y": spots["y"].to_numpy(int)},
    )
    image = parse_image(cyx_view(rgb))
    return SpatialData(
        images={f"{section}_image": image},
        shapes={spots_key: make_circles(xy, ST_DIAMETER_UM / um_per_px / 2.0)},
        tables={"table": table},
    )
