"""Outputs written into the input store (``--in-place``) and into a new store beside it.

In place, only the ``histosge_*`` elements are written, one at a time and crash-safely: a kill
at any point of an element's write leaves a store that ``spatialdata.read_zarr`` opens, with
the old element or the new one, and the user's elements byte-identical. Into another store, the
input's image chunks are hard-linked rather than copied.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
from cli_process import start_cli
from safety_helpers import FAST, env, error_lines, run_cli, tree_digest

from napari_histosge.cli import main
from napari_histosge.store import OUTPUT_KEYS, PREDICTIONS_KEY

IMAGE = "V1_Adult_Mouse_Brain_image"


def _main(args: list, capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str]:
    """``histosge ARGS`` in this process (the kills below need a process of their own)."""
    if capsys is not None:
        capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err if capsys is not None else ""


@pytest.fixture(scope="module")
def sample_store(sample_zarr: Path) -> Path:
    return sample_zarr  # the session's store, read only: the tests copy it or run --no-cache


@pytest.fixture(scope="module")
def with_outputs(sample_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample store with outputs already written in place (the ones a kill must keep)."""
    path = tmp_path_factory.mktemp("inplace_prev") / "s.zarr"
    shutil.copytree(sample_store, path)
    code, _ = _main(["run", path, "--in-place", "--no-cache", "--mode", "improved", *FAST])
    assert code == 0
    return path


def _user_files(root: Path) -> dict[str, str]:
    """Digest of everything but the ``histosge_*`` elements and the root metadata."""
    return {
        k: v
        for k, v in tree_digest(root, hidden=False).items()
        if k != "zarr.json" and not any(part.startswith("histosge_") for part in Path(k).parts)
    }


def _hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_in_place_writes_only_the_new_elements(tmp_path, sample_store, capsys):
    src = tmp_path / "s.zarr"
    shutil.copytree(sample_store, src)
    before = tree_digest(src)
    code, err = _main(["run", src, "--in-place", "--no-cache", *FAST], capsys)
    assert code == 0, err[-800:]
    after = tree_digest(src)
    assert [k for k in before if after.get(k) != before[k]] == ["zarr.json"]
    added = {Path(k).parts[:2] for k in after if k not in before}
    assert added == {
        ("images", "histosge_expression"),
        ("images", "histosge_uncertainty"),  # the superres maps' standard deviations
        ("shapes", "histosge_positions"),
        ("tables", "histosge_predictions"),
    }
    back = sd.read_zarr(src)
    assert set(OUTPUT_KEYS) <= set(back.images) | set(back.shapes) | set(back.tables)
    assert not _hidden(src)
    # The sd is staged beside its twin, the maps already in place: their metadata, its codec.
    unc = src / "images" / "histosge_uncertainty"
    meta = json.loads((unc / "zarr.json").read_text())["attributes"]["ome"]["multiscales"]
    assert meta[0]["name"].endswith("histosge_uncertainty")
    codecs = json.loads((unc / "s0" / "zarr.json").read_text())["codecs"]
    assert [c["name"] for c in codecs] == ["bytes", "blosc"]
    twin = json.loads((src / "images" / "histosge_expression" / "s0" / "zarr.json").read_text())
    assert json.loads((unc / "s0" / "zarr.json").read_text())["shape"] == twin["shape"]
    # The consolidated metadata lists the new elements (zarr opens the store from it).
    listed = json.loads((src / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert f"tables/{PREDICTIONS_KEY}" in listed


def test_in_place_refuses_earlier_outputs_without_overwrite(tmp_path, with_outputs, capsys):
    src = tmp_path / "s.zarr"
    shutil.copytree(with_outputs, src)
    before = tree_digest(src)
    code, err = _main(["run", src, "--in-place", "--no-cache", *FAST], capsys)
    assert code == 2
    lines = [ln for ln in error_lines(err) if "warning" not in ln]
    assert len(lines) == 1
    assert "--overwrite" in lines[0]
    assert tree_digest(src) == before
    # With --overwrite, only the histosge_* elements change.
    user = _user_files(src)
    code, err = _main(["run", src, "--in-place", "--overwrite", "--no-cache", *FAST], capsys)
    assert code == 0, err[-800:]
    assert _user_files(src) == user
    table = sd.read_zarr(src).tables[PREDICTIONS_KEY]
    assert set(table.obs["kind"]) == {"spot"}  # the superres run predicts the units


def test_in_place_option_errors(tmp_path, sample_store, capsys):
    src = tmp_path / "s.zarr"
    shutil.copytree(sample_store, src)
    before = tree_digest(tmp_path)
    for args in (
        ["run", src, "--in-place", "--out", tmp_path / "o.zarr", *FAST],
        ["run", src, *FAST],
        ["run", tmp_path / "missing", "--in-place", *FAST],
    ):
        code, err = _main(args, capsys)
        assert code == 2
        lines = [ln for ln in error_lines(err) if "warning" not in ln]
        assert len(lines) == 1, lines
        assert lines[0].startswith("histosge: error: Expected"), lines
    assert tree_digest(tmp_path) == before


def test_in_place_refuses_user_element_names(tmp_path, sample_store):
    from napari_histosge.store import write_element_atomic

    with pytest.raises(ValueError, match="histosge_"):
        write_element_atomic(sample_store, "tables", "table", None)


def test_export_elsewhere_links_the_image(tmp_path, sample_store, capsys):
    src, out = tmp_path / "s.zarr", tmp_path / "o.zarr"
    shutil.copytree(sample_store, src)
    before = tree_digest(src)
    code, err = _main(["run", src, "--out", out, "--no-cache", *FAST], capsys)
    assert code == 0, err[-800:]
    assert tree_digest(src) == before
    chunks = [p for p in (out / "images" / IMAGE).rglob("*") if p.is_file()]
    data = [p for p in chunks if p.name != "zarr.json"]
    assert data
    assert all(p.stat().st_nlink == 2 for p in data)
    assert all(p.stat().st_nlink == 1 for p in chunks if p.name == "zarr.json")
    back, orig = sd.read_zarr(out), sd.read_zarr(src)
    np.testing.assert_array_equal(back.images[IMAGE].values, orig.images[IMAGE].values)
    assert PREDICTIONS_KEY in back.tables


def test_export_elsewhere_writes_a_changed_image(tmp_path, sample_store):
    """An image changed in memory is written, not linked to the stale file."""
    from napari_histosge.workflows.export import _linkable

    sdata = sd.read_zarr(sample_store)
    assert _linkable(sdata, Path(sample_store).resolve(), "images", IMAGE)
    sdata.images[IMAGE] = sdata.images[IMAGE] // 2
    assert not _linkable(sdata, Path(sample_store).resolve(), "images", IMAGE)


# --- kills inside the in-place element writes ----------------------------------------------

KILL_POINTS = [
    "element-staged",
    "element-unlisted",
    "element-moved-in",
    "element-listed",
    "export-wrote-histosge_expression",
    "export-wrote-histosge_positions",
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_in_place_export_killed_at(point, tmp_path, with_outputs, capsys):
    src = tmp_path / "s.zarr"
    shutil.copytree(with_outputs, src)
    user = _user_files(src)
    old = {k: v for k, v in tree_digest(src, hidden=False).items() if "histosge_" in k}
    res = run_cli(
        ["run", src, "--in-place", "--overwrite", "--no-cache", *FAST],
        HISTOSGE_FAULT_AT=point,
        HISTOSGE_FAULT_SIGNAL="KILL",
    )
    assert res.returncode == -signal.SIGKILL, res.stderr[-800:]
    back = sd.read_zarr(src)  # the store opens, also with its metadata being rebuilt
    assert _user_files(src) == user
    now = tree_digest(src, hidden=False)
    for key in OUTPUT_KEYS:  # each element is whole: the old one (same bytes) or the new one
        assert key in back, key
        old_files = {k: v for k, v in old.items() if f"/{key}/" in f"/{k}"}
        new_files = {k: v for k, v in now.items() if f"/{key}/" in f"/{k}"}
        if new_files != old_files:
            assert key == "histosge_expression" or point.startswith("export-wrote")
    assert back.tables[PREDICTIONS_KEY].n_obs > 0
    # The next write cleans up (metadata restored, staged copies removed) and succeeds.
    code, err = _main(["run", src, "--in-place", "--overwrite", "--no-cache", *FAST], capsys)
    assert code == 0, err[-800:]
    assert not _hidden(src)
    assert "consolidated_metadata" in json.loads((src / "zarr.json").read_text())
    assert _user_files(src) == user


def test_in_place_killed_when_staging_appears(tmp_path, with_outputs):
    """kill -9 from outside, as soon as an element is being staged inside the store."""
    import time

    src = tmp_path / "s.zarr"
    shutil.copytree(with_outputs, src)
    user = _user_files(src)
    proc = start_cli(["run", src, "--in-place", "--overwrite", "--no-cache", *FAST], env())
    deadline = time.monotonic() + 300
    hit = False
    while proc.poll() is None and time.monotonic() < deadline:
        if any(src.glob(".histosge-tmp-*/*/histosge_*")):
            proc.send_signal(signal.SIGKILL)
            hit = True
            break
        time.sleep(0.002)
    proc.communicate(timeout=300)
    assert hit
    back = sd.read_zarr(src)
    assert _user_files(src) == user
    assert all(k in back for k in OUTPUT_KEYS)


def test_predict_in_place(tmp_path, sample_store, capsys):
    """``histosge predict --in-place`` adds the outputs of a saved model to the input store."""
    src, model = tmp_path / "s.zarr", tmp_path / "model"
    shutil.copytree(sample_store, src)
    code, err = _main(
        ["run", sample_store, "--out", tmp_path / "o.zarr", "--mode", "improved"]
        + ["--checkpoint-out", model, "--no-cache", *FAST],
        capsys,
    )
    assert code == 0, err[-800:]
    user = _user_files(src)
    predict = ["predict", src, "--checkpoint", model, "--in-place", "--no-cache", "--quiet"]
    code, err = _main(predict, capsys)
    assert code == 0, err[-800:]
    assert _user_files(src) == user
    back = sd.read_zarr(src)
    assert all(k in back for k in OUTPUT_KEYS)
    kinds = set(back.tables[PREDICTIONS_KEY].obs["kind"])
    assert kinds == {"spot", "4x"}
