"""Whole-slide files: lazy multiscale reads, µm per pixel, predict/batch/convert, napari reader."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import spatialdata as sd
import tifffile

from napari_histosge.cli import main
from napari_histosge.images import image_levels
from napari_histosge.io.wsi import (
    UM_PER_PX_ATTR,
    is_slide_file,
    read_wsi,
    stored_um_per_px,
)
from napari_histosge.store import EXPRESSION_KEY, POSITIONS_KEY, PREDICTIONS_KEY
from napari_histosge.workflows.batch import slide_name

UM = 0.727  # the bundled sample's scale


def write_pyramid(
    path: Path,
    rgb: np.ndarray,
    *,
    um_per_px: float | None,
    levels: int = 3,
    tile: int = 128,
    unit: str = "CENTIMETER",
    description: str | None = None,
) -> Path:
    """Write a tiled pyramidal RGB TIFF (sub-IFDs), with resolution tags when ``um_per_px``."""

    def res(factor: int) -> dict:
        if um_per_px is None:
            return {}
        per_unit = {"CENTIMETER": 1e4, "INCH": 25400.0}[unit] / (um_per_px * factor)
        return {"resolution": (per_unit, per_unit), "resolutionunit": unit}

    with tifffile.TiffWriter(path) as tw:
        extra = {"description": description} if description else {"metadata": None}
        tw.write(
            rgb,
            tile=(tile, tile),
            photometric="rgb",
            compression="zlib",
            subifds=levels - 1,
            **extra,
            **res(1),
        )
        for i in range(1, levels):
            tw.write(
                np.ascontiguousarray(rgb[:: 2**i, :: 2**i]),
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                subfiletype=1,
                metadata=None,
                **res(2**i),
            )
    return path


@pytest.fixture(scope="module")
def sample_rgb() -> np.ndarray:
    from napari_histosge.io import load_sample

    sdata = load_sample()
    image = sdata.images[next(iter(sdata.images))]
    return np.asarray(image_levels(image)[0].data).transpose(1, 2, 0)


@pytest.fixture(scope="module")
def slides(tmp_path_factory, sample_rgb) -> Path:
    root = tmp_path_factory.mktemp("wsi")
    write_pyramid(root / "A.tif", sample_rgb, um_per_px=UM)
    write_pyramid(root / "B.tif", np.ascontiguousarray(sample_rgb[:, ::-1]), um_per_px=UM)
    write_pyramid(root / "nores.tif", sample_rgb, um_per_px=None)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory, sample_zarr) -> Path:
    """A small model from ``histosge run --checkpoint-out`` on the bundled sample."""
    import shutil

    root = tmp_path_factory.mktemp("model")
    shutil.copytree(sample_zarr, root / "sample.zarr")  # a copy: the run caches its features
    argv = ["run", str(root / "sample.zarr"), "--mode", "improved", "--quiet"]
    argv += ["--checkpoint-out", str(root / "model"), "--out", str(root / "run.zarr")]
    assert main([*argv, "--epochs", "3", "--n-top-genes", "20"]) == 0
    return root / "model"


def test_read_wsi_is_lazy_and_keeps_the_files_pyramid(slides, sample_rgb):
    sdata = read_wsi(slides / "A.tif")
    assert list(sdata.images) == ["A_image"]
    levels = image_levels(sdata.images["A_image"])
    h, w = sample_rgb.shape[:2]
    assert [lv.shape for lv in levels] == [
        (3, h, w),
        (3, (h + 1) // 2, (w + 1) // 2),
        (3, (h + 3) // 4, (w + 3) // 4),
    ]
    for lv in levels:
        assert isinstance(lv.data, da.Array)
        assert lv.dtype == np.uint8
        # Read from the file's tiles: no decoded pixels held in the graph.
        held = [v for v in dict(lv.data.dask).values() if isinstance(v, np.ndarray)]
        assert sum(v.nbytes for v in held) < 1024
    np.testing.assert_array_equal(
        np.asarray(levels[0][:, 100:140, 200:260]).transpose(1, 2, 0), sample_rgb[100:140, 200:260]
    )
    assert stored_um_per_px(sdata, "A_image") == pytest.approx(UM)
    # Tiles read by many threads at once decode as tifffile decodes the whole level.
    import dask

    with dask.config.set(scheduler="threads", num_workers=8):
        level1 = levels[1].data.rechunk((3, 128, 128)).compute()
    with tifffile.TiffFile(slides / "A.tif") as tif:
        expected = tif.series[0].levels[1].asarray().transpose(2, 0, 1)
    np.testing.assert_array_equal(level1, expected)


def test_scale_from_aperio_mpp_and_implausible_tags(tmp_path, sample_rgb):
    desc = "Aperio Image Library v12.0.15\r\n950x1717 (128x128) RGB|AppMag = 20|MPP = 0.4990"
    svs = write_pyramid(tmp_path / "x.svs", sample_rgb, um_per_px=None, description=desc)
    assert stored_um_per_px(read_wsi(svs), "x_image") == pytest.approx(0.499)
    # 72 dpi, the default of many image writers, is not a scan's scale.
    dpi = write_pyramid(tmp_path / "dpi.tif", sample_rgb, um_per_px=25400 / 72, unit="INCH")
    assert UM_PER_PX_ATTR not in read_wsi(dpi).attrs
    assert stored_um_per_px(read_wsi(dpi, um_per_px=0.5), "dpi_image") == 0.5
    with pytest.raises(ValueError, match="positive"):
        read_wsi(dpi, um_per_px=-1.0)


def test_slide_files_are_told_from_plain_tiffs(tmp_path, slides):
    plain = tmp_path / "photo.tif"
    tifffile.imwrite(plain, np.zeros((64, 64, 3), np.uint8))
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((5, 64, 64), np.uint16), tile=(32, 32))
    assert is_slide_file(slides / "A.tif")
    assert not is_slide_file(plain)
    flat = tmp_path / "flat.tif"  # tiled, one level: a slide only when large
    tifffile.imwrite(flat, np.zeros((512, 640, 3), np.uint8), tile=(256, 256), photometric="rgb")
    assert not is_slide_file(flat)
    big = tmp_path / "big.tif"
    tiles = (np.zeros((256, 256, 3), np.uint8) for _ in range(33))
    tifffile.imwrite(big, tiles, shape=(256, 8448, 3), dtype=np.uint8, tile=(256, 256),
                     photometric="rgb")  # fmt: skip
    assert is_slide_file(big)
    assert len(image_levels(read_wsi(big, um_per_px=0.5).images["big_image"])) > 1
    assert not is_slide_file(stack)
    assert not is_slide_file(tmp_path / "missing.svs")
    assert not is_slide_file(tmp_path)


def test_napari_reader_opens_slides_and_leaves_plain_tiffs(tmp_path, slides):
    from napari_histosge._reader import napari_get_reader

    plain = tmp_path / "photo.tif"
    tifffile.imwrite(plain, np.zeros((64, 64, 3), np.uint8))
    assert napari_get_reader(str(plain)) is None
    reader = napari_get_reader(str(slides / "A.tif"))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(slides / "A.tif"))
    assert kind == "image"
    assert kwargs["rgb"]
    assert kwargs["multiscale"]
    assert [d.shape[-1] for d in data] == [3, 3, 3]
    assert all(isinstance(d, da.Array) for d in data)
    assert kwargs["metadata"]["store"] == str(slides / "A.tif")  # the dock's "From layers"


def test_slide_name_strips_slide_endings():
    assert slide_name("/a/B7.svs") == "B7"
    assert slide_name("/a/C.tiff") == "C"
    assert slide_name("/a/D.zarr/") == "D"
    assert slide_name("/a/E.h5") == "E.h5"


@pytest.mark.slow
def test_predict_a_tiff_equals_predicting_its_converted_store(tmp_path, slides, model, capsys):
    out = tmp_path / "A.zarr"
    assert main(["predict", str(slides / "A.tif"), "--checkpoint", str(model), "--out",
                 str(out), "--quiet"]) == 0  # fmt: skip
    back = sd.read_zarr(out)
    assert {"A_image", EXPRESSION_KEY} <= set(back.images)
    assert POSITIONS_KEY in back.shapes
    assert PREDICTIONS_KEY in back.tables
    assert len(image_levels(back.images["A_image"])) == 3
    assert stored_um_per_px(back, "A_image") == pytest.approx(UM)
    table = back.tables[PREDICTIONS_KEY]
    assert set(table.obs["kind"]) == {"lattice", "4x"}
    assert table.n_vars == 20
    assert np.isfinite(table.X).all()

    conv = tmp_path / "A_conv.zarr"
    assert main(["convert", str(slides / "A.tif"), str(conv)]) == 0
    converted = sd.read_zarr(conv)
    assert list(converted.images) == ["A_image"]
    assert not converted.tables
    out2 = tmp_path / "A_from_store.zarr"
    assert main(["predict", str(conv), "--checkpoint", str(model), "--out", str(out2),
                 "--quiet"]) == 0  # fmt: skip
    other = sd.read_zarr(out2).tables[PREDICTIONS_KEY]
    np.testing.assert_array_equal(other.X, table.X)

    # No scale in the file: one line asking for --um-per-px, then it runs with it.
    capsys.readouterr()
    argv = ["predict", str(slides / "nores.tif"), "--checkpoint", str(model), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "n.zarr")]) == 2
    err = capsys.readouterr().err
    assert "--um-per-px" in err
    assert "nores.tif" in err
    assert len(err.strip().splitlines()) == 1
    assert main([*argv, "--out", str(tmp_path / "n.zarr"), "--um-per-px", str(UM)]) == 0
    n = sd.read_zarr(tmp_path / "n.zarr").tables[PREDICTIONS_KEY]
    np.testing.assert_allclose(n.X, table.X, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_batch_applies_a_model_to_slide_files(tmp_path, slides, model, capsys):
    import pandas as pd

    out = tmp_path / "cohort"
    argv = ["batch", str(slides / "A.tif"), str(slides / "B.tif"), str(slides / "nores.tif")]
    argv += ["--checkpoint", str(model), "--out-dir", str(out), "--n-workers", "2"]
    assert main(argv) == 1  # one slide failed, the others were written
    report = pd.read_csv(out / "report.csv")
    assert report["status"].tolist() == ["done", "done", "failed"]
    assert "--um-per-px" in report["error"].iloc[2]
    for name in ("A", "B"):
        back = sd.read_zarr(out / f"{name}.zarr")
        assert {EXPRESSION_KEY, f"{name}_image"} <= set(back.images)
        assert back.tables[PREDICTIONS_KEY].n_vars == 20
    assert not (out / "nores.zarr").exists()
    # Resumable: finished slides are skipped; the failed one runs again (and, with a scale, works).
    assert main([*argv, "--um-per-px", str(UM)]) == 0
    report = pd.read_csv(out / "report.csv")
    assert report["status"].tolist() == ["skipped", "skipped", "done"]


@pytest.mark.slow
def test_blocks_and_lazy_maps_match_the_whole_slide_at_once(slides, model):
    from dataclasses import replace

    from napari_histosge import run_generator
    from napari_histosge.maps import rasterize
    from napari_histosge.models.checkpoints import load_checkpoint
    from napari_histosge.workflows.batch_predict import prediction_options
    from napari_histosge.workflows.pipeline import iter_extract, predict_slide
    from napari_histosge.workflows.sections import open_for_prediction
    from napari_histosge.workflows.whole_slide import iter_extract_blocked, rasterize_gaussian_lazy

    trained = load_checkpoint(model)
    opts = replace(prediction_options(trained), cache=False)
    slide = open_for_prediction(slides / "A.tif", model=trained)
    whole = run_generator(iter_extract(slide, options=opts))
    blocked = run_generator(iter_extract_blocked(slide, options=opts, block_um=300.0))
    assert blocked.spots.meta["blocks"]["count"] > 4
    scale = np.abs(whole.spots.features).mean(axis=0) + 1e-6
    for a, b in ((whole.spots, blocked.spots), (whole.positions, blocked.positions)):
        assert np.abs(a.features - b.features).max(axis=0).max() / scale.min() < 1e-3
    np.testing.assert_array_equal(whole.positions_px, blocked.positions_px)

    preds = predict_slide(slide, features=whole, model=trained, use_measured=False)
    eager = rasterize(preds, method="gaussian", geometry=slide.geometry)
    lazy = rasterize_gaussian_lazy(preds, geometry=slide.geometry, genes_per_block=3)
    assert isinstance(lazy.data, da.Array)
    assert lazy.data.chunks[0][0] == 3
    assert (lazy.pitch_px, lazy.origin_px) == (eager.pitch_px, eager.origin_px)
    np.testing.assert_allclose(np.asarray(lazy.data), eager.data, rtol=1e-6, equal_nan=True)


@pytest.mark.slow
def test_dock_worker_opens_a_slide_file_and_predicts_with_a_model(tmp_path, slides, model):
    """The dock's worker tasks (no Qt): open a TIFF by path, load a model, predict."""
    from napari_histosge._widgets._task_job import Job
    from napari_histosge._widgets._tasks_steps import TASKS, WorkerState

    def job(payload, context=None):
        return Job(payload=payload, context=context or {}, report=lambda r: None, stop=lambda: 0)

    state = WorkerState(tmp_path)
    opened = TASKS["open"](state, job({"source": str(slides / "A.tif")}))
    assert "problem" not in opened
    assert opened["keys"]["image_key"] == "A_image"
    assert not opened["has_table"]
    no_scale = TASKS["open"](state, job({"source": str(slides / "nores.tif")}))
    assert "µm per pixel" in no_scale["problem"]
    loaded = TASKS["load_model"](state, job({"path": str(model)}))
    slide = {"source": opened["source"], "keys": opened["keys"], "image_only": True}
    got = TASKS["predict"](state, job({"options": {}}, {"slide": slide, "model": loaded["path"]}))
    out = tmp_path / "cli.zarr"
    assert main(["predict", str(slides / "A.tif"), "--checkpoint", str(model), "--out",
                 str(out), "--quiet"]) == 0  # fmt: skip
    assert got["n_positions"] == sd.read_zarr(out).tables[PREDICTIONS_KEY].n_obs
