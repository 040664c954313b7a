"""Writers of Space Ranger files for tests that build small Visium folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_10x_h5(path: Path, barcodes: Sequence[str], genes: Sequence[str], counts) -> None:
    """Write a ``filtered_feature_bc_matrix.h5`` in the 10x v3 layout.

    ``counts`` is a ``(genes, barcodes)`` scipy CSC matrix.
    """
    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(list(barcodes), dtype="S")
        g["data"] = counts.data
        g["indices"] = counts.indices
        g["indptr"] = counts.indptr
        g["shape"] = np.array(counts.shape)
        feat = g.create_group("features")
        feat["id"] = np.array([f"ID{i}" for i in range(len(genes))], dtype="S")
        feat["name"] = np.array(list(genes), dtype="S")
        feat["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        feat["genome"] = np.array(["mm10"] * len(genes), dtype="S")
        feat["_all_tag_keys"] = np.array([b"genome"])
        f.attrs["library_ids"] = np.array([b"lib"])
        f.attrs["chemistry_description"] = "Spatial 3' v1"
        f.attrs["filetype"] = "matrix"
        f.attrs["software_version"] = "spaceranger-1.0.0"
        f.attrs["version"] = 2
