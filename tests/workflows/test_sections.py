"""One model on several sections; prediction on sections with an H&E image only."""

from __future__ import annotations

import numpy as np
import pytest
import spatialdata as sd
from scipy.spatial import cKDTree

from napari_histosge.cli import main
from napari_histosge.models.checkpoints import load_checkpoint
from napari_histosge.store import EXPRESSION_KEY, POSITIONS_KEY, PREDICTIONS_KEY, write_sdata
from napari_histosge.workflows.sections import place_apart


def test_sections_are_placed_apart():
    rng = np.random.default_rng(0)
    a = rng.random((50, 2)) * 1000
    b = rng.random((40, 2)) * 1000 + 300
    pa, pb = place_apart([a, b], gap_um=5000.0)
    assert np.allclose(pa - pa.min(0), a - a.min(0))
    d, _ = cKDTree(pa).query(pb)
    assert d.min() >= 5000.0


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from napari_histosge.io import load_sample

    root = tmp_path_factory.mktemp("sections")
    paths = []
    for name in ("A", "B"):
        sdata = load_sample()
        write_sdata(sdata, root / f"{name}.zarr")
        paths.append(root / f"{name}.zarr")
    he = load_sample()
    del he.tables["table"]
    write_sdata(he, root / "spots_only.zarr")
    del he.shapes["V1_Adult_Mouse_Brain_spots"]
    write_sdata(he, root / "image_only.zarr")
    return root, paths


@pytest.mark.slow
def test_train_on_sections_and_predict_from_the_image(tmp_path, stores, capsys):
    root, paths = stores
    ckpt = tmp_path / "model"
    argv = ["train", *map(str, paths), "--checkpoint-out", str(ckpt)]
    assert main([*argv, "--epochs", "5", "--n-top-genes", "20", "--quiet"]) == 0
    model = load_checkpoint(ckpt)
    assert len(model.genes) == 20
    assert [s["spots"] for s in model.info["sections"]] == [49, 49]

    # Spots but no table: predictions at the spots and the 4x positions.
    out = tmp_path / "spots_only_pred.zarr"
    argv = ["predict", str(root / "spots_only.zarr"), "--checkpoint", str(ckpt)]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    table = sd.read_zarr(out).tables[PREDICTIONS_KEY]
    assert (table.obs["kind"] == "spot").sum() == 49
    assert (table.obs["kind"] == "4x").sum() > 49
    assert table.n_vars == 20
    assert np.isfinite(table.X).all()

    # Image only: the scale is required, then a lattice over the tissue is predicted.
    out = tmp_path / "image_only_pred.zarr"
    argv = ["predict", str(root / "image_only.zarr"), "--checkpoint", str(ckpt)]
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    assert "--um-per-px" in capsys.readouterr().err
    assert main([*argv, "--out", str(out), "--quiet", "--um-per-px", "0.727"]) == 0
    back = sd.read_zarr(out)
    assert back.tables[PREDICTIONS_KEY].n_obs > 20
    assert EXPRESSION_KEY in back
    # The lattice over the tissue is not a set of measured spots, and says so.
    kind = back.tables[PREDICTIONS_KEY].obs["kind"]
    assert set(kind) == {"lattice", "4x"}
    radius = back.shapes[POSITIONS_KEY]["radius"].to_numpy()
    assert radius[(kind == "lattice").to_numpy()].min() > radius[(kind == "4x").to_numpy()].max()


def test_train_refuses_genes_missing_in_a_section(tmp_path, stores, capsys):
    _, paths = stores
    genes = tmp_path / "genes.txt"
    known = list(sd.read_zarr(paths[0]).tables["table"].var_names[:5])
    genes.write_text("\n".join([*known, "NOT_A_GENE"]) + "\n")
    argv = ["train", *map(str, paths), "--checkpoint-out", str(tmp_path / "m"), "--quiet"]
    assert main([*argv, "--genes", str(genes)]) == 2
    assert "NOT_A_GENE" in capsys.readouterr().err
