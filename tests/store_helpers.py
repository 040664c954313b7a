"""Small SpatialData slides built in memory for tests: an H&E-like image, spots and counts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def spot_table(
    rng: np.random.Generator, n_spots: int, n_genes: int, *, instance_key: str = "spot"
) -> Any:
    """Poisson counts of ``n_genes`` at ``n_spots`` spots, annotating the shapes ``"spots"``."""
    import anndata as ad
    from spatialdata.models import TableModel

    return TableModel.parse(
        ad.AnnData(
            rng.poisson(3, (n_spots, n_genes)).astype(np.float32),
            obs=pd.DataFrame(
                {"region": pd.Categorical(["spots"] * n_spots), instance_key: np.arange(n_spots)},
                index=[f"s{i}" for i in range(n_spots)],
            ),
        ),
        region="spots",
        region_key="region",
        instance_key=instance_key,
    )


def spots_sdata(
    image: Any,
    xy: np.ndarray,
    radius: float,
    rng: np.random.Generator,
    n_genes: int,
    *,
    instance_key: str = "spot",
) -> Any:
    """A slide of the parsed ``image`` ("he"), circles of ``radius`` at ``xy`` and their counts."""
    import spatialdata as sd
    from spatialdata.models import ShapesModel

    shapes = ShapesModel.parse(
        np.asarray(xy, dtype=float), geometry=0, radius=np.full(len(xy), float(radius))
    )
    return sd.SpatialData(
        images={"he": image},
        shapes={"spots": shapes},
        tables={"table": spot_table(rng, len(xy), n_genes, instance_key=instance_key)},
    )
