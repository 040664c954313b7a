"""A small synthetic Visium-like SpatialData store, built in a second or two."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PITCH_PX = 20.0  # 100 µm between neighbouring spots: 5 µm per pixel
SPOT_DIAMETER_PX = 11.0  # 55 µm


def make_store(path: Path, n_spots: int = 2000, n_genes: int = 12, seed: int = 0) -> Path:
    """Write a store with ``n_spots`` circles on a hexagonal lattice, an H&E-like image and counts.

    Expression follows two smooth fields; the first one also darkens the image, so the image
    carries signal.
    """
    import anndata as ad
    import pandas as pd
    from scipy.ndimage import gaussian_filter
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    from napari_histosge.store import write_sdata

    rng = np.random.default_rng(seed)
    cols = int(np.ceil(np.sqrt(n_spots * 1.4)))
    rows = int(np.ceil(n_spots / cols))
    dy = PITCH_PX * np.sqrt(3) / 2
    ij = np.array([(r, c) for r in range(rows) for c in range(cols)][:n_spots], dtype=float)
    xy = np.stack([40 + ij[:, 1] * PITCH_PX + (ij[:, 0] % 2) * PITCH_PX / 2, 40 + ij[:, 0] * dy], 1)
    w = int(xy[:, 0].max() + 40)
    h = int(xy[:, 1].max() + 40)

    fields = [gaussian_filter(rng.standard_normal((h // 8 + 1, w // 8 + 1)), 6) for _ in range(2)]
    fields = [(f - f.mean()) / f.std() for f in fields]
    big = np.kron(fields[0], np.ones((8, 8)))[:h, :w]
    noise = rng.normal(0, 12, (h, w))
    base = np.array([200.0, 150.0, 200.0])
    rgb = base[:, None, None] - 35 * big[None] + noise[None]
    image = np.clip(rgb, 0, 255).astype(np.uint8)

    at = np.clip((xy / 8).astype(int), 0, [fields[0].shape[1] - 1, fields[0].shape[0] - 1])
    latent = np.stack([f[at[:, 1], at[:, 0]] for f in fields], 1)
    loadings = rng.normal(0, 1, (2, n_genes))
    rate = np.exp(1.0 + 0.6 * latent @ loadings)
    counts = rng.poisson(rate).astype(np.float32)
    ids = [f"spot{i:05d}" for i in range(n_spots)]
    genes = [f"Gene{g:02d}" for g in range(n_genes)]
    obs = pd.DataFrame(
        {"region": pd.Categorical(["spots"] * n_spots), "instance_id": np.arange(n_spots)},
        index=pd.Index(ids),
    )
    table = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    table.obsm["spatial"] = xy
    sdata = SpatialData(
        images={"he": Image2DModel.parse(image, dims=("c", "y", "x"), c_coords=["r", "g", "b"])},
        shapes={
            "spots": ShapesModel.parse(
                xy,
                geometry=0,
                radius=np.full(n_spots, SPOT_DIAMETER_PX / 2),
                index=pd.RangeIndex(n_spots, name="instance_id"),
            )
        },
        tables={
            "table": TableModel.parse(
                table, region="spots", region_key="region", instance_key="instance_id"
            )
        },
    )
    write_sdata(sdata, path)
    return Path(path)
