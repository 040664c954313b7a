"""Shared fixtures: paths to the real datasets beside the repository.

The real datasets live in ``../shared/data`` (override with ``HISTOSGE_SHARED_DATA``). On a
fresh clone without that folder, every test that needs it (the ``her2st`` and ``shared_data``
markers, or the ``shared_data`` fixture) is skipped with a reason naming the folder; all other
tests run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    os.environ.get("HISTOSGE_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data"
).resolve()
HER2ST = SHARED_DATA / "her2st" / "data"
NO_SHARED_DATA = (
    f"needs the shared datasets folder {SHARED_DATA} (../shared/data beside the repository, "
    "or HISTOSGE_SHARED_DATA); it is missing"
)


# timm loads triton; loaded after napari's OpenGL context exists in the same process, triton
# crashes the interpreter (a segfault in its import). Loading it first, as a serial run does
# by importing timm before the widget tests, lets any test follow a widget test in a process
# (pytest-xdist hands the tests to its workers in any order).
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

_XVFB = pytest.StashKey[object]()


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, one virtual display for all the workers, started before them.

    The workers inherit ``DISPLAY``, so that two of them never race for one display number
    (``tests/widgets/conftest.py`` starts a display only when none is set).
    """
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        from napari_histosge._widgets._display import start_virtual_display

        config.stash[_XVFB] = start_virtual_display()


def pytest_unconfigure(config: pytest.Config) -> None:
    proc = config.stash.get(_XVFB, None)
    if proc is not None:
        proc.terminate()  # type: ignore[attr-defined]
        proc.wait(timeout=10)  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=NO_SHARED_DATA)
    for item in items:
        if item.get_closest_marker("her2st") or item.get_closest_marker("shared_data"):
            item.add_marker(skip)


def her2st_section_files(section: str) -> dict[str, Path]:
    """Paths of one her2st section's counts, spot file and H&E image."""
    images = sorted((HER2ST / "ST-imgs" / section[0] / section).glob("*.jpg"))
    return {
        "counts": HER2ST / "ST-cnts" / f"{section}.tsv.gz",
        "spots": HER2ST / "ST-spotfiles" / f"{section}_selection.tsv",
        "image": images[0] if images else HER2ST / "missing.jpg",
    }


def _built_once(
    tmp_path_factory: pytest.TempPathFactory, leaf: str, build: Callable[[Path], object]
) -> Path:
    """``build(folder / leaf)`` run once per test run; that path, shared read only.

    Without pytest-xdist, the path is in this session's temporary folder. Under pytest-xdist,
    the workers share one folder beside their own (the run's temporary root, as in
    pytest-xdist's documentation): the first worker to get there builds in a temporary sibling
    and renames it into place under a file lock, and the others wait for it and reuse it, so
    that no worker sees a half-built store and the expensive build (the C2 conversion: about
    10 s of CPU) is not done once per worker.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        out = tmp_path_factory.mktemp(leaf.split(".")[0]) / leaf
        build(out)
        return out
    from filelock import FileLock  # a dependency of torch

    root = tmp_path_factory.getbasetemp().parent / "shared_fixtures"
    root.mkdir(exist_ok=True)
    done = root / leaf.split(".")[0]
    with FileLock(str(done.with_suffix(".lock"))):
        if not done.is_dir():
            part = root / f".{done.name}.building-{os.getpid()}"
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir()
            build(part / leaf)
            part.rename(done)
    return done / leaf


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(NO_SHARED_DATA)
    return SHARED_DATA


@pytest.fixture(scope="session")
def her2st_section_dir(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A folder holding section C2's three files, as a user would lay them out."""
    files = her2st_section_files("C2")
    folder = tmp_path_factory.mktemp("her2st_C2")
    for path in files.values():
        (folder / path.name).symlink_to(path)
    return folder


@pytest.fixture
def sample_sdata():
    from napari_histosge.io import load_sample

    return load_sample()


@pytest.fixture(scope="session")
def her2st_c2_zarr(tmp_path_factory: pytest.TempPathFactory, her2st_section_dir: Path) -> Path:
    """Section C2 converted once per test run with ``convert``; tests must not modify it."""
    from napari_histosge.io import convert

    return _built_once(tmp_path_factory, "C2.zarr", lambda p: convert(her2st_section_dir, p))


@pytest.fixture
def her2st_c2_copy(tmp_path: Path, her2st_c2_zarr: Path) -> Path:
    """A private copy of the converted C2 store that a test may write into."""
    import shutil

    dst = tmp_path / "C2.zarr"
    shutil.copytree(her2st_c2_zarr, dst)
    return dst


@pytest.fixture(scope="session")
def sample_zarr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample written once per test run as a store; tests must not modify it.

    A test that writes into a store (a feature cache, outputs in place) copies it first.
    """
    from napari_histosge.io import load_sample
    from napari_histosge.store import write_sdata

    return _built_once(tmp_path_factory, "s.zarr", lambda p: write_sdata(load_sample(), p))


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickly fitted model (``safety_helpers.small_model``) saved once; read only."""
    from safety_helpers import small_model

    from napari_histosge.models.checkpoints import save_checkpoint

    return _built_once(tmp_path_factory, "model", lambda p: save_checkpoint(small_model(), p))
