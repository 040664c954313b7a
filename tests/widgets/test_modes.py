"""The dock's super-resolution mode and a trained model on an H&E-only slide, without a viewer.

The controller drives the real worker process on the bundled sample (Visium mouse brain crop).
"""

from __future__ import annotations

import numpy as np
import pytest
from histosge_widget_utils import wait_for

from napari_histosge._widgets._controller import Controller
from napari_histosge._widgets._worker_process import Runner


@pytest.fixture
def controller(tmp_path):
    c = Controller(runner=Runner(tmp_path / "session"))
    yield c
    c.close()


def run(c: Controller, started: bool, timeout: float = 600.0) -> None:
    """Wait for the step that ``started`` says was sent; fail with the session's error."""
    assert started, c.session.status
    wait_for(c.runner, lambda: c.session.running is None, timeout)
    assert c.session.last_error is None, c.session.last_error


def _affine_xy(element) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    t = get_transformation(element)
    return t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))


def test_superres_fits_without_extract_and_renders_the_exported_maps(controller, tmp_path):
    import spatialdata as sd

    from napari_histosge.store import EXPRESSION_KEY

    c, s = controller, controller.session
    run(c, c.open_sample())
    assert s.slide.has_table
    assert s.why_not("train") == "Extract features first."
    assert s.why_not("fit") == ""  # the superres model computes its own superpixel features
    config = {"mode": "superres", "seed": 0}
    run(c, c.train(config, 100, options={"encoder": "histology"}, resolution_um=20.0))
    assert s.model.superres["resolution_um"] == 20.0
    assert s.model.info["resolution_um"] == 20.0
    assert s.why_not("save_model")  # a fit of this slide, not a checkpoint
    run(c, c.predict())
    genes = s.predictions.genes[:2]
    assert len(s.predictions.genes) == s.model.n_genes
    run(c, c.render(genes, 20.0, measured=True))
    maps = s.maps
    assert maps.genes == genes
    assert maps.pitch_um == pytest.approx(20.0)
    assert maps.scale[0] == pytest.approx(20.0 / s.slide.um_per_px)
    assert s.measured is not None
    assert s.measured.gene == genes[0]
    shown = np.load(maps.path)
    assert shown.shape[0] == 2
    assert np.isfinite(shown).any()

    out = tmp_path / "superres.zarr"
    run(c, c.export(out, overwrite=False, pitch_um=20.0))
    image = sd.read_zarr(out).images[EXPRESSION_KEY]
    level = image["scale0"]["image"] if hasattr(image, "keys") else image
    exported = level.sel(c=genes).values
    # The layers carry the exported element's transformation, and the same values.
    affine = _affine_xy(image["scale0"] if hasattr(image, "keys") else image)
    assert np.allclose(np.diag(affine)[:2], [maps.scale[1], maps.scale[0]])
    assert np.allclose(affine[:2, 2], [maps.translate[1], maps.translate[0]])
    np.testing.assert_allclose(shown, exported, rtol=1e-5, atol=1e-6, equal_nan=True)

    # Another resolution refits at that resolution (the fit at 20 µm is kept).
    run(c, c.render(genes[:1], 40.0))
    assert s.maps.pitch_um == pytest.approx(40.0)
    assert np.load(s.maps.path).shape[1] < shown.shape[1]


def _image_only_store(path, with_spots: bool):
    from napari_histosge.io import load_sample
    from napari_histosge.store import write_sdata

    sdata = load_sample()
    for name in list(sdata.tables):
        del sdata.tables[name]
    if not with_spots:
        for name in list(sdata.shapes):
            del sdata.shapes[name]
    write_sdata(sdata, path)
    return path


def test_a_trained_model_predicts_on_an_h_and_e_only_slide(controller, tmp_path):
    c, s = controller, controller.session
    run(c, c.open_sample())
    um_per_px = s.slide.um_per_px
    run(c, c.extract({"encoder": "histology", "positions": "4x"}))
    run(c, c.train({"mode": "improved", "epochs": 3, "seed": 0}, 50))
    run(c, c.save_model(tmp_path / "model"))

    store = _image_only_store(tmp_path / "he_only.zarr", with_spots=False)
    # Without spots, the scale must be given.
    assert c.open(store)
    wait_for(c.runner, lambda: s.running is None)
    assert s.slide is None
    assert s.last_error.startswith("Expected µm per pixel")
    run(c, c.open(store, um_per_px=um_per_px))
    assert not s.slide.has_table
    assert s.slide.n_spots == 0
    assert "no table" in s.why_not("train")
    assert "no table" in s.why_not("fit")
    assert "Load a model" in s.why_not("extract")
    assert s.why_not("predict") == "Train or load a model first."
    run(c, c.load_model(tmp_path / "model"))
    assert s.why_not("predict") == ""
    run(c, c.predict({"positions": "4x"}))  # features extracted with the model's encoder
    preds = s.predictions
    assert preds.n_positions > 0
    run(c, c.render(preds.genes[:2], None, measured=True))
    assert s.measured is None  # nothing measured on this slide
    maps = np.load(s.maps.path)
    assert maps.shape[0] == 2
    assert np.isfinite(maps).mean() > 0.05

    # With spots and no table, the spots are the positions and give the scale.
    run(c, c.open(_image_only_store(tmp_path / "spots_only.zarr", with_spots=True)))
    assert not s.slide.has_table
    assert s.slide.n_spots > 0
    assert s.slide.um_per_px == pytest.approx(um_per_px, rel=0.05)
    run(c, c.load_model(tmp_path / "model"))
    run(c, c.predict())
    assert s.predictions.n_positions > s.slide.n_spots
