"""`--diameter auto`: the nucleus size measured per image, and a second pass only where it is far off the
model's training scale. The shipped model, real ONNX Runtime, a real store."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from nuclei.core.measure import median_diameter
from nuclei.core.metrics import score_image
from nuclei.inference.engine import Engine
from nuclei.inference.sizing import AUTO_BAND, label_image
from nuclei.io.images import write_png
from nuclei.modeldir import default_model_path, load_model_dir
from tests.conftest import SAMPLES

GREY = "f73e37957c74f554be132986f38b6f1d75339f636dfe2b681a0cf3f88d2733af"  # 37 fluorescent nuclei, ~20 px


def _engine(diameter: float | str | None = None) -> Engine:
    return Engine(load_model_dir(default_model_path()), ("CPUExecutionProvider",), threads=1,
                  diameter=diameter)  # type: ignore[arg-type]


def _sample(zoom: int) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.imread(str(SAMPLES / "images" / f"{GREY}.png"), cv2.IMREAD_UNCHANGED)  # as stored (uint8)
    truth = cv2.imread(str(SAMPLES / "labels" / f"{GREY}.png"), cv2.IMREAD_UNCHANGED)
    size = (image.shape[1] * zoom, image.shape[0] * zoom)
    return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST))


def test_an_image_at_the_training_scale_gets_one_pass_as_it_is() -> None:
    image, _ = _sample(1)
    auto = _engine("auto")
    labels, used = label_image(auto, image)
    assert used is auto and used.zoom == 1.0
    assert np.array_equal(labels, label_image(_engine(), image)[0])


def test_big_nuclei_are_measured_and_segmented_at_the_training_scale() -> None:
    """The sample zoomed 4x (nuclei ~4x the training diameter): auto measures about the true size, rescales,
    and finds the nuclei about as well as at the image's own scale; as it is, big nuclei are split or merged.
    Measured AP@0.5 rescaled / as it is: 0.707 / 0.667 with the stage-5 default model (its brightness and
    foreground training made it split big nuclei less), 0.732 / 0.652 with the previous one: a gain of more
    than one nucleus of 37 (0.03) is what auto must give. The margin for "as well" is 0.08, about 3 nuclei of
    37: the resampling there and back can cost a little."""
    image, truth = _sample(4)
    auto = _engine("auto")
    labels, used = label_image(auto, image)
    trained = auto.model.nucleus_diameter
    assert isinstance(used.diameter, float) and used.diameter > AUTO_BAND * trained
    assert 0.7 < used.diameter / median_diameter([truth]) < 1.4
    plain = label_image(_engine(), image)[0]
    as_is = score_image(truth, plain).ap50
    rescaled = score_image(truth, labels).ap50
    native = score_image(_sample(1)[1], label_image(_engine(), _sample(1)[0])[0]).ap50
    assert rescaled > as_is + 0.03, (rescaled, as_is)
    assert rescaled > native - 0.08, (rescaled, native)


def test_a_run_records_the_measured_diameter_and_keys_its_entries_apart(tmp_path: Path) -> None:
    from nuclei.inference.run import segment
    from nuclei.store.query import open_store

    inputs = tmp_path / "in"
    inputs.mkdir()
    write_png(inputs / "big.png", _sample(4)[0])
    write_png(inputs / "small.png", _sample(1)[0])
    store = tmp_path / "s.zarr"
    assert segment([inputs], store, diameter="auto")["done"] == 2
    opened = open_store(store)
    big, small = opened.metadata("big"), opened.metadata("small")
    assert big["diameter_auto"] and small["diameter_auto"]
    assert big["diameter"] and big["zoom"] < 1.0 and small["diameter"] is None and small["zoom"] == 1.0
    assert segment([inputs], store, diameter="auto")["done"] == 0  # unchanged: skipped
    assert segment([inputs], store)["done"] == 2  # without auto the labels may differ: segmented again
