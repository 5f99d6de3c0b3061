"""`nuclei export-model --bioimageio`: the package is valid for bioimageio.spec, bioimageio.core reproduces its test
outputs, and its prediction is nuclei's own (so the packaged preprocessing really is nuclei's normalisation)."""

from __future__ import annotations

import io
import re
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bioimageio.spec")
pytest.importorskip("bioimageio.core")

from bioimageio.core import Sample, Tensor, create_prediction_pipeline  # noqa: E402
from bioimageio.core import test_model as bioimageio_test  # noqa: E402 - not `test_*`: pytest would collect it
from bioimageio.core.digest_spec import get_test_input_sample  # noqa: E402
from bioimageio.spec import load_description  # noqa: E402
from bioimageio.spec.model import v0_5  # noqa: E402

from nuclei.cli.main import main  # noqa: E402
from nuclei.errors import ModelError, NucleiError  # noqa: E402
from nuclei.export.bioimageio import export_bioimageio, onnx_info  # noqa: E402
from nuclei.inference.engine import Engine  # noqa: E402
from nuclei.io.images import read_raw  # noqa: E402
from nuclei.modeldir import load_model_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "nuclei" / "assets" / "models" / "nuclei-generalist"
IMAGES = REPO / "nuclei" / "assets" / "sample" / "images"
CPU = ["CPUExecutionProvider"]
# The package must give nuclei's float32 probabilities: measured 6.6e-7 (float rounding in the two normalisations).
TOLERANCE = 1e-4
HALO = 128  # half the 230 px receptive field, rounded up to 16


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped default model exported as users get it (ONNX + Keras weights), tested by bioimageio.core."""
    return export_bioimageio(MODEL, tmp_path_factory.mktemp("bioimageio") / "nuclei-generalist.zip")


@pytest.fixture(scope="module")
def descr(package: Path) -> v0_5.ModelDescr:
    loaded = load_description(package, perform_io_checks=True)
    assert isinstance(loaded, v0_5.ModelDescr), loaded.validation_summary.format()
    return loaded


@pytest.fixture(scope="module")
def engine() -> Engine:
    """nuclei's engine with the window the package declares: the model's own, or for a `foreground` or `local`
    model the 1st..99.8th percentiles bioimage.io can express (its documentation says so); the float32 ONNX, as
    packaged."""
    model = load_model_dir(MODEL)
    if model.normalization.kind in ("foreground", "local"):
        declared = {"kind": "percentile", "low": model.normalization.low, "high": model.normalization.high}
        model = replace(model, config={**model.config, "normalization": declared})
    return Engine(model, providers=tuple(CPU), int8=False)


def _nhwc(sample: Sample) -> np.ndarray:
    return sample.members[v0_5.TensorId("mask")].data.transpose("batch", "y", "x", "channel").values


def test_package_is_a_valid_model_description(package: Path, descr: v0_5.ModelDescr) -> None:
    summary = descr.validation_summary
    assert summary.status in ("valid-format", "passed") and not summary.errors, summary.format()
    assert descr.format_version.startswith("0.5")
    (inputs,), (outputs,) = descr.inputs, descr.outputs
    assert [a.id for a in inputs.axes] == ["batch", "y", "x", "channel"]
    assert inputs.axes[1].size == v0_5.ParameterizedSize(min=272, step=16)
    assert [a.halo for a in outputs.axes[1:3]] == [HALO, HALO]  # type: ignore[union-attr]
    assert [str(n) for n in outputs.axes[3].channel_names] == ["foreground", "core"]  # type: ignore[union-attr]
    steps = [p.id for p in inputs.preprocessing]
    assert steps == ["ensure_dtype", "scale_range", "clip", "ensure_dtype"]
    assert descr.weights.onnx is not None and descr.weights.onnx.opset_version == 17
    assert descr.weights.keras_v3 is not None and descr.weights.onnx.parent == "keras_v3"
    dois = {str(c.doi) for c in descr.cite}
    assert {"10.1038/s41592-019-0612-7", "10.1002/cyto.a.23863", "10.1038/s41597-020-00608-w"} <= dois
    assert [a.name for a in descr.authors] == ["nuclei developers"]
    with zipfile.ZipFile(package) as zf:
        readme, rdf = zf.read("README.md").decode(), zf.read("rdf.yaml").decode()
    assert "## From probabilities to nuclei" in readme and "watershed" in readme and "## Validation" in readme
    assert not re.search(r"\$\{?[a-z_]+\}?", readme.split("## Using this bioimage.io package")[1])  # filled in
    assert "1st..99.8th" in rdf and "1th" not in rdf  # the description's ordinals


def test_bioimageio_core_reproduces_the_test_outputs(package: Path) -> None:
    summary = bioimageio_test(package, weight_format="onnx", devices=CPU)
    assert summary.status == "passed", summary.format()
    names = [d.name for d in summary.details if d.status == "passed"]
    assert "Reproduce test outputs from test inputs (onnx)" in names
    assert sum("Run onnx inference" in n for n in names) == 6  # 3 sizes x batch sizes 1 and 2


def test_package_prediction_is_nuclei_engine_output(descr: v0_5.ModelDescr, engine: Engine) -> None:
    """The test input run through bioimageio.core (its preprocessing, the ONNX model) against nuclei's own engine
    on the same pixels: the same probabilities, so the packaged preprocessing is nuclei's normalisation."""
    with create_prediction_pipeline(descr, devices=CPU) as pipeline:
        sample = get_test_input_sample(descr)
        image = sample.members[v0_5.TensorId("image")].data.transpose("batch", "y", "x", "channel").values[0]
        ours = engine.predict(image.astype(np.uint8))
        unpadded = _nhwc(pipeline.predict_sample_without_blocking(
            sample, skip_input_padding=True, skip_output_cropping=True))[0]
        assert np.abs(unpadded - ours).max() < TOLERANCE
        # bioimage.io's default mirror-pads the halo at the border (nuclei does not): equal beyond the halo.
        padded = _nhwc(pipeline.predict_sample_without_blocking(get_test_input_sample(descr)))[0]
        assert padded.shape == ours.shape
        assert np.abs(padded - ours)[HALO:-HALO, HALO:-HALO].max() < TOLERANCE


def test_package_matches_nuclei_on_a_16_bit_image(descr: v0_5.ModelDescr, engine: Engine) -> None:
    """BBBC039 as the microscope wrote it (12-bit values in a 16-bit grey PNG): the percentiles make the range moot."""
    raw = read_raw(next(IMAGES.glob("IXMtest_*.png")))[:512, :688]
    assert raw.dtype == np.uint16 and raw.ndim == 2
    rgb = np.repeat(raw[None, ..., None], 3, axis=3).astype(np.float32)
    with create_prediction_pipeline(descr, devices=CPU) as pipeline:
        sample = Sample(members={v0_5.TensorId("image"): Tensor.from_numpy(rgb, dims=("batch", "y", "x", "channel"))},
                        stat={}, id="bbbc039")
        theirs = _nhwc(pipeline.predict_sample_without_blocking(
            sample, skip_input_padding=True, skip_output_cropping=True))[0]
    assert np.abs(theirs - engine.predict(raw)).max() < TOLERANCE


def test_packaged_test_tensors(package: Path, engine: Engine) -> None:
    with zipfile.ZipFile(package) as zf:
        test_in = np.load(io.BytesIO(zf.read("test_input_image.npy")))
        test_out = np.load(io.BytesIO(zf.read("test_output_mask.npy")))
        assert {"cover.png", "model.onnx", "model.keras", "thresholds.json"} <= set(zf.namelist())
    assert test_in.shape == (1, 352, 352, 3) and test_in.dtype == np.float32
    assert test_out.shape == (1, 352, 352, 2) and test_out.min() >= 0.0 and test_out.max() <= 1.0
    assert np.abs(test_out[0] - engine.predict(test_in[0].astype(np.uint8))).max() < TOLERANCE


def test_opset_is_read_from_the_onnx_file() -> None:
    info = onnx_info(MODEL / "model.onnx")
    assert info.opset == load_model_dir(MODEL).config["onnx_opset"] == 17
    assert info.producer.startswith("tf2onnx")


@pytest.mark.slow
def test_keras_weights_reproduce_the_test_outputs(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repacked model.keras (no compile config) loads in bioimageio.core without nuclei and gives the outputs."""
    pytest.importorskip("tensorflow")
    # bioimageio.core's Keras backend writes its KERAS_BACKEND setting (default torch) into os.environ on import;
    # set it here so the test's value is used and removed afterwards, not inherited by later subprocesses.
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    summary = bioimageio_test(package, weight_format="keras_v3")
    assert summary.status == "passed", summary.format()


def test_cli_writes_the_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "model.zip"
    assert main(["export-model", str(MODEL), "--bioimageio", str(out), "--no-keras"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
    assert "model.onnx" in names and "model.keras" not in names
    assert not list(out.parent.glob(".*.tmp.zip"))  # written in place atomically


def test_cli_refuses_a_folder_that_is_not_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    out = tmp_path / "out.zip"
    assert main(["export-model", str(tmp_path), "--bioimageio", str(out)]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "missing" in err
    assert not out.exists()
    with pytest.raises(ModelError, match="does not exist"):
        export_bioimageio(tmp_path / "absent", out)


def test_missing_libraries_name_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bioimageio.core", None)  # import fails as if not installed
    with pytest.raises(NucleiError, match=r"pip install 'nuclei\[bioimageio\]'"):
        export_bioimageio(MODEL, tmp_path / "out.zip")
