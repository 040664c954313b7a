from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from PIL import Image

from napari_histosge.expression import counts_or_lognorm, is_log_normalized
from napari_histosge.geometry import spot_geometry
from napari_histosge.images import image_levels
from napari_histosge.io import (
    SlideKeys,
    convert,
    read_slide,
    resolve_keys,
    validate_slide,
)
from napari_histosge.store import SLIDE_META_KEY, write_sdata

SAMPLE_IMAGE = "V1_Adult_Mouse_Brain_image"
SAMPLE_SPOTS = "V1_Adult_Mouse_Brain_spots"


def _geom(sdata, keys=None):
    keys = keys or resolve_keys(sdata)
    return spot_geometry(sdata, **keys.__dict__)


def _patch_means(level0, centers_px: np.ndarray, half: int) -> np.ndarray:
    """Mean intensity of small square patches around (x, y) centres of a (c, y, x) image."""
    out = []
    for x, y in np.round(centers_px).astype(int):
        patch = level0[:, y - half : y + half, x - half : x + half].values
        out.append(patch.mean())
    return np.array(out)


# --------------------------------------------------------------------------------------------
# The bundled sample


def test_sample_has_expected_elements(sample_sdata):
    import anndata as ad

    from napari_histosge.io import sample as _sample_data

    keys = resolve_keys(sample_sdata)
    assert keys == SlideKeys(SAMPLE_IMAGE, SAMPLE_SPOTS, "table")
    validate_slide(sample_sdata, keys)
    img = image_levels(sample_sdata.images[keys.image_key])[0]
    assert img.dims == ("c", "y", "x")
    assert img.dtype == np.uint8
    assert (img.sizes["c"], img.sizes["y"], img.sizes["x"]) == (3, 1717, 950)
    table = sample_sdata.tables["table"]
    assert table.shape == (49, 1999)
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == (
        SAMPLE_SPOTS,
        "region",
        "instance_id",
    )
    root = Path(_sample_data.__file__).parent.parent
    src = ad.read_h5ad(root / "sample_data" / "mouse_brain_crop.h5ad")
    assert list(table.obs_names) == list(src.obs_names)  # barcodes
    geom = _geom(sample_sdata, keys)
    np.testing.assert_allclose(geom.centers_px, src.obsm["spatial"])
    # spot_diameter_fullres (89.44 px) spans 65 µm; the true 55 µm spot is 75.7 px.
    assert geom.diameter_px == pytest.approx(89.4448 * 55 / 65, abs=0.01)
    assert geom.um_per_px == pytest.approx(65 / 89.4448, rel=1e-4)
    assert geom.lattice == "hexagonal"
    # The spot pitch is then 100 µm, as on every Visium slide.
    assert geom.pitch_px * geom.um_per_px == pytest.approx(100, rel=0.02)
    assert table.uns[SLIDE_META_KEY]["spot_diameter_um"] == 55.0


def test_sample_is_detected_as_log_normalised(sample_sdata):
    import warnings

    table = sample_sdata.tables["table"]
    assert is_log_normalized(table)
    # The sample declares its values log-normalised: no warning on every run.
    assert table.uns[SLIDE_META_KEY]["values"] == "log1p-normalised"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, lognorm = counts_or_lognorm(table)
    assert lognorm
    assert x.shape == (49, 1999)
    # Without that declaration the same values are used as they are, with a warning.
    undeclared = table.copy()
    undeclared.uns[SLIDE_META_KEY] = {
        k: v for k, v in table.uns[SLIDE_META_KEY].items() if k != "values"
    }
    with pytest.warns(UserWarning, match="already log-normalised"):
        assert counts_or_lognorm(undeclared)[1]


def test_is_log_normalized_and_counts_or_lognorm():
    import anndata as ad
    import scipy.sparse as sp

    counts = np.random.default_rng(0).poisson(3, (12, 4))
    assert not is_log_normalized(ad.AnnData(counts.astype(np.int32)))
    assert not is_log_normalized(ad.AnnData(sp.csr_matrix(counts.astype(np.float32))))
    assert is_log_normalized(ad.AnnData(np.log1p(counts.astype(float))))
    assert is_log_normalized(ad.AnnData(counts.astype(float) - 2.0))  # negative: not counts
    # layers["counts"] wins over a normalised X.
    a = ad.AnnData(np.log1p(counts.astype(float)), layers={"counts": counts.astype(float)})
    assert not is_log_normalized(a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, lognorm = counts_or_lognorm(a)
    assert not lognorm
    assert np.array_equal(x, counts)
    with pytest.raises(ValueError, match="negative"):
        counts_or_lognorm(ad.AnnData(counts.astype(float) - 2.5))
    bad = counts.astype(float)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        counts_or_lognorm(ad.AnnData(bad))


# --------------------------------------------------------------------------------------------
# her2st (real data)


@pytest.mark.her2st
def test_convert_her2st_puts_spots_on_tissue(her2st_c2_zarr, her2st_section_dir):
    sdata = sd.read_zarr(her2st_c2_zarr)
    keys = resolve_keys(sdata)
    assert keys == SlideKeys("C2_image", "C2_spots", "table")
    validate_slide(sdata, keys)
    table = sdata.tables["table"]
    assert table.shape == (187, 15706)
    head = pd.read_csv(next(her2st_section_dir.glob("*.tsv.gz")), sep="\t", index_col=0, nrows=5)
    assert list(table.obs_names[:5]) == list(head.index)  # "{x}x{y}" ids, counts order
    np.testing.assert_array_equal(table[:5, list(head.columns[:50])].X.toarray(), head.iloc[:, :50])
    assert not is_log_normalized(table)

    spots = pd.read_csv(next(her2st_section_dir.glob("*_selection.tsv")), sep="\t")
    spots.index = [f"{x}x{y}" for x, y in zip(spots.x, spots.y, strict=True)]
    geom = _geom(sdata, keys)
    np.testing.assert_allclose(geom.centers_px, spots.loc[table.obs_names, ["pixel_x", "pixel_y"]])
    assert geom.lattice == "square"
    # 200 µm per array step of about 290 px, and 100 µm spots of about 145 px.
    assert geom.um_per_px == pytest.approx(0.688, abs=0.01)
    assert geom.diameter_px == pytest.approx(145, abs=3)

    image = sdata.images[keys.image_key]
    levels = image_levels(image)
    assert len(levels) >= 4
    assert levels[0].dtype == np.uint8
    assert (levels[0].sizes["y"], levels[0].sizes["x"]) == (9911, 9274)
    assert levels[0].data.chunksize[1] <= 1024  # lazy, chunked
    level0 = levels[0]
    on_spots = _patch_means(level0, geom.centers_px[::6], 20)
    rng = np.random.default_rng(0)
    from scipy.spatial import cKDTree

    cand = rng.uniform([100, 100], [9174, 9811], size=(400, 2))
    far = cand[cKDTree(geom.centers_px).query(cand)[0] > 3 * geom.pitch_px][:30]
    corners = np.array([[100, 100], [9174, 100], [100, 9811], [9174, 9811]], float)
    background = _patch_means(level0, np.r_[far, corners], 20)
    assert len(far) >= 10
    assert np.median(on_spots) < np.median(background) - 30
    assert np.mean(on_spots < background.min()) > 0.9


# --------------------------------------------------------------------------------------------
# Small ST sections with bad inputs


def _fake_section(tmp_path: Path, n: int = 16, *, image: np.ndarray | None = None) -> Path:
    folder = tmp_path / "sec"
    folder.mkdir()
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n)))
    ids, rows = [], []
    for i in range(n):
        x, y = i % side + 1, i // side + 1
        ids.append(f"{x}x{y}")
        rows.append(
            {
                "x": x,
                "y": y,
                "new_x": x,
                "new_y": y,
                "pixel_x": 40.0 * x,
                "pixel_y": 40.0 * y,
                "selected": 1,
            }
        )
    rows.append(
        {"x": 9, "y": 9, "new_x": 9, "new_y": 9, "pixel_x": 360.0, "pixel_y": 360.0, "selected": 1}
    )  # a spot without counts, as in the real spot files
    pd.DataFrame(rows).to_csv(folder / "S1_selection.tsv", sep="\t", index=False)
    counts = pd.DataFrame(rng.poisson(3, (n, 5)), index=ids, columns=[f"G{i}" for i in range(5)])
    counts.to_csv(folder / "S1.tsv.gz", sep="\t")
    img = image if image is not None else rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)
    Image.fromarray(img).save(folder / "S1.jpg")
    return folder


def test_st_folder_roundtrip(tmp_path):
    folder = _fake_section(tmp_path)
    sdata = read_slide(folder)
    table = sdata.tables["table"]
    assert list(table.obs_names[:2]) == ["1x1", "2x1"]
    assert table.n_obs == 16
    assert table.uns[SLIDE_META_KEY]["technology"] == "ST"
    assert hasattr(image_levels(sdata.images["S1_image"])[0].data, "dask")  # lazy
    geom = _geom(sdata)
    np.testing.assert_allclose(geom.centers_px[:2], [[40, 40], [80, 40]])
    assert geom.um_per_px == pytest.approx(200 / 40)  # 40 px per 200 µm array step
    assert geom.diameter_px == pytest.approx(20)
    out = convert(folder, tmp_path / "S1.zarr")
    assert out == (tmp_path / "S1.zarr").resolve()
    back = sd.read_zarr(out)
    assert back.tables["table"].n_obs == 16
    np.testing.assert_allclose(_geom(back).centers_px, geom.centers_px)
    assert not list(tmp_path.glob(".S1.zarr*"))  # no temporary sibling left


def test_convert_refuses_existing_output_and_overwrites_atomically(tmp_path):
    folder = _fake_section(tmp_path)
    out = tmp_path / "x.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    # A folder this package did not write is never replaced, not even with overwrite=True.
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="did not write") as err:
            convert(folder, out, overwrite=overwrite)
        assert "--overwrite" not in str(err.value).split(";")[1]
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    convert(folder, out, overwrite=True)  # an empty folder may be replaced
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(folder, out)
    # A failing conversion with overwrite=True leaves the existing output as it was.
    (folder / "S1.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="unreadable"):
        convert(folder, out, overwrite=True)
    assert sd.read_zarr(out).tables["table"].n_obs == 16
    Image.fromarray(np.zeros((400, 400, 3), np.uint8)).save(folder / "S1.jpg")
    convert(folder, out, overwrite=True)
    assert sd.read_zarr(out).tables["table"].n_obs == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sec", "x.zarr"]
    with pytest.raises(ValueError, match="apart from the input"):
        convert(folder, folder / "inside.zarr")


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


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _second_image(folder: Path) -> None:
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(folder / "other.jpg")


def _rename_counts_rows(folder: Path) -> None:
    df = pd.read_csv(folder / "S1.tsv.gz", sep="\t", index_col=0)
    df.index = [f"{i}_{i}" for i in range(len(df))]
    df.to_csv(folder / "S1.tsv.gz", sep="\t")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda f: _truncate(f / "S1.jpg"), "unreadable or truncated"),
        (lambda f: (f / "S1.jpg").write_bytes(b"garbage"), "unreadable or truncated"),
        (_drop_spot_row, "1 of 16 spot ids have no position"),
        (_rename_counts_rows, "16 of 16 spot ids have no position"),
        (lambda f: _set_count(f, -1), "negative"),
        (lambda f: _set_count(f, float("nan")), "NaN"),
        (lambda f: _keep_rows(f, 5), "at least 10 spots"),
        (lambda f: _move_spot(f, 10_000), "outside"),
        (lambda f: (f / "S1.jpg").unlink(), "H&E image"),
        (_second_image, r"exactly one H&E image .* found 2"),
    ],
)
def test_st_bad_input(tmp_path, mutate, match):
    folder = _fake_section(tmp_path)
    mutate(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match=match):
        read_slide(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_unknown_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="found nothing"):
        read_slide(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"Visium folder .* found \['notes.txt'\]"):
        read_slide(tmp_path)


# --------------------------------------------------------------------------------------------
# Images that are not 8-bit RGB


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.full((400, 400), 128, np.uint8), "grayscale"),
        (np.full((400, 400, 4), 128, np.uint8), "RGBA"),
    ],
)
def test_non_rgb_files_are_converted_with_a_warning(tmp_path, arr, match):
    folder = _fake_section(tmp_path)
    (folder / "S1.jpg").unlink()
    Image.fromarray(arr).save(folder / "S1.png")
    (folder / "S1.png").rename(folder / "S1.jpg")  # PIL reads by content
    with pytest.warns(UserWarning, match=match):
        sdata = read_slide(folder)
    img = image_levels(sdata.images["S1_image"])[0]
    assert img.sizes["c"] == 3
    assert img.dtype == np.uint8
    assert int(img.values[:, 5, 5].min()) == 128


@pytest.mark.parametrize(
    ("make", "match", "expect"),
    [
        (lambda rgb: rgb.astype(np.uint16) * 257, "uint16", None),
        (lambda rgb: rgb.astype(np.uint16) * 16, "uint16", None),  # a 12-bit range
        (lambda rgb: rgb[:1], "grayscale", "gray"),
        (lambda rgb: np.concatenate([rgb, np.full_like(rgb[:1], 255)]), "RGBA", None),
    ],
)
def test_non_rgb_store_images_are_converted_lazily(tmp_path, sample_sdata, make, match, expect):
    from spatialdata.models import Image2DModel

    rgb = image_levels(sample_sdata.images[SAMPLE_IMAGE])[0].values
    sample_sdata.images[SAMPLE_IMAGE] = Image2DModel.parse(make(rgb), dims=("c", "y", "x"))
    store = tmp_path / "odd.zarr"
    write_sdata(sample_sdata, store)
    on_disk = sd.read_zarr(store).images[SAMPLE_IMAGE]
    with pytest.warns(UserWarning, match=match):
        sdata = read_slide(store)
    img = image_levels(sdata.images[SAMPLE_IMAGE])[0]
    assert img.dtype == np.uint8
    assert img.sizes["c"] == 3
    assert hasattr(img.data, "dask")
    want = np.repeat(rgb[:1], 3, axis=0) if expect == "gray" else rgb
    assert np.abs(img.values.astype(int) - want).max() <= 1
    validate_slide(sdata, resolve_keys(sdata))
    again = sd.read_zarr(store).images[SAMPLE_IMAGE]  # the store is untouched
    assert again.dtype == on_disk.dtype
    assert again.shape == on_disk.shape
    with pytest.raises(ValueError, match="8-bit RGB"):
        validate_slide(sd.read_zarr(store), resolve_keys(sd.read_zarr(store)))


# --------------------------------------------------------------------------------------------
# Element discovery and validation


def test_missing_elements_give_clear_errors(sample_sdata):
    no_table = sd.SpatialData(images=dict(sample_sdata.images), shapes=dict(sample_sdata.shapes))
    with pytest.raises(ValueError, match="no table"):
        resolve_keys(no_table)
    no_shapes = sd.SpatialData(images=dict(sample_sdata.images), tables=dict(sample_sdata.tables))
    with pytest.raises(ValueError, match="circles"):
        resolve_keys(no_shapes)
    no_image = sd.SpatialData(shapes=dict(sample_sdata.shapes), tables=dict(sample_sdata.tables))
    with pytest.raises(ValueError, match="no image"):
        resolve_keys(no_image)
    with pytest.raises(KeyError, match=r"Expected `image_key` to be one of \['V1.*found `nope`"):
        resolve_keys(sample_sdata, image_key="nope")
    with pytest.raises(
        KeyError, match=r"`spots_key` to be one of \['V1_Adult_Mouse_Brain_spots'\]"
    ):
        resolve_keys(sample_sdata, spots_key="nope")
    with pytest.raises(KeyError, match=r"`table_key` to be one of \['table'\]"):
        resolve_keys(sample_sdata, table_key="nope")
    with pytest.raises(KeyError, match="image_key"):
        validate_slide(sample_sdata, SlideKeys("nope", SAMPLE_SPOTS, "table"))


def test_auto_detection_and_explicit_keys(sample_sdata):
    from spatialdata.models import Image2DModel, ShapesModel
    from spatialdata.transformations import Identity, Scale

    rgb = image_levels(sample_sdata.images[SAMPLE_IMAGE])[0].values
    # A smaller image in the same coordinate system, one in another, and polygons-free shapes.
    sample_sdata.images["thumb"] = Image2DModel.parse(
        rgb[:, ::4, ::4],
        dims=("c", "y", "x"),
        transformations={"global": Scale([4.0, 4.0], axes=("x", "y"))},
    )
    sample_sdata.images["elsewhere"] = Image2DModel.parse(
        np.zeros((3, 4000, 4000), np.uint8),
        dims=("c", "y", "x"),
        transformations={"other": Identity()},
    )
    sample_sdata.shapes["histosge_extra"] = ShapesModel.parse(
        sample_sdata.shapes[SAMPLE_SPOTS].copy()
    )
    keys = resolve_keys(sample_sdata)
    assert keys == SlideKeys(SAMPLE_IMAGE, SAMPLE_SPOTS, "table")  # largest in `global`
    explicit = resolve_keys(sample_sdata, image_key="thumb")
    assert explicit.image_key == "thumb"
    g_full, g_thumb = _geom(sample_sdata, keys), _geom(sample_sdata, explicit)
    np.testing.assert_allclose(g_thumb.centers_px, g_full.centers_px / 4)
    with pytest.raises(ValueError, match=r"share a coordinate system .*\['global'\]"):
        resolve_keys(sample_sdata, image_key="elsewhere")
    with pytest.raises(ValueError, match="annotate"):
        resolve_keys(sample_sdata, spots_key="histosge_extra")


def test_table_not_annotating_spots(sample_sdata):
    from spatialdata.models import ShapesModel

    shapes = sample_sdata.shapes[SAMPLE_SPOTS]
    sample_sdata.shapes["other"] = ShapesModel.parse(shapes.copy())
    with pytest.raises(ValueError, match="annotate"):
        resolve_keys(sample_sdata, spots_key="other")
    with pytest.raises(ValueError, match=r"annotate `other`, found it annotating \['V1"):
        validate_slide(sample_sdata, SlideKeys(SAMPLE_IMAGE, "other", "table"))


def test_validate_catches_bad_stores(sample_sdata):
    from spatialdata.models import TableModel

    keys = resolve_keys(sample_sdata)
    shapes = sample_sdata.shapes[SAMPLE_SPOTS]
    moved = shapes.copy()
    moved.geometry = moved.geometry.translate(xoff=5000)
    sample_sdata.shapes[SAMPLE_SPOTS] = moved
    with pytest.raises(
        ValueError, match=r"inside image .* \(950 x 1717 px\), found 49 of 49 outside"
    ):
        validate_slide(sample_sdata, keys)
    sample_sdata.shapes[SAMPLE_SPOTS] = shapes

    table = sample_sdata.tables["table"]
    small = table[:6].copy()
    del sample_sdata.tables["table"]
    sample_sdata.tables["table"] = TableModel.parse(small)
    with pytest.raises(ValueError, match="at least 10 spots, found 6"):
        validate_slide(sample_sdata, keys)
    nan = table.copy()
    nan.X = nan.X.toarray()
    nan.X[0, 0] = np.nan
    del sample_sdata.tables["table"]
    sample_sdata.tables["table"] = TableModel.parse(nan)
    with pytest.raises(ValueError, match="NaN"):
        validate_slide(sample_sdata, keys)
    neg = table.copy()
    neg.X = -neg.X
    del sample_sdata.tables["table"]
    sample_sdata.tables["table"] = TableModel.parse(neg)
    with pytest.raises(ValueError, match="negative"):
        validate_slide(sample_sdata, keys)


# --------------------------------------------------------------------------------------------
# Space Ranger Visium folders


def _fake_visium(folder: Path, *, positions: str, fullres: bool) -> dict:
    """A tiny Space Ranger output folder: counts .h5, positions, scale factors, images."""
    import scipy.sparse as sp
    from visium_testdata import write_10x_h5

    (folder / "spatial").mkdir(parents=True)
    rng = np.random.default_rng(0)
    n_rows, n_cols = 4, 4
    genes = ["Gene1", "Gene2", "Gene3"]
    rows = []
    for r in range(n_rows):
        for c in range(n_cols):
            # Hexagonal Visium layout: array_col steps by 2, odd rows offset by 1.
            array_col = 2 * c + r % 2
            x_full = 300.0 + 50.0 * array_col  # 100 px pitch along a row
            y_full = 300.0 + 86.6 * r
            rows.append((f"AAAC{r}{c:03d}-1", 1, r, array_col, y_full, x_full))
    barcodes = [b for b, *_ in rows]
    m = sp.csc_matrix(rng.poisson(4, (len(genes), len(barcodes))).astype(np.int32))
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", barcodes, genes, m)
    cols = [
        "barcode",
        "in_tissue",
        "array_row",
        "array_col",
        "pxl_row_in_fullres",
        "pxl_col_in_fullres",
    ]
    df = pd.DataFrame(rows, columns=cols)
    if positions == "v1":
        df.to_csv(folder / "spatial" / "tissue_positions_list.csv", header=False, index=False)
    else:
        df.to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    scalef = {
        "spot_diameter_fullres": 65.0,
        "tissue_hires_scalef": 0.5,
        "tissue_lowres_scalef": 0.1,
        "fiducial_diameter_fullres": 100.0,
    }
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalef))
    full = rng.integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    Image.fromarray(full[::2, ::2]).save(folder / "spatial" / "tissue_hires_image.png")
    Image.fromarray(full[::10, ::10]).save(folder / "spatial" / "tissue_lowres_image.png")
    if fullres:
        Image.fromarray(full).save(folder / "fullres.tif")
    return {"barcodes": barcodes, "xy_full": np.array([[r[5], r[4]] for r in rows])}


@pytest.mark.parametrize(("positions", "fullres"), [("v1", False), ("v2", False), ("v2", True)])
def test_visium_folder(tmp_path, positions, fullres):
    """Space Ranger output read through spatialdata-io lands spots on the right pixels."""
    folder = tmp_path / "visium"
    truth = _fake_visium(folder, positions=positions, fullres=fullres)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = read_slide(folder)
    keys = resolve_keys(sdata)
    table = sdata.tables[keys.table_key]
    assert list(table.obs_names) == truth["barcodes"]
    assert not is_log_normalized(table)
    geom = _geom(sdata, keys)
    scale = 1.0 if fullres else 0.5  # image pixels per full-resolution pixel
    assert keys.image_key == ("visium_full_image" if fullres else "visium_hires_image")
    assert image_levels(sdata.images[keys.image_key])[0].sizes["x"] == 1000 * scale
    np.testing.assert_allclose(geom.centers_px, truth["xy_full"] * scale, atol=1e-9)
    assert geom.lattice == "hexagonal"
    # spot_diameter_fullres (65 px) spans 65 µm: 1 µm per full-resolution pixel.
    assert geom.um_per_px == pytest.approx(1.0 / scale)
    assert geom.diameter_px == pytest.approx(55.0 * scale)
    assert geom.pitch_px * geom.um_per_px == pytest.approx(100.0, rel=1e-3)
    validate_slide(sdata, keys)

    out = convert(folder, tmp_path / "v.zarr")
    back = sd.read_zarr(out)
    g2 = _geom(back)
    np.testing.assert_allclose(g2.centers_px, geom.centers_px)
    assert g2.um_per_px == pytest.approx(geom.um_per_px)


def test_visium_barcode_without_position(tmp_path):
    folder = tmp_path / "visium"
    _fake_visium(folder, positions="v2", fullres=False)
    df = pd.read_csv(folder / "spatial" / "tissue_positions.csv")
    df.iloc[1:].to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="without a position"):
            read_slide(folder)


def test_sample_preview_matches_the_sample(sample_sdata):
    from napari_histosge.geometry import spot_geometry
    from napari_histosge.io.sample import sample_preview

    preview = sample_preview()
    keys = resolve_keys(sample_sdata)
    geom = spot_geometry(sample_sdata, **keys.__dict__)
    assert (preview.image_key, preview.spots_key) == (keys.image_key, keys.spots_key)
    np.testing.assert_allclose(preview.centers_px, geom.centers_px)
    assert preview.diameter_px == pytest.approx(geom.diameter_px)
    assert preview.spot_ids == [str(s) for s in geom.spot_ids]
    img = image_levels(sample_sdata.images[keys.image_key])[0]
    np.testing.assert_array_equal(preview.rgb, np.asarray(img.transpose("y", "x", "c")))
