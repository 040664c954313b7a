from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from PIL import Image

from napari_histosge.io import (
    SlideKeys,
    convert,
    counts_or_lognorm,
    image_levels,
    is_log_normalized,
    read_slide,
    resolve_keys,
    validate_slide,
)
from napari_histosge.patches import read_patches


def test_sample_has_expected_elements(sample_sdata):
    keys = resolve_keys(sample_sdata)
    assert keys == SlideKeys("V1_Adult_Mouse_Brain_image", "V1_Adult_Mouse_Brain_spots", "table")
    validate_slide(sample_sdata, keys)
    img = image_levels(sample_sdata.images[keys.image_key])[0]
    assert img.dims == ("c", "y", "x") and img.dtype == np.uint8 and img.sizes["c"] == 3
    assert sample_sdata.tables["table"].n_obs == 49
    radius = sample_sdata.shapes[keys.spots_key]["radius"].iloc[0]
    assert radius == pytest.approx(89.44 / 2, abs=0.01)


def test_sample_is_detected_as_log_normalised(sample_sdata):
    table = sample_sdata.tables["table"]
    assert is_log_normalized(table)
    with pytest.warns(UserWarning, match="already log-normalised"):
        counts_or_lognorm(table)


def test_convert_her2st_puts_spots_on_tissue(her2st_c2_zarr):
    sdata = sd.read_zarr(her2st_c2_zarr)
    keys = resolve_keys(sdata)
    assert keys == SlideKeys("C2_image", "C2_spots", "table")
    table = sdata.tables["table"]
    assert table.n_obs == 187 and table.obs_names[0].count("x") == 1
    assert not is_log_normalized(table)
    from napari_histosge.geometry import spot_geometry

    geom = spot_geometry(sdata, **keys.__dict__)
    assert geom.lattice == "square"
    assert geom.um_per_px == pytest.approx(0.74, abs=0.02)
    assert geom.diameter_px == pytest.approx(135, abs=3)
    image = sdata.images[keys.image_key]
    assert len(image_levels(image)) > 1  # multiscale, lazy
    spots = read_patches(image, geom.centers_px[:40], 60, out_px=16).mean()
    h, w = image_levels(image)[0].shape[1:]
    corners = np.array([[100, 100], [w - 100, 100], [100, h - 100], [w - 100, h - 100]], float)
    background = read_patches(image, corners, 60, out_px=16).mean()
    assert spots < background - 20


def test_convert_refuses_existing_output(her2st_section_dir, tmp_path):
    out = tmp_path / "x.zarr"
    out.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(her2st_section_dir, out)


def _fake_section(tmp_path: Path, n: int = 16, *, image: np.ndarray | None = None) -> Path:
    folder = tmp_path / "sec"
    folder.mkdir()
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    ids, rows = [], []
    for i in range(n):
        x, y = i % side + 1, i // side + 1
        ids.append(f"{x}x{y}")
        rows.append({"x": x, "y": y, "new_x": x, "new_y": y, "pixel_x": 40.0 * x, "pixel_y": 40.0 * y,
                     "selected": 1})
    pd.DataFrame(rows).to_csv(folder / "S1_selection.tsv", sep="\t", index=False)
    counts = pd.DataFrame(rng.poisson(3, (n, 5)), index=ids, columns=[f"G{i}" for i in range(5)])
    counts.to_csv(folder / "S1.tsv.gz", sep="\t")
    img = image if image is not None else rng.integers(0, 255, (240, 240, 3), dtype=np.uint8)
    Image.fromarray(img).save(folder / "S1.jpg")
    return folder


def test_st_folder_roundtrip(tmp_path):
    folder = _fake_section(tmp_path)
    sdata = read_slide(folder)
    assert list(sdata.tables["table"].obs_names[:2]) == ["1x1", "2x1"]
    out = convert(folder, tmp_path / "S1.zarr")
    assert sd.read_zarr(out).tables["table"].n_obs == 16


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda f: (f / "S1.jpg").write_bytes((f / "S1.jpg").read_bytes()[:200]), "unreadable or truncated"),
        (lambda f: _drop_spot_row(f), "no position"),
        (lambda f: _set_count(f, -1), "negative"),
        (lambda f: _set_count(f, float("nan")), "NaN"),
        (lambda f: _keep_rows(f, 5), "at least 10 spots"),
        (lambda f: _move_spot(f, 10_000), "outside"),
        (lambda f: (f / "S1.jpg").unlink(), "H&E image"),
    ],
)
def test_st_bad_input(tmp_path, mutate, match):
    folder = _fake_section(tmp_path)
    mutate(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match=match):
        read_slide(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def _drop_spot_row(folder: Path) -> None:
    df = pd.read_csv(folder / "S1_selection.tsv", sep="\t")
    df.iloc[1:].to_csv(folder / "S1_selection.tsv", sep="\t", index=False)


def _set_count(folder: Path, value: float) -> None:
    df = pd.read_csv(folder / "S1.tsv.gz", sep="\t", index_col=0).astype(float)
    df.iloc[0, 0] = value
    df.to_csv(folder / "S1.tsv.gz", sep="\t")


def _keep_rows(folder: Path, n: int) -> None:
    df = pd.read_csv(folder / "S1.tsv.gz", sep="\t", index_col=0)
    df.iloc[:n].to_csv(folder / "S1.tsv.gz", sep="\t")


def _move_spot(folder: Path, px: float) -> None:
    df = pd.read_csv(folder / "S1_selection.tsv", sep="\t")
    df.loc[0, "pixel_x"] = px
    df.to_csv(folder / "S1_selection.tsv", sep="\t", index=False)


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.full((240, 240), 128, np.uint8), "grayscale"),
        (np.full((240, 240, 4), 128, np.uint8), "RGBA"),
    ],
)
def test_non_rgb_images_are_converted_with_a_warning(tmp_path, arr, match):
    folder = _fake_section(tmp_path, image=np.zeros((240, 240, 3), np.uint8))
    (folder / "S1.jpg").unlink()
    Image.fromarray(arr).save(folder / "S1.png")
    shutil.move(folder / "S1.png", folder / "S1.jpg")  # PIL reads by content
    with pytest.warns(UserWarning, match=match):
        sdata = read_slide(folder)
    assert image_levels(sdata.images["S1_image"])[0].sizes["c"] == 3


def test_uint16_store_image_is_rescaled(tmp_path, sample_sdata):
    from spatialdata.models import Image2DModel

    img = image_levels(sample_sdata.images["V1_Adult_Mouse_Brain_image"])[0].values.astype(np.uint16) * 257
    sample_sdata.images["V1_Adult_Mouse_Brain_image"] = Image2DModel.parse(img, dims=("c", "y", "x"))
    store = tmp_path / "u16.zarr"
    sample_sdata.write(store)
    with pytest.warns(UserWarning, match="uint16"):
        sdata = read_slide(store)
    assert image_levels(sdata.images["V1_Adult_Mouse_Brain_image"])[0].dtype == np.uint8
    assert sd.read_zarr(store).images["V1_Adult_Mouse_Brain_image"].dtype == np.uint16  # disk untouched


def test_missing_elements_give_clear_errors(sample_sdata):
    no_table = sd.SpatialData(images=dict(sample_sdata.images), shapes=dict(sample_sdata.shapes))
    with pytest.raises(ValueError, match="no table"):
        resolve_keys(no_table)
    no_shapes = sd.SpatialData(images=dict(sample_sdata.images))
    with pytest.raises(ValueError, match="circles"):
        resolve_keys(no_shapes)
    no_image = sd.SpatialData(shapes=dict(sample_sdata.shapes), tables=dict(sample_sdata.tables))
    with pytest.raises(ValueError, match="no image"):
        resolve_keys(no_image)
    with pytest.raises(KeyError, match="image_key"):
        resolve_keys(sample_sdata, image_key="nope")
    with pytest.raises(KeyError, match="spots_key"):
        resolve_keys(sample_sdata, spots_key="nope")


def test_table_not_annotating_spots(sample_sdata):
    from spatialdata.models import ShapesModel

    shapes = sample_sdata.shapes["V1_Adult_Mouse_Brain_spots"]
    sample_sdata.shapes["other"] = ShapesModel.parse(shapes.copy())
    with pytest.raises(ValueError, match="annotate"):
        resolve_keys(sample_sdata, spots_key="other")


def test_visium_folder(tmp_path):
    """A minimal Space Ranger layout read through spatialdata-io lands spots on the right pixels."""
    import json

    import anndata as ad
    import h5py
    import scipy.sparse as sp

    folder = tmp_path / "visium"
    (folder / "spatial").mkdir(parents=True)
    n, genes = 12, ["Gene1", "Gene2", "Gene3"]
    barcodes = [f"AAAC{i:04d}-1" for i in range(n)]
    rng = np.random.default_rng(0)
    m = sp.csc_matrix(rng.poisson(4, (len(genes), n)).astype(np.int32))
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"] = m.data
        g["indices"] = m.indices
        g["indptr"] = m.indptr
        g["shape"] = np.array(m.shape)
        feat = g.create_group("features")
        feat["id"] = np.array([f"ID{i}" for i in range(len(genes))], dtype="S")
        feat["name"] = np.array(genes, dtype="S")
        feat["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        feat["genome"] = np.array(["mm10"] * len(genes), dtype="S")
        feat["_all_tag_keys"] = np.array([b"genome"])
        f.attrs["library_ids"] = np.array([b"lib"])
        f.attrs["chemistry_description"] = "Spatial 3' v1"
        f.attrs["filetype"] = "matrix"
        f.attrs["software_version"] = "spaceranger-1.0.0"
        f.attrs["version"] = 2
    rows = [(b, 1, i // 4, (i % 4) * 2 + (i // 4) % 2, 400 + 80 * (i // 4), 400 + 92 * (i % 4))
            for i, b in enumerate(barcodes)]
    pd.DataFrame(rows).to_csv(folder / "spatial" / "tissue_positions_list.csv", header=False, index=False)
    json.dump({"spot_diameter_fullres": 60.0, "tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1,
               "fiducial_diameter_fullres": 90.0}, open(folder / "spatial" / "scalefactors_json.json", "w"))
    Image.fromarray(rng.integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(folder / "spatial" / "tissue_hires_image.png")
    Image.fromarray(rng.integers(0, 255, (120, 120, 3), dtype=np.uint8)).save(folder / "spatial" / "tissue_lowres_image.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sdata = read_slide(folder)
        except Exception as err:  # pragma: no cover - reader layout differences
            pytest.fail(f"Visium reader failed: {err}")
    keys = resolve_keys(sdata)
    from napari_histosge.geometry import spot_geometry

    geom = spot_geometry(sdata, **keys.__dict__)
    table = sdata.tables[keys.table_key]
    assert set(table.obs_names) == set(barcodes)
    # Full-resolution pixel (400, 400) lands on hires pixel (200, 200).
    first = list(geom.spot_ids).index(barcodes[0])
    scale = image_levels(sdata.images[keys.image_key])[0].sizes["x"] / 600 * 0.5
    np.testing.assert_allclose(geom.centers_px[first], [400 * scale, 400 * scale], atol=1e-6)
    assert geom.diameter_px == pytest.approx(60 * scale)
    assert geom.um_per_px == pytest.approx(55 / (60 * scale))
