"""Kills and Ctrl-C at every point of the writes: nothing the user had is damaged.

Two ways of interrupting a process of its own (``cli_process``: forked from a server that imported
the package once, a real process that a signal really ends): the write's own named points
(``HISTOSGE_FAULT_AT``, the process signals itself exactly there, including inside the swaps) and,
for the real commands, a signal sent when a temporary folder appears on disk. After each interrupt
the input and the previous output must open with ``spatialdata.read_zarr`` and be byte-identical
(or be the complete new output), and the next write must succeed and leave no leftovers.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
from cli_process import finish, start_cli, start_code
from safety_helpers import FAST, env, run_cli, tree_digest

from napari_histosge.store import MARKER_NAME

CACHE = "histosge_features_spots"


@pytest.fixture(scope="module")
def base(tmp_path_factory, sample_zarr, small_checkpoint) -> dict[str, Path]:
    """The sample store, a converted copy (an earlier output) and a checkpoint (read only)."""
    from napari_histosge.io import convert

    prev = tmp_path_factory.mktemp("faults") / "prev.zarr"
    convert(sample_zarr, prev)
    return {"store": sample_zarr, "prev": prev, "model": small_checkpoint}


def _visible(root: Path) -> dict[str, str]:
    return tree_digest(root, hidden=False)


def _leftovers(folder: Path) -> list[str]:
    hidden = [p.name for p in folder.rglob(".*") if p.name != MARKER_NAME]
    return [h for h in hidden if ".tmp-" in h or ".old-" in h or h.startswith(".histosge-")]


def _interrupt_on(
    args: list[str], pattern: tuple[Path, str], sig: int, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run the CLI and send ``sig`` as soon as ``pattern`` (folder, glob) matches a path."""
    proc = start_cli(args, env(**extra))
    folder, glob = pattern
    hit = False
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if folder.is_dir() and any(folder.glob(glob)):
            proc.send_signal(sig)
            hit = True
            break
        time.sleep(0.002)
    res = finish(proc)
    assert hit, f"the process ended before `{glob}` appeared: {res.stderr[-500:]}"
    return res


def _assert_interrupted(res: subprocess.CompletedProcess[str], sig: str) -> None:
    if sig == "KILL":
        assert res.returncode == -signal.SIGKILL, res.stderr[-800:]
    else:
        assert res.returncode == 130, res.stderr[-800:]
        assert "cancelled" in res.stderr
        assert "Traceback" not in res.stderr


# --- folder writes (convert, export, checkpoints) at their named points -----------------------

FOLDER_POINTS = [
    ("folder-written", "KILL"),
    ("folder-written", "INT"),
    ("folder-swapped", "KILL"),
    ("folder-swapped", "INT"),
]


@pytest.mark.parametrize(("point", "sig"), FOLDER_POINTS)
def test_convert_over_earlier_output_killed_at(point, sig, tmp_path, base):
    src, out = tmp_path / "s.zarr", tmp_path / "c.zarr"
    shutil.copytree(base["store"], src)
    shutil.copytree(base["prev"], out)
    src_before, out_before = tree_digest(src), tree_digest(out)
    res = run_cli(
        ["convert", src, out, "--overwrite"], HISTOSGE_FAULT_AT=point, HISTOSGE_FAULT_SIGNAL=sig
    )
    if point == "folder-swapped" and sig == "INT":
        # Ctrl-C inside the swap is held back until the new output is in place.
        assert res.returncode == 130, res.stderr
        assert "cancelled" in res.stderr
    else:
        _assert_interrupted(res, sig)
    assert tree_digest(src) == src_before
    sd.read_zarr(src)
    back = sd.read_zarr(out)
    assert "table" in back.tables
    if point == "folder-written":
        assert tree_digest(out) == out_before  # the earlier output, byte for byte
    assert (out / MARKER_NAME).is_file()
    # The next run succeeds and tidies up what the interrupted one left.
    from napari_histosge.io import convert

    convert(src, out, overwrite=True)
    assert not _leftovers(tmp_path)
    assert sd.read_zarr(out).tables["table"].n_obs == back.tables["table"].n_obs


@pytest.mark.parametrize(("point", "sig"), [("folder-written", "KILL"), ("folder-swapped", "KILL")])
def test_checkpoint_over_earlier_checkpoint_killed_at(point, sig, tmp_path, base):
    from napari_histosge.models.checkpoints import load_checkpoint, save_checkpoint

    ck = tmp_path / "model"
    shutil.copytree(base["model"], ck)
    before = tree_digest(ck)
    code = (
        "import sys; from napari_histosge.models.checkpoints import load_checkpoint, "
        "save_checkpoint; "
        "save_checkpoint(load_checkpoint(sys.argv[1]), sys.argv[1], overwrite=True)"
    )
    res = finish(start_code(code, [ck], env(HISTOSGE_FAULT_AT=point, HISTOSGE_FAULT_SIGNAL=sig)))
    _assert_interrupted(res, sig)
    model = load_checkpoint(ck)
    if point == "folder-written":
        assert tree_digest(ck) == before
    save_checkpoint(model, ck, overwrite=True)
    assert not _leftovers(tmp_path)
    assert load_checkpoint(ck).genes == model.genes


# --- the feature cache written into the input store ------------------------------------------

CACHE_POINTS = [
    ("element-staged", "KILL"),
    ("element-unlisted", "KILL"),
    ("element-moved-in", "KILL"),
    ("element-listed", "KILL"),
    ("element-staged", "INT"),
    ("element-moved-in", "INT"),
]

_CACHE_WRITE = """
import sys, numpy as np, spatialdata as sd
from napari_histosge.features.cache import store
s = sd.read_zarr(sys.argv[1])
n = s.tables["table"].n_obs
xy = np.arange(2 * n, dtype=float).reshape(n, 2)
store(s, "histosge_features_spots", "X_" + sys.argv[2], xy, np.ones((n, 3), np.float32),
      {"positions_digest": "d" + sys.argv[2], "dim": 3})
"""


def _write_cache(store: Path, tag: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return finish(start_code(_CACHE_WRITE, [store, tag], env(**extra)))


@pytest.fixture(scope="module")
def cached_store(base, tmp_path_factory) -> Path:
    """The sample store with a cache table already written (the one a kill must not damage)."""
    path = tmp_path_factory.mktemp("cached") / "s.zarr"
    shutil.copytree(base["store"], path)
    assert _write_cache(path, "old").returncode == 0
    assert CACHE in sd.read_zarr(path).tables
    return path


@pytest.mark.parametrize(("point", "sig"), CACHE_POINTS)
def test_cache_write_killed_at(point, sig, tmp_path, cached_store):
    store = tmp_path / "s.zarr"
    shutil.copytree(cached_store, store)
    before = _visible(store)
    old_cache = {k: v for k, v in before.items() if k.startswith(f"tables/{CACHE}/")}
    res = _write_cache(store, "new", HISTOSGE_FAULT_AT=point, HISTOSGE_FAULT_SIGNAL=sig)
    if sig == "KILL":
        assert res.returncode == -signal.SIGKILL
    else:  # a plain script: Ctrl-C ends it with KeyboardInterrupt (after the swap, if inside)
        assert res.returncode != 0
        assert "KeyboardInterrupt" in res.stderr
    back = sd.read_zarr(store)  # the store opens
    after = _visible(store)
    # Everything but the cache and the store's metadata is byte-identical.
    keep = {k: v for k, v in before.items() if not k.startswith(f"tables/{CACHE}/")}
    keep.pop("zarr.json")
    assert {k: after.get(k) for k in keep} == keep
    if CACHE in back.tables:
        table = back.tables[CACHE]
        assert "X_old" in table.obsm or "X_new" in table.obsm
        if "X_new" not in table.obsm:
            assert {k: v for k, v in after.items() if k.startswith(f"tables/{CACHE}/")} == (
                old_cache
            )
    # The next write succeeds and leaves nothing behind.
    from napari_histosge.features.cache import store as write_cache

    n = back.tables["table"].n_obs
    write_cache(
        back, CACHE, "X_next", np.zeros((n, 2)), np.ones((n, 3), np.float32),
        {"positions_digest": "next", "dim": 3},
    )  # fmt: skip
    assert "X_next" in sd.read_zarr(store).tables[CACHE].obsm
    assert not _leftovers(store)
    stale = [p.name for p in (store / "tables").iterdir() if p.is_dir()]
    assert sorted(stale) == [CACHE, "table"]


def test_cache_skipped_on_read_only_store(tmp_path, base, monkeypatch):
    """A store that cannot be written keeps working: features are computed, not cached."""
    import os

    from napari_histosge.features import cache as cache_mod

    store = tmp_path / "s.zarr"
    shutil.copytree(base["store"], store)
    before = tree_digest(store)
    real = os.access
    monkeypatch.setattr(
        cache_mod.os, "access", lambda p, m: False if Path(p) == store else real(p, m)
    )
    s = sd.read_zarr(store)
    n = s.tables["table"].n_obs
    with pytest.warns(UserWarning, match="read-only"):
        cache_mod.store(
            s, CACHE, "X_a", np.zeros((n, 2)), np.ones((n, 3), np.float32),
            {"positions_digest": "x", "dim": 3},
        )  # fmt: skip
    assert tree_digest(store) == before


# --- the real commands, interrupted when their temporary folders appear ----------------------


@pytest.mark.slow
def test_run_interrupted_while_caching_exporting_and_checkpointing(tmp_path, base, capsys):
    from napari_histosge.cli import main

    src, out, ck = tmp_path / "s.zarr", tmp_path / "o.zarr", tmp_path / "model"
    shutil.copytree(base["store"], src)
    shutil.copytree(base["prev"], out)  # an earlier output that --overwrite may replace
    shutil.copytree(base["model"], ck)
    src_before, out_before, ck_before = _visible(src), tree_digest(out), tree_digest(ck)
    args = ["run", src, "--out", out, "--checkpoint-out", ck, "--overwrite", *FAST]

    # 1. kill -9 while the feature cache is being staged inside the input store.
    res = _interrupt_on(args, (src, ".histosge-tmp-*"), signal.SIGKILL)
    assert res.returncode == -signal.SIGKILL
    sd.read_zarr(src)
    assert _visible(src) == src_before
    assert tree_digest(out) == out_before
    assert tree_digest(ck) == ck_before

    # 2. Ctrl-C while the output store is being written: an honest message, nothing replaced.
    res = _interrupt_on(args, (tmp_path, ".o.zarr.tmp-*"), signal.SIGINT)
    assert res.returncode == 130, res.stderr[-800:]
    assert "cancelled; wrote no output" in res.stderr
    assert "removed 1 partial copy" in res.stderr  # the leftover of step 1 was noticed
    assert tree_digest(out) == out_before
    assert tree_digest(ck) == ck_before
    sd.read_zarr(src)
    sd.read_zarr(out)

    # 3. kill -9 while the checkpoint is written: the new output is complete, the old model whole.
    res = _interrupt_on(args, (tmp_path, ".model.tmp-*"), signal.SIGKILL)
    assert res.returncode == -signal.SIGKILL
    assert "histosge_predictions" in sd.read_zarr(out).tables
    assert tree_digest(ck) == ck_before

    # The next run succeeds (from the cache) and leaves no temporary folder anywhere.
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    assert not _leftovers(tmp_path)
    assert "histosge_predictions" in sd.read_zarr(out).tables
    assert (ck / "weights.safetensors").is_file()


@pytest.mark.slow
def test_convert_killed_when_its_temporary_store_appears(tmp_path, base):
    src, out = tmp_path / "s.zarr", tmp_path / "c.zarr"
    shutil.copytree(base["store"], src)
    shutil.copytree(base["prev"], out)
    src_before, out_before = tree_digest(src), tree_digest(out)
    res = _interrupt_on(
        ["convert", src, out, "--overwrite"], (tmp_path, ".c.zarr.tmp-*/tables"), signal.SIGKILL
    )
    assert res.returncode == -signal.SIGKILL
    assert tree_digest(src) == src_before
    assert tree_digest(out) == out_before
    sd.read_zarr(out)
    assert run_cli(["convert", src, out, "--overwrite"]).returncode == 0
    assert not _leftovers(tmp_path)


def test_listed_but_damaged_cache_is_skipped_and_rewritten(tmp_path, cached_store):
    """A cache element left half-written by an older version no longer blocks the store."""
    from napari_histosge.io import read_slide

    store = tmp_path / "s.zarr"
    shutil.copytree(cached_store, store)
    shutil.rmtree(store / "tables" / CACHE / "obs")
    (store / "tables" / CACHE / "zarr.json").unlink()
    with pytest.warns(UserWarning, match="damaged feature cache"):
        sdata = read_slide(store)
    assert CACHE not in sdata.tables
    assert "table" in sdata.tables
    from napari_histosge.features.cache import store as write_cache

    n = sdata.tables["table"].n_obs
    write_cache(
        sdata, CACHE, "X_again", np.zeros((n, 2)), np.ones((n, 3), np.float32),
        {"positions_digest": "again", "dim": 3},
    )  # fmt: skip
    assert "X_again" in sd.read_zarr(store).tables[CACHE].obsm
    assert not _leftovers(store)


def test_stale_siblings_only_of_our_pattern_are_cleaned(tmp_path):
    from napari_histosge.store import check_target, write_folder_atomic

    out = tmp_path / "o.zarr"
    ours = [tmp_path / ".o.zarr.tmp-0123abcd", tmp_path / ".o.zarr.old-89abcdef"]
    theirs = [tmp_path / ".o.zarr.tmp-mine", tmp_path / ".o.zarr.backup", tmp_path / ".x.tmp-0"]
    for p in ours + theirs:
        p.mkdir()
        (p / "f").write_text("x")
    (ours[1] / MARKER_NAME).write_text("{}")  # an earlier output caught mid-swap
    # The `.old-*` with nothing at `out` is the previous output caught mid-swap: put back.
    with pytest.warns(UserWarning, match="restored"):
        check_target(out, overwrite=True)
    assert (out / "f").read_text() == "x"
    write_folder_atomic(out, lambda tmp: tmp.mkdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["o.zarr"] + [p.name for p in theirs]
    )
    assert (out / MARKER_NAME).is_file()


@pytest.mark.slow
@pytest.mark.parametrize(("point", "sig"), [("folder-written", "INT"), ("folder-swapped", "KILL")])
def test_run_export_killed_at(point, sig, tmp_path, base):
    from napari_histosge.store import check_target

    src, out = tmp_path / "s.zarr", tmp_path / "o.zarr"
    shutil.copytree(base["store"], src)
    shutil.copytree(base["prev"], out)
    src_before, out_before = _visible(src), tree_digest(out)
    res = run_cli(
        ["run", src, "--out", out, "--overwrite", "--no-cache", *FAST],
        HISTOSGE_FAULT_AT=point,
        HISTOSGE_FAULT_SIGNAL=sig,
    )
    _assert_interrupted(res, sig)
    assert _visible(src) == src_before
    sd.read_zarr(src)
    back = sd.read_zarr(out)
    if point == "folder-written":
        assert tree_digest(out) == out_before
        assert "cancelled; wrote no output;" in res.stderr  # --no-cache: nothing else written
    else:
        assert "histosge_predictions" in back.tables  # the new output, complete
    with pytest.warns(UserWarning, match="leftover") if point != "folder-written" else _nothing():
        check_target(out, overwrite=True)
    assert not _leftovers(tmp_path)


def _nothing():
    import contextlib

    return contextlib.nullcontext()
