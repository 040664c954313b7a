"""Helpers of the bad-input and fault-injection suites: tiny stores, checkpoints, checksums."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from napari_histosge.store import write_sdata

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ["--epochs", "1", "--n-top-genes", "5", "--quiet"]


def tree_digest(root: Path, *, hidden: bool = True) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``root`` (or of ``root`` itself)."""
    root = Path(root)
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not hidden and any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file():
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def env(**extra: str) -> dict[str, str]:
    """Environment of a subprocess running this checkout's package."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(SRC) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def run_cli(args: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    """``histosge ARGS`` in a process of its own (see ``cli_process``), run to its end."""
    from cli_process import finish, start_cli

    return finish(start_cli(args, env(**extra)))


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that are not zarr's own chatter."""
    return [
        ln
        for ln in stderr.strip().splitlines()
        if ln.strip() and "autosharding" not in ln and "return next(self.gen)" not in ln
    ]


def with_counts(src: Path, dst: Path, fill: float | None = None, *, inf: bool = False) -> Path:
    """A copy of the store ``src`` at ``dst`` with its table's counts replaced."""
    import spatialdata as sd

    sdata = sd.read_zarr(src)
    table = sdata.tables["table"]
    x = np.asarray(table.X.todense() if hasattr(table.X, "todense") else table.X, dtype=np.float32)
    if fill is not None:
        x[:] = fill
    if inf:
        x[0, 0] = np.inf
    table.X = x
    write_sdata(sdata, dst)
    return dst


def fake_section(folder: Path, n: int = 16) -> Path:
    """A her2st-style section folder (counts, spot file, H&E) with ``n`` spots."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    ids, rows = [], []
    for i in range(n):
        x, y = i % side + 1, i // side + 1
        ids.append(f"{x}x{y}")
        rows.append(
            {"x": x, "y": y, "new_x": x, "new_y": y, "pixel_x": 40.0 * x, "pixel_y": 40.0 * y}
        )
    pd.DataFrame(rows).to_csv(folder / "S1_selection.tsv", sep="\t", index=False)
    counts = pd.DataFrame(rng.poisson(3, (n, 5)), index=ids, columns=[f"G{i}" for i in range(5)])
    counts.to_csv(folder / "S1.tsv.gz", sep="\t")
    Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(folder / "S1.jpg")
    return folder


def small_model(n_genes: int = 4, dim: int = 6, seed: int = 0):
    """A quickly fitted model (its feature meta matches nothing real)."""
    from napari_histosge.models import TrainConfig
    from napari_histosge.train import fit

    rng = np.random.default_rng(seed)
    n = 40
    xy = np.stack(np.meshgrid(np.arange(8), np.arange(5)), -1).reshape(-1, 2) * 100.0
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    values = rng.random((n, n_genes)).astype(np.float32)
    meta = {"encoder": "histology", "encoder_id": "histology@v2", "dim": dim,
            "patch_sizes_spot": [1.0]}  # fmt: skip
    genes = [f"G{i}" for i in range(n_genes)]
    cfg = TrainConfig(epochs=2, ensemble=1)
    return fit(feats, xy, values, genes=genes, config=cfg, feature_meta=meta)
