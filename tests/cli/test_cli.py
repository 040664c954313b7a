from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

from napari_histosge.cli import build_parser, main
from napari_histosge.store import EXPRESSION_KEY, POSITIONS_KEY, PREDICTIONS_KEY


@pytest.fixture
def sample_store(tmp_path, sample_zarr):
    """A private copy of the session's sample store (a run caches its features in it)."""
    import shutil

    path = tmp_path / "sample.zarr"
    shutil.copytree(sample_zarr, path)
    return path


def test_help_documents_every_option():
    for cmd in ("convert", "run", "evaluate", "predict", "demo", "batch", "train"):
        out = subprocess.run(
            [sys.executable, "-m", "napari_histosge.cli", cmd, "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        parser = build_parser()
        sub = parser._subparsers._group_actions[0].choices[cmd]  # type: ignore[union-attr]
        for action in sub._actions:
            for opt in action.option_strings:
                assert opt in out


def test_every_argument_has_help_text():
    import argparse

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"convert", "run", "evaluate", "predict", "demo", "batch", "train"} <= set(commands)
    for cmd, sub in commands.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"`histosge {cmd} {action.option_strings or action.dest}`"
    pooling = next(a for a in commands["run"]._actions if "--pooling" in a.option_strings)
    for word in ("tiles", "patch", "auto", "ViT"):
        assert word in pooling.help


def test_run_on_sample_end_to_end(tmp_path, sample_store):
    out = tmp_path / "out.zarr"
    ckpt = tmp_path / "model"
    code = main(
        [
            "run",
            str(sample_store),
            "--out",
            str(out),
            "--epochs",
            "5",
            "--seed",
            "1",
            "--quiet",
            "--checkpoint-out",
            str(ckpt),
            "--n-top-genes",
            "50",
        ]
    )
    assert code == 0
    back = sd.read_zarr(out)
    for key in (EXPRESSION_KEY, POSITIONS_KEY, PREDICTIONS_KEY, "V1_Adult_Mouse_Brain_image"):
        assert key in back
    table = back.tables[PREDICTIONS_KEY]
    assert table.n_vars == 50
    assert (table.obs["kind"] == "spot").sum() == 49
    assert (table.obs["kind"] == "4x").sum() > 49
    meta = json.loads(table.uns["histosge"]["meta_json"])
    assert meta["model"]["config"]["seed"] == 1
    assert (ckpt / "weights.safetensors").is_file()
    # Writing again without --overwrite is refused with one clear line.
    assert main(["run", str(sample_store), "--out", str(out), "--quiet"]) == 2
    # The input store is unchanged apart from the feature cache.
    assert PREDICTIONS_KEY not in sd.read_zarr(sample_store)


def test_evaluate_on_her2st(tmp_path, her2st_c2_copy, shared_data):
    sdata = sd.read_zarr(her2st_c2_copy)
    obs = sdata.tables["table"].obs
    held = obs.index[((obs["array_x"] + obs["array_y"]) % 2 == 1).to_numpy()]
    (tmp_path / "held.txt").write_text("\n".join(held))
    genes = list(
        np.load(
            shared_data / "her2st" / "extras" / "her_hvg_cut_1000.npy",
            allow_pickle=True,
        )[:40]
    )
    (tmp_path / "genes.txt").write_text("\n".join(map(str, genes)))
    code = main(
        [
            "evaluate",
            str(her2st_c2_copy),
            "--holdout-spots",
            str(tmp_path / "held.txt"),
            "--genes",
            str(tmp_path / "genes.txt"),
            "--predictions-out",
            str(tmp_path / "pred.csv"),
            "--metrics-out",
            str(tmp_path / "m.json"),
            "--quiet",
        ]
    )
    assert code == 0
    pred = pd.read_csv(tmp_path / "pred.csv", index_col=0)
    assert list(pred.columns) == [str(g) for g in genes]
    assert set(pred.index) == set(held)
    m = json.loads((tmp_path / "m.json").read_text())["methods"]
    assert set(m) == {"model", "knn", "smooth_lowrank", "spatial_shuffle"}
    assert m["model"]["mean_r"] > m["knn"]["mean_r"] > m["spatial_shuffle"]["mean_r"]
    assert len(m["model"]["per_gene"]) == 40


def test_errors_exit_with_one_line(tmp_path, sample_store, capsys):
    (tmp_path / "genes.txt").write_text("NotAGene\nAlsoNotAGene\n")
    code = main(
        [
            "run",
            str(sample_store),
            "--out",
            str(tmp_path / "o.zarr"),
            "--genes",
            str(tmp_path / "genes.txt"),
            "--quiet",
        ]
    )
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "error" in ln]
    assert code == 2
    assert len(err) == 1
    assert "NotAGene" in err[0]
    assert err[0].startswith("histosge: error:")
    assert not (tmp_path / "o.zarr").exists()
    (tmp_path / "held.txt").write_text("nope\n")
    evaluate = [
        "evaluate",
        str(sample_store),
        "--holdout-spots",
        str(tmp_path / "held.txt"),
        "--predictions-out",
        str(tmp_path / "p.csv"),
        "--metrics-out",
        str(tmp_path / "m.json"),
    ]
    code = main(evaluate)
    assert code == 2
    assert "unknown" in capsys.readouterr().err
    # A file that is already there is the user's: replaced only with --overwrite.
    (tmp_path / "p.csv").write_text("mine\n")
    code = main(evaluate)
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "p.csv").read_text() == "mine\n"
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x.zarr")]) == 2


def test_convert_command(tmp_path, her2st_section_dir):
    assert main(["convert", str(her2st_section_dir), str(tmp_path / "c2.zarr")]) == 0
    assert "table" in sd.read_zarr(tmp_path / "c2.zarr")
    assert main(["convert", str(her2st_section_dir), str(tmp_path / "c2.zarr")]) == 2
