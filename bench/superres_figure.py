"""Side-by-side picture on the bundled sample: H&E, today's 4x mosaic, the super-resolved map.

    .venv/bin/python bench/superres_figure.py --out docs/images/superres_side_by_side.png

The mosaic is the `improved` model's predictions at the spots and the 4x positions, each map
pixel copying its nearest position (the map `histosge run --mode improved` wrote before
super-resolution). The new map is `histosge run`'s default: the superres model on 8 µm
superpixels. Both use the same genes and colour range (the measured spots' 2nd-98th
percentiles); circles mark the measured spots.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    from napari_histosge.base.progress import run_generator
    from napari_histosge.io import load_sample
    from napari_histosge.workflows.pipeline import (
        ExtractOptions,
        Slide,
        iter_extract,
        iter_train,
        predict_slide,
        render_maps,
    )
    from napari_histosge.workflows.superres import iter_superres, superres_maps

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="docs/images/superres_side_by_side.png")
    p.add_argument("--genes", nargs="*", help="genes to show (default: the 2 most variable)")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    slide = Slide.open(load_sample())
    measured_all = slide.measured(slide.genes)
    genes = args.genes or [slide.genes[i] for i in np.argsort(-measured_all.var(0))[:2]]
    feats = run_generator(iter_extract(slide, options=ExtractOptions(positions="4x")))
    model = run_generator(iter_train(slide, features=feats, genes=genes))
    mosaic = render_maps(slide, predictions=predict_slide(slide, features=feats, model=model))
    result = run_generator(iter_superres(slide, genes=genes))
    new = superres_maps(result)
    image = np.asarray(slide.sdata.images[slide.keys.image_key].transpose("y", "x", "c").data)
    g = slide.geometry
    fig, axes = plt.subplots(len(genes), 3, figsize=(9, 5.2 * len(genes)), squeeze=False)
    for row, gene in enumerate(genes):
        measured = slide.measured([gene])[:, 0]
        lo, hi = np.percentile(measured, [2, 98])
        for col, (title, m) in enumerate(
            (("H&E", None), ("4x positions, nearest (before)", mosaic), ("superres, 8 µm", new))
        ):
            ax = axes[row, col]
            ax.imshow(image)
            if m is not None:
                plane = m.gene(gene)
                h, w = plane.shape
                x0 = m.origin_px[0] - m.pitch_px / 2
                y0 = m.origin_px[1] - m.pitch_px / 2
                extent = (x0, x0 + w * m.pitch_px, y0 + h * m.pitch_px, y0)
                ax.imshow(plane, extent=extent, cmap="magma", vmin=lo, vmax=hi, alpha=0.9)
            for c in g.centers_px:
                ax.add_patch(Circle(c, g.diameter_px / 2, fill=False, lw=0.4, color="cyan"))
            ax.set_xlim(0, image.shape[1])
            ax.set_ylim(image.shape[0], 0)
            ax.set_title(f"{gene}: {title}" if m is not None else title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print("wrote", out, "genes", genes)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
