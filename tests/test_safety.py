"""Bad inputs: every one exits with code 2 and one line on stderr, and touches no file.

Each case builds its files under ``tmp_path``; the checksums of every file there are compared
before and after the command.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from safety_helpers import (
    FAST,
    error_lines,
    fake_section,
    small_model,
    tree_digest,
    with_counts,
)

from napari_histosge.cli import main


@pytest.fixture(scope="module")
def base_store(sample_zarr: Path) -> Path:
    return sample_zarr  # the session's store: each case copies it


@pytest.fixture(scope="module")
def base_checkpoint(small_checkpoint: Path) -> Path:
    return small_checkpoint  # each case copies it


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from napari_histosge.models.checkpoints import save_checkpoint

    model = small_model(n_genes=7, dim=9, seed=1)
    return save_checkpoint(model, tmp_path_factory.mktemp("ck2") / "model")


class Ctx:
    """What a case may use: its folder, a private copy of the sample store, checkpoints."""

    def __init__(self, tmp: Path, store: Path, ckpt: Path, other: Path) -> None:
        self.tmp, self._store, self._ckpt, self._other = tmp, store, ckpt, other

    def store(self, name: str = "s.zarr", where: Path | None = None) -> Path:
        dst = (where or self.tmp) / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self._store, dst)
        return dst

    def checkpoint(self, edit: Callable[[dict], None] | None = None) -> Path:
        dst = self.tmp / "model"
        shutil.copytree(self._ckpt, dst)
        if edit is not None:
            doc = json.loads((dst / "model.json").read_text())
            edit(doc)
            (dst / "model.json").write_text(json.dumps(doc))
        return dst

    def text(self, name: str, text: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p


def _victim(c: Ctx) -> Path:
    c.text("victim/thesis.txt", "years of work")
    return c.tmp / "victim"


def _predict(c: Ctx, ckpt: Path) -> list:
    return ["predict", c.store(), "--checkpoint", ckpt, "--out", c.tmp / "o.zarr", "--quiet"]


def _spots_edit(c: Ctx, edit: Callable[[list[str]], list[str]]) -> Path:
    folder = fake_section(c.tmp / "sec")
    f = folder / "S1_selection.tsv"
    f.write_text("\n".join(edit(f.read_text().splitlines())) + "\n")
    return folder


def _set(path: str, value: object) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, last = path.split(".")
        d = doc
        for k in parents:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value

    return edit


# (case id, builder of the argument list, a piece of the message, overwrite can help)
CASES: list[tuple[str, Callable[[Ctx], list], str, bool]] = [
    # --- overwrite rules -------------------------------------------------------------------
    ("ckpt-out-foreign-folder", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--checkpoint-out", _victim(c), *FAST], "did not write", False),
    ("ckpt-out-foreign-folder-overwrite", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--checkpoint-out", _victim(c), "--overwrite", *FAST], "did not write", False),
    ("ckpt-out-is-input", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--checkpoint-out", c.tmp / "s.zarr", "--overwrite", *FAST], "apart from the input",
        False),
    ("ckpt-out-existing-file", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--checkpoint-out", c.text("model.bin", "x"), *FAST], "existing file", False),
    ("ckpt-out-equals-out", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--checkpoint-out", c.tmp / "o.zarr", *FAST], "apart from the input", False),
    ("ckpt-out-earlier-checkpoint", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--checkpoint-out", c.checkpoint(), *FAST], "--overwrite", True),
    ("run-out-holds-input", lambda c: ["run", c.store(where=c.tmp / "box"), "--out",
        c.text("box/paper.txt", "x").parent, "--overwrite", *FAST], "apart from the input",
        False),
    ("run-out-inside-input", lambda c: ["run", c.store(), "--out",
        c.tmp / "s.zarr" / "o.zarr", *FAST], "apart from the input", False),
    ("run-out-foreign-folder", lambda c: ["run", c.store(), "--out", _victim(c),
        "--overwrite", *FAST], "did not write", False),
    ("run-out-existing-file", lambda c: ["run", c.store(), "--out", c.text("o.zarr", "x"),
        "--overwrite", *FAST], "existing file", False),
    ("run-out-earlier-output", lambda c: ["run", c.store(), "--out", c.store("o.zarr"),
        *FAST], "--overwrite", True),
    ("convert-out-holds-input", lambda c: ["convert", c.store(where=c.tmp / "box"),
        c.tmp / "box", "--overwrite"], "apart from the input", False),
    ("convert-out-is-input", lambda c: ["convert", c.store(), c.tmp / "s.zarr",
        "--overwrite"], "apart from the input", False),
    ("convert-out-foreign", lambda c: ["convert", c.store(), _victim(c), "--overwrite"],
        "did not write", False),
    ("convert-out-earlier", lambda c: ["convert", c.store(), c.store("c.zarr")],
        "--overwrite", True),
    ("predict-out-foreign", lambda c: ["predict", c.store(), "--checkpoint", c.checkpoint(),
        "--out", _victim(c), "--overwrite"], "did not write", False),
    # --- device and genes ------------------------------------------------------------------
    ("device-cuda-missing", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--device", "cuda:99", *FAST], "GPU", False),
    ("device-unknown", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--device", "banana", *FAST], "--device", False),
    ("predict-device-cuda-missing", lambda c: ["predict", c.store(), "--checkpoint",
        c.checkpoint(), "--out", c.tmp / "o.zarr", "--device", "cuda:99"], "GPU", False),
    ("n-top-genes-1", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr", "--quiet",
        "--n-top-genes", "1"], "--n-top-genes", False),
    ("n-top-genes-0", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr", "--quiet",
        "--n-top-genes", "0"], "--n-top-genes", False),
    ("genes-file-one-gene", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr", "--quiet",
        "--genes", c.text("g.txt", "Gfap\n")], "at least 2 genes", False),
    ("genes-file-empty", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr", "--quiet",
        "--genes", c.text("g.txt", "# nothing\n")], "empty file", False),
    ("genes-file-missing", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr", "--quiet",
        "--genes", c.tmp / "nope.txt"], "nope.txt", False),
    ("evaluate-one-gene", lambda c: ["evaluate", c.store(), "--holdout-spots",
        c.text("h.txt", "x\n"), "--genes", c.text("g.txt", "Gfap\n"), "--predictions-out",
        c.tmp / "p.csv", "--metrics-out", c.tmp / "m.json", "--quiet"], "2 genes", False),
    # --- counts ----------------------------------------------------------------------------
    ("counts-all-zero-run", lambda c: ["run", with_counts(c._store, c.tmp / "z.zarr", 0.0),
        "--out", c.tmp / "o.zarr", *FAST], "non-zero", False),
    ("counts-all-zero-evaluate", lambda c: ["evaluate", with_counts(c._store, c.tmp / "z.zarr",
        0.0), "--holdout-spots", c.text("h.txt", "x\n"), "--predictions-out", c.tmp / "p.csv",
        "--metrics-out", c.tmp / "m.json", "--quiet"], "non-zero", False),
    ("counts-inf-convert", lambda c: ["convert", with_counts(c._store, c.tmp / "i.zarr",
        inf=True), c.tmp / "o.zarr"], "infinite", False),
    ("counts-inf-run", lambda c: ["run", with_counts(c._store, c.tmp / "i.zarr", inf=True),
        "--out", c.tmp / "o.zarr", *FAST], "infinite", False),
    # --- spot files ------------------------------------------------------------------------
    ("spots-conflicting-duplicate", lambda c: ["convert", _spots_edit(c, lambda ls: [*ls,
        ls[1].replace("\t40.0\t40.0", "\t44.0\t40.0")]), c.tmp / "o.zarr"], "line", False),
    ("spots-garbage-line", lambda c: ["convert", _spots_edit(c, lambda ls: [*ls[:3],
        "oops\tx\t1\t1\t1\t1", *ls[3:]]), c.tmp / "o.zarr"], "line 4", False),
    ("spots-fractional-array-x", lambda c: ["convert", _spots_edit(c, lambda ls: [ls[0],
        "1.5" + ls[1][1:], *ls[2:]]), c.tmp / "o.zarr"], "line 2", False),
    ("spots-missing-pixel", lambda c: ["convert", _spots_edit(c, lambda ls: [*ls[:2],
        ls[2].rsplit("\t", 1)[0] + "\t", *ls[3:]]), c.tmp / "o.zarr"], "pixel_y", False),
    # --- checkpoints -----------------------------------------------------------------------
    ("ckpt-huge-patch", lambda c: _predict(c, c.checkpoint(_set(
        "feature_meta.patch_sizes_spot", [1000])), ), "patch_sizes_spot", False),
    ("ckpt-patch-not-number", lambda c: _predict(c, c.checkpoint(_set(
        "feature_meta.patch_sizes_spot", ["big"]))), "patch_sizes_spot", False),
    ("ckpt-huge-patch-px", lambda c: _predict(c, c.checkpoint(_set(
        "feature_meta.patch_sizes_px", [1e9]))), "patch_sizes_px", False),
    ("ckpt-n-members-5", lambda c: _predict(c, c.checkpoint(_set("n_members", 5))),
        "weights", False),
    ("ckpt-n-members-neg", lambda c: _predict(c, c.checkpoint(_set("n_members", -1))),
        "n_members", False),
    ("ckpt-n-members-huge", lambda c: _predict(c, c.checkpoint(_set("n_members", 10**9))),
        "n_members", False),
    ("ckpt-n-members-str", lambda c: _predict(c, c.checkpoint(_set("n_members", "3"))),
        "n_members", False),
    ("ckpt-missing-feature-meta", lambda c: _predict(c, c.checkpoint(_set("feature_meta",
        KeyError))), "feature_meta", False),
    ("ckpt-missing-genes", lambda c: _predict(c, c.checkpoint(_set("genes", KeyError))),
        "genes", False),
    ("ckpt-genes-not-list", lambda c: _predict(c, c.checkpoint(_set("genes", "G0"))),
        "genes", False),
    ("ckpt-genes-repeated", lambda c: _predict(c, c.checkpoint(_set("genes",
        ["G0", "G0", "G1", "G2"]))), "genes", False),
    ("ckpt-feat-dim-huge", lambda c: _predict(c, c.checkpoint(_set("info.feat_dim", 10**12))),
        "info.feat_dim", False),
    ("ckpt-config-heads-str", lambda c: _predict(c, c.checkpoint(_set("config.heads", "4"))),
        "config.heads", False),
    ("ckpt-config-mode-unknown", lambda c: _predict(c, c.checkpoint(_set("config.mode",
        "magic"))), "config", False),
    ("ckpt-wrong-format", lambda c: _predict(c, c.checkpoint(_set("format", "other/9"))),
        "format", False),
    ("ckpt-top-level-list", lambda c: _predict(c, _list_json(c)), "top level", False),
    ("ckpt-broken-json", lambda c: _predict(c, _broken_json(c)), "damaged", False),
    ("ckpt-weights-of-other-model", lambda c: _predict(c, _swap_weights(c)), "weights", False),
    ("ckpt-missing-folder", lambda c: _predict(c, c.tmp / "nowhere"), "nothing", False),
    # --- evaluate outputs and other options -------------------------------------------------
    ("evaluate-metrics-folder-missing", lambda c: ["evaluate", c.store(), "--holdout-spots",
        c.text("h.txt", "x\n"), "--predictions-out", c.tmp / "p.csv", "--metrics-out",
        c.tmp / "missing" / "m.json", "--quiet"], "exist", False),
    ("evaluate-same-outputs", lambda c: ["evaluate", c.store(), "--holdout-spots",
        c.text("h.txt", "x\n"), "--predictions-out", c.tmp / "p.csv", "--metrics-out",
        c.tmp / "p.csv", "--quiet"], "differ", False),
    ("evaluate-metrics-is-folder", lambda c: ["evaluate", c.store(), "--holdout-spots",
        c.text("h.txt", "x\n"), "--predictions-out", c.tmp / "p.csv", "--metrics-out",
        _victim(c), "--quiet"], "folder", False),
    ("evaluate-existing-file", lambda c: ["evaluate", c.store(), "--holdout-spots",
        c.text("h.txt", "x\n"), "--predictions-out", c.text("mine.csv", "a,b\n"),
        "--metrics-out", c.tmp / "m.json", "--quiet"], "not to exist", True),
    ("evaluate-unknown-holdout", lambda c: ["evaluate", c.store(), "--holdout-spots",
        c.text("h.txt", "nope\n"), "--predictions-out", c.tmp / "p.csv", "--metrics-out",
        c.tmp / "m.json", "--quiet"], "unknown", False),
    ("positions-negative-grid", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--positions", "grid:-1", *FAST], "grid", False),
    ("input-missing", lambda c: ["run", c.tmp / "missing.zarr", "--out", c.tmp / "o.zarr",
        *FAST], "missing.zarr", False),
    ("convert-input-missing", lambda c: ["convert", c.tmp / "missing", c.tmp / "x.zarr"],
        "missing", False),
    ("epochs-0", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr", "--quiet",
        "--epochs", "0"], "epochs", False),
    ("batch-size-0", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr", "--quiet",
        "--batch-size", "0", "--n-top-genes", "5"], "batch", False),
    ("positions-garbage", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--positions", "16x", *FAST], "positions", False),
    ("image-key-unknown", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--image-key", "nope", *FAST], "nope", False),
    ("table-key-unknown", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--table-key", "nope", *FAST], "nope", False),
    ("input-is-text-file", lambda c: ["run", c.text("s.zarr", "not a store"), "--out",
        c.tmp / "o.zarr", *FAST], "s.zarr", False),
    ("input-is-empty-folder", lambda c: ["convert", c.text("e/.keep", "").parent,
        c.tmp / "o.zarr"], "e", False),
    ("encoder-unknown", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--encoder", "nope", *FAST], "nope", False),
    ("weights-missing-file", lambda c: ["run", c.store(), "--out", c.tmp / "o.zarr",
        "--encoder", "uni", "--weights", c.tmp / "w.safetensors", *FAST], "w.safetensors",
        False),
    ("counts-file-nan", lambda c: ["convert", _counts_edit(c, "nan"), c.tmp / "o.zarr"],
        "NaN", False),
    ("counts-file-inf", lambda c: ["convert", _counts_edit(c, "inf"), c.tmp / "o.zarr"],
        "infinite", False),
    ("counts-file-all-zero", lambda c: ["convert", _counts_edit(c, "0"), c.tmp / "o.zarr"],
        "non-zero", False),
]  # fmt: skip


def _counts_edit(c: Ctx, value: str) -> Path:
    import pandas as pd

    folder = fake_section(c.tmp / "sec")
    f = folder / "S1.tsv.gz"
    df = pd.read_csv(f, sep="\t", index_col=0).astype(float)
    if value == "0":
        df[:] = 0
    else:
        df.iloc[0, 0] = float(value)
    df.to_csv(f, sep="\t")
    return folder


def _list_json(c: Ctx) -> Path:
    ck = c.checkpoint()
    (ck / "model.json").write_text("[1, 2, 3]")
    return ck


def _broken_json(c: Ctx) -> Path:
    ck = c.checkpoint()
    (ck / "model.json").write_text('{"format": ')
    return ck


def _swap_weights(c: Ctx) -> Path:
    ck = c.checkpoint()
    shutil.copyfile(c._other / "weights.safetensors", ck / "weights.safetensors")
    return ck


@pytest.mark.parametrize(("build", "expect", "overwrite_helps"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_input_exits_2_with_one_line_and_touches_nothing(
    build, expect, overwrite_helps, tmp_path, base_store, base_checkpoint, other_checkpoint, capsys
):
    ctx = Ctx(tmp_path, base_store, base_checkpoint, other_checkpoint)
    args = [str(a) for a in build(ctx)]
    before = tree_digest(tmp_path)
    capsys.readouterr()
    code = main(args)
    lines = error_lines(capsys.readouterr().err)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("histosge: error: "), lines
    assert "Traceback" not in lines[0]
    assert expect in lines[0], lines[0]
    hint = "--overwrite" in lines[0].split(";", 1)[-1]
    assert hint == overwrite_helps, lines[0]
    assert tree_digest(tmp_path) == before


def test_read_only_output_folder(tmp_path, base_store, monkeypatch, capsys):
    """A folder the user cannot write is refused before any computation."""
    import napari_histosge.store as store_mod

    src = tmp_path / "s.zarr"
    shutil.copytree(base_store, src)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = store_mod.os.access
    monkeypatch.setattr(
        store_mod.os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode)
    )
    before = tree_digest(tmp_path)
    code = main(["run", str(src), "--out", str(locked / "o.zarr"), *FAST])
    lines = error_lines(capsys.readouterr().err)
    assert code == 2
    assert len(lines) == 1
    assert "read-only" in lines[0]
    assert tree_digest(tmp_path) == before


def test_write_failure_is_one_line(tmp_path, base_store, monkeypatch, capsys):
    """An OSError while writing (disk full, permissions) is one line, and nothing is left."""
    import spatialdata as sd

    src = tmp_path / "s.zarr"
    shutil.copytree(base_store, src)

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(sd.SpatialData, "write", refuse)
    before = tree_digest(tmp_path)
    code = main(["convert", str(src), str(tmp_path / "o.zarr")])
    lines = error_lines(capsys.readouterr().err)
    assert code == 2
    assert len(lines) == 1
    assert "Permission denied" in lines[0]
    assert tree_digest(tmp_path) == before


def test_checkpoint_api_refuses_foreign_folder(tmp_path, base_checkpoint):
    from napari_histosge.models.checkpoints import load_checkpoint, save_checkpoint

    model = load_checkpoint(base_checkpoint)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("x")
    with pytest.raises(ValueError, match="did not write"):
        save_checkpoint(model, victim, overwrite=True)
    assert (victim / "thesis.txt").read_text() == "x"
    path = save_checkpoint(model, tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_checkpoint(model, path)
    save_checkpoint(model, path, overwrite=True)
    assert load_checkpoint(path).genes == model.genes


def test_counts_cases_named_in_table():
    """The table covers every case of the issue; the report counts it."""
    ids = {c[0] for c in CASES}
    for needed in (
        "ckpt-out-foreign-folder",
        "ckpt-out-is-input",
        "ckpt-out-existing-file",
        "run-out-holds-input",
        "convert-out-holds-input",
        "ckpt-huge-patch",
        "ckpt-n-members-5",
        "ckpt-n-members-neg",
        "ckpt-weights-of-other-model",
        "ckpt-missing-feature-meta",
        "counts-all-zero-run",
        "counts-all-zero-evaluate",
        "n-top-genes-1",
        "genes-file-one-gene",
        "evaluate-metrics-folder-missing",
        "device-cuda-missing",
        "counts-inf-convert",
        "spots-conflicting-duplicate",
        "spots-garbage-line",
    ):
        assert needed in ids


@pytest.mark.slow
def test_no_cache_and_read_only_input_leave_the_input_untouched(
    tmp_path, base_store, monkeypatch, capsys
):
    import spatialdata as sd

    from napari_histosge.features import cache as cache_mod

    src = tmp_path / "in" / "s.zarr"
    shutil.copytree(base_store, src)
    before = tree_digest(src)
    out = tmp_path / "o.zarr"
    assert main(["run", str(src), "--out", str(out), "--no-cache", *FAST]) == 0
    assert tree_digest(src) == before
    assert "histosge_predictions" in sd.read_zarr(out).tables
    capsys.readouterr()
    real = cache_mod.os.access
    monkeypatch.setattr(
        cache_mod.os, "access", lambda p, m: False if Path(p) == src else real(p, m)
    )
    assert main(["run", str(src), "--out", str(out), "--overwrite", *FAST]) == 0
    err = capsys.readouterr().err
    assert "features not cached" in err
    assert "read-only" in err
    assert tree_digest(src) == before


def test_export_into_the_input_store_keeps_everything_else(tmp_path, base_store, capsys):
    """Writing the outputs into the input store adds them and leaves every other file alone."""
    src = tmp_path / "s.zarr"
    shutil.copytree(base_store, src)
    (src / "notes.txt").write_text("mine")
    before = tree_digest(src)
    assert main(["run", str(src), "--out", str(src), *FAST]) == 0
    after = tree_digest(src)
    assert [k for k in before if after.get(k) != before[k]] == ["zarr.json"]
    assert (src / "notes.txt").read_text() == "mine"
