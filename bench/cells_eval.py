"""Cells: nucleus segmentation against known nuclei, per-cell accuracy, and real-section counts.

* synthetic slides (:func:`napari_histosge.evaluate.synthetic.synthetic_slide`, 1 µm/px, the
  nuclei they draw kept as labels): detection F1 at IoU 0.5 and the count error of
  :func:`napari_histosge.cells.segment_nuclei` over the whole slide; then, as ``histosge run
  --cells`` does, the superres map (and the same model without its image term) averaged over
  each cell footprint (nucleus grown by 3 µm), scored against each cell's true expression
  (the mixture under its footprint): Pearson r per gene over cells, mean over genes; next to
  the own-spot copy (the nearest spot's measured value) and no-image maps at the centroid.
* her2st sections C2–C5 (legacy ST): nuclei per mm² of the superres grid (superpixels within
  reach of a spot) and median nucleus area, and a picture of an H&E crop with the outlines.

    .venv/bin/python bench/cells_eval.py                 # 3 seeds x hidden 0, 0.5; C2-C5
    .venv/bin/python bench/cells_eval.py --quick         # 1 seed, hidden 0; C2
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from _common import SHARED_DATA, markdown_table, peak_rss_mb, run_metadata, write_json

DOCS_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"


def _cell_truth(syn, nuc, expand_px: int) -> np.ndarray:
    """True log-normalised expression of each cell: the type mixture under its footprint."""
    from skimage.segmentation import expand_labels

    grown = expand_labels(np.asarray(nuc.labels.compute()), expand_px)
    x0, y0 = nuc.offset_px
    h, w = grown.shape
    frac = syn.fractions[:, y0 : y0 + h, x0 : x0 + w].reshape(len(syn.fractions), -1)
    lab = grown.ravel()
    cnt = np.maximum(np.bincount(lab, minlength=nuc.n + 1), 1)
    mix = np.stack([np.bincount(lab, f, nuc.n + 1) / cnt for f in frac], axis=1)[1:]
    rates = mix @ syn.profiles
    return np.log1p(1e4 * rates / rates.sum(1, keepdims=True))


def synthetic_run(size: int, hidden: float, seed: int, genes: int) -> dict:
    """Segmentation scores and per-cell r of every method on one synthetic slide."""
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    from napari_histosge.base.progress import run_generator
    from napari_histosge.cells.metrics import match_nuclei
    from napari_histosge.cells.segment import NucleiOptions, iter_segment_nuclei
    from napari_histosge.cells.table import cell_membership, cell_values, grid_keep
    from napari_histosge.evaluate.superres import superres_baselines
    from napari_histosge.evaluate.synthetic import SyntheticConfig, synthetic_slide
    from napari_histosge.metrics import pearson_per_gene
    from napari_histosge.models.superres import SuperResConfig
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import SuperResOptions, iter_superres

    syn = synthetic_slide(SyntheticConfig(size_px=size, n_genes=genes, hidden=hidden, seed=seed))
    image = syn.sdata.images["he"]
    t = time.perf_counter()
    whole = run_generator(iter_segment_nuclei(image, 1.0))
    seg_s = time.perf_counter() - t
    score = match_nuclei(syn.nuclei, np.asarray(whole.labels.compute()))
    whole.close()
    slide = Slide.open(syn.sdata)
    opts = NucleiOptions()
    maps = {}
    res = None
    for name, cfg in (
        ("superres", SuperResConfig()),
        ("superres_no_image", SuperResConfig(image_weight=0.0)),
    ):
        res = run_generator(
            iter_superres(slide, genes=syn.genes, options=SuperResOptions(config=cfg))
        )
        maps[name] = res
    grid = res.grid
    half = grid.step / 2
    pos = grid.positions
    extent = (*(pos.min(0) - half), *(pos.max(0) + half))
    nuc = run_generator(iter_segment_nuclei(image, 1.0, extent=extent, keep=grid_keep(grid)))
    member, _ = cell_membership(nuc, grid, opts.expand_um)
    truth = _cell_truth(syn, nuc, int(np.ceil(opts.expand_um)))
    nuc.close()
    preds = {k: cell_values(member, r, None, syn.genes) for k, r in maps.items()}
    xy = slide.geometry.centers_px
    cells_xy = nuc.table[["x", "y"]].to_numpy()
    measured = slide.targets(genes=syn.genes).values
    label = cKDTree(xy).query(cells_xy)[1]
    base = superres_baselines(
        xy, measured, label, cells_xy, sp.identity(len(cells_xy), format="csr")
    )
    preds.update(base)
    r = {
        k: float(np.nanmean(pearson_per_gene(np.asarray(v, np.float64), truth)))
        for k, v in preds.items()
    }
    return {
        "seed": seed,
        "hidden": hidden,
        "segmentation": score,
        "segment_s": round(seg_s, 2),
        "n_cells_on_grid": int(nuc.n),
        "per_cell_r": r,
    }


def her2st_section(section: str, picture: bool) -> dict:
    """Nuclei per mm² of the superres grid and median area on one her2st section."""
    import tempfile

    from napari_histosge.base.progress import run_generator
    from napari_histosge.cells.segment import iter_segment_nuclei
    from napari_histosge.cells.table import grid_keep
    from napari_histosge.io import convert
    from napari_histosge.workflows.pipeline import Slide
    from napari_histosge.workflows.superres import units_superpixel_grid

    data = SHARED_DATA / "her2st" / "data"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / section
        folder.mkdir()
        for f in (
            data / "ST-cnts" / f"{section}.tsv.gz",
            data / "ST-spotfiles" / f"{section}_selection.tsv",
            *sorted((data / "ST-imgs" / section[0] / section).glob("*.jpg")),
        ):
            (folder / f.name).symlink_to(f)
        convert(folder, Path(tmp) / "s.zarr")
        slide = Slide.open(Path(tmp) / "s.zarr")
        um = slide.geometry.um_per_px
        grid, _ = units_superpixel_grid(
            slide.geometry.centers_px, slide.geometry.diameter_px, 8.0 / um
        )
        half = grid.step / 2
        pos = grid.positions
        extent = (*(pos.min(0) - half), *(pos.max(0) + half))
        image = slide.sdata.images[slide.keys.image_key]
        t = time.perf_counter()
        nuc = run_generator(iter_segment_nuclei(image, um, extent=extent, keep=grid_keep(grid)))
        seg_s = time.perf_counter() - t
        area_mm2 = grid.n * (8.0 / 1000) ** 2
        out = {
            "section": section,
            "um_per_px": um,
            "n_nuclei": nuc.n,
            "grid_area_mm2": round(area_mm2, 3),
            "nuclei_per_mm2": round(nuc.n / area_mm2, 1),
            "median_area_um2": round(float(nuc.table["area_um2"].median()), 1),
            "median_diameter_um": round(
                float(2 * np.sqrt(nuc.table["area_um2"].median() / np.pi)), 2
            ),
            "segmented_mpx": round(float(np.prod(nuc.labels.shape)) / 1e6, 1),
            "segment_s": round(seg_s, 2),
            "threshold": nuc.meta["threshold"],
        }
        if picture:
            _picture(slide, nuc, DOCS_IMAGES / f"cells_her2st_{section}.jpg")
        nuc.close()
    return out


def _picture(slide, nuc, path: Path, side: int = 600) -> None:
    """H&E crop (centre of the spots) with the nuclei outlined in green, 2x enlarged."""
    from PIL import Image
    from skimage.segmentation import find_boundaries

    cx, cy = np.median(slide.geometry.centers_px, axis=0).astype(int)
    img = slide.sdata.images[slide.keys.image_key]
    arr = img["scale0"]["image"] if "scale0" in getattr(img, "children", {}) else img
    ys, xs = slice(cy - side // 2, cy + side // 2), slice(cx - side // 2, cx + side // 2)
    he = np.moveaxis(np.asarray(arr.data[:3, ys, xs]), 0, -1)
    x0, y0 = nuc.offset_px
    lab = np.asarray(
        nuc.labels[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0].compute()
    )
    rgb = he.copy()
    rgb[find_boundaries(lab, mode="inner")] = (0, 220, 0)
    both = np.concatenate([he, np.full((side, 8, 3), 255, np.uint8), rgb], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(both).save(path, quality=88)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="one seed, hidden 0; section C2")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--hidden", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--genes", type=int, default=40)
    p.add_argument("--sections", nargs="+", default=["C2", "C3", "C4", "C5"])
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--out", default="cells_eval")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    seeds = [0] if args.quick else list(range(args.seeds))
    hidden = [0.0] if args.quick else args.hidden
    sections = ["C2"] if args.quick else args.sections
    meta = run_metadata()
    runs = []
    if not args.skip_synthetic:
        for h in hidden:
            for seed in seeds:
                r = synthetic_run(args.size, h, seed, args.genes)
                print(r, flush=True)
                runs.append(r)
    real = []
    for i, s in enumerate(sections):
        r = her2st_section(s, picture=i == 0)
        print(r, flush=True)
        real.append(r)
    doc = {"meta": meta, "synthetic": runs, "her2st": real, "peak_rss_mb": peak_rss_mb()}
    path = write_json(args.out + ("_quick" if args.quick else ""), doc)
    if runs:
        methods = list(runs[0]["per_cell_r"])
        rows = []
        for h in hidden:
            sel = [r for r in runs if r["hidden"] == h]
            f1 = [r["segmentation"]["f1"] for r in sel]
            ce = [r["segmentation"]["count_error"] for r in sel]
            rows.append(
                [h, f"{np.mean(f1):.3f} ({min(f1):.3f}–{max(f1):.3f})", f"{np.mean(ce):+.3f}"]
                + [f"{np.mean([r['per_cell_r'][m] for r in sel]):.3f}" for m in methods]
            )
        print(markdown_table(["hidden", "F1 @ IoU 0.5", "count error", *methods], rows))
    rows = [
        [
            r["section"],
            r["n_nuclei"],
            r["grid_area_mm2"],
            r["nuclei_per_mm2"],
            r["median_area_um2"],
            r["median_diameter_um"],
            r["segment_s"],
        ]
        for r in real
    ]
    print(
        markdown_table(
            [
                "section",
                "nuclei",
                "area mm²",
                "nuclei/mm²",
                "median area µm²",
                "median diameter µm",
                "s",
            ],
            rows,
        )
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
