"""Stained colour brightfield images (H&E-like tissue) go to the stained-tissue model, everything else to the
default model: the rule on real images of every kind, and real runs (ONNX Runtime, a store on disk)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from nuclei.core.modality import is_stained_brightfield
from nuclei.core.normalize import as_float_rgb
from nuclei.inference.engine import Engine
from nuclei.inference.sizing import label_image
from nuclei.modeldir import SHIPPED_MODELS, STAINED_MODEL_NAME, load_model_dir, resolve_stained_model
from tests.conftest import SAMPLES

HE = "a90401357d50e1376354ae6e5f56a2e4dff3fdb5a4e8d50316673b2b8f1f293b"  # H&E-like tissue, 20 nuclei
GREY = "f73e37957c74f554be132986f38b6f1d75339f636dfe2b681a0cf3f88d2733af"  # fluorescence


def _stored(image_id: str) -> np.ndarray:
    """The image as its file holds it (BGR -> RGB for colour)."""
    image = cv2.imread(str(SAMPLES / "images" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4
                                                      else cv2.COLOR_BGR2RGB)


def test_the_rule_finds_exactly_the_colour_brightfield_samples() -> None:
    with open(SAMPLES / "manifest.csv") as handle:
        categories = {row["id"]: row["category"] for row in csv.DictReader(handle)}
    found = {image_id: is_stained_brightfield(_stored(image_id)) for image_id in categories}
    assert found == {image_id: category == "color_bright" for image_id, category in categories.items()}
    assert sum(found.values()) == 3


def test_the_rule_ignores_bit_depth_and_exposure_but_not_fluorescence_in_colour() -> None:
    he, grey = _stored(HE).astype(np.float32), as_float_rgb(_stored(GREY))
    as_12_bit = (100 + he * 12).astype(np.uint16)  # a 12-bit colour camera's values in uint16
    dim = (he * 0.3).astype(np.uint8)
    assert is_stained_brightfield(as_12_bit) and is_stained_brightfield(dim)
    blue_dapi = np.zeros_like(grey)
    blue_dapi[..., 2] = grey[..., 0]  # fluorescence shown in one colour channel: colour, but a dark background
    assert not is_stained_brightfield(blue_dapi.astype(np.uint8))
    assert not is_stained_brightfield(grey.astype(np.uint8))
    assert not is_stained_brightfield(np.full((64, 64, 3), 200, np.uint8))  # uniform: nothing to decide on
    assert not is_stained_brightfield(_stored(HE)[..., 0])  # one channel is never colour


def test_the_default_model_brings_the_stained_model_and_a_named_model_does_not(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NUCLEI_MODEL", raising=False)
    default = resolve_stained_model("default", None)
    assert default is not None and default.path == SHIPPED_MODELS / STAINED_MODEL_NAME
    assert resolve_stained_model("default", "some/model") is None
    assert resolve_stained_model("none", None) is None
    named = resolve_stained_model(str(SHIPPED_MODELS / STAINED_MODEL_NAME), "some/model")
    assert named is not None and named.path == SHIPPED_MODELS / STAINED_MODEL_NAME


def test_an_engine_with_a_stained_model_runs_each_image_with_its_own_model() -> None:
    generalist = Engine(load_model_dir(SHIPPED_MODELS / "nuclei-generalist"), ("CPUExecutionProvider",), threads=1)
    stained = Engine(load_model_dir(SHIPPED_MODELS / STAINED_MODEL_NAME), ("CPUExecutionProvider",), threads=1)
    both = Engine(generalist.model, ("CPUExecutionProvider",), threads=1, stained=stained.model)
    he, grey = _stored(HE), _stored(GREY)
    assert both.for_image(he).model is stained.model and both.for_image(grey) is both
    probs = both.predict_many([he, grey, he])  # mixed models and shapes in one call (the two H&E: one batch)
    close = {"atol": 1e-4, "rtol": 0.0}  # a batch of two may differ from a lone run in the last float bits
    assert np.allclose(probs[0], stained.predict(he), **close) and np.allclose(probs[2], probs[0], **close)
    assert np.allclose(probs[1], generalist.predict(grey), **close)
    assert not np.allclose(generalist.predict(he), probs[0], **close)  # the other model: far apart
    labels, used = label_image(both, he)
    assert used.model is stained.model and np.array_equal(labels, label_image(stained, he)[0])
    assert both.output_key not in (generalist.output_key, stained.output_key)


@pytest.mark.slow
def test_a_default_run_records_which_model_segmented_each_image(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`nuclei segment` with no --model: the H&E image by the stained-tissue model, the fluorescence image by the
    generalist, each entry saying so; with --stained-model none both are segmented again by the generalist."""
    from nuclei.inference.run import segment
    from nuclei.store.query import open_store

    monkeypatch.delenv("NUCLEI_MODEL", raising=False)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for image_id in (HE, GREY):
        shutil.copy(SAMPLES / "images" / f"{image_id}.png", inputs)
    store_path = tmp_path / "s.zarr"
    assert segment([inputs], store_path)["done"] == 2
    store = open_store(store_path)
    he, grey = store.metadata(HE), store.metadata(GREY)
    assert he["model"]["version"] == load_model_dir(SHIPPED_MODELS / STAINED_MODEL_NAME).version
    assert he["stained_brightfield"] and not grey["stained_brightfield"]
    assert grey["model"]["version"].startswith("nuclei-generalist@")

    again = segment([inputs], store_path, stained_model="none")
    assert again["done"] == 2 and again["skipped"] == 0  # another output key: nothing is stale-skipped
    store = open_store(store_path)
    assert all(store.metadata(i)["model"]["version"].startswith("nuclei-generalist@") for i in (HE, GREY))


def test_a_stained_model_that_does_not_load_is_a_one_line_error_before_any_work(tmp_path: Path) -> None:
    from nuclei.config import SegmentConfig
    from nuclei.errors import ModelError
    from nuclei.inference.preflight import preflight

    config = SegmentConfig(inputs=[str(SAMPLES / "images")], store=str(tmp_path / "s.zarr"),
                           stained_model=str(tmp_path / "no-such-model"))
    with pytest.raises(ModelError, match="no-such-model"):
        preflight(config)
    assert not (tmp_path / "s.zarr").exists()
    settled = preflight(config.model_copy(update={"stained_model": "none"}))
    assert settled.stained_model == "none"


def test_stain_jitter_changes_the_staining_of_real_tissue_but_not_where_the_nuclei_are() -> None:
    """HED augmentation: exact round trip without a change, haematoxylin-dark nuclei stay darker than the
    tissue around them, grey images are left alone."""
    from skimage.color import hed_from_rgb

    from nuclei.training.augment import jitter_stain

    he = _stored(HE)[..., :3].astype(np.float32) / 255
    labels = cv2.imread(str(SAMPLES / "labels" / f"{HE}.png"), cv2.IMREAD_UNCHANGED) > 0
    same = jitter_stain(he, 1e-9, np.random.default_rng(0))
    assert np.abs(same - np.clip(he, 1e-3, 1.0)).max() < 1e-4
    haematoxylin = -np.log(np.clip(he, 1e-3, 1.0)) @ hed_from_rgb
    changes = []
    for seed in range(5):
        varied = jitter_stain(he, 0.1, np.random.default_rng(seed))
        assert varied.shape == he.shape and varied.dtype == np.float32 and 0 <= varied.min() <= varied.max() <= 1
        changes.append(float(np.abs(varied - he).mean()))
        h = (-np.log(np.clip(varied, 1e-3, 1.0)) @ hed_from_rgb)[..., 0]
        assert h[labels].mean() > h[~labels].mean() + 0.5 * (haematoxylin[..., 0][labels].mean()
                                                           - haematoxylin[..., 0][~labels].mean())
    assert min(changes) > 0.002 and len(set(changes)) == 5  # a different stain every draw
    grey = np.repeat(he.mean(axis=2, keepdims=True), 3, axis=2)
    assert jitter_stain(grey, 0.1, np.random.default_rng(0)) is grey
