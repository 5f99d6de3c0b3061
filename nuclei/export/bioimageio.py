"""Package a model directory as a bioimage.io model package (format 0.5): `nuclei export-model --bioimageio`.

The package holds the float32 ONNX model (and, when the directory has one, the Keras v3 model it was converted
from), test tensors made with ONNX Runtime, a cover, the model card as documentation, and preprocessing written
with bioimage.io's built-in steps, so bioimage.io tools (bioimageio.core, ilastik, deepImageJ...) give the same
per-pixel probabilities as nuclei. Instances (the seeded watershed of `nuclei segment`) are left to the user: the
documentation says how.

How close the preprocessing is: nuclei maps the 1st..99.8th percentiles of the image's *luminance* (mean of R, G,
B) to 0..1 and clips to [-1, 4]; bioimage.io has no luminance step (and custom steps are postprocessing only), so
the package takes the percentiles of all R, G and B values jointly (`scale_range` over y, x and channel) and clips
alike. For grey images (R = G = B: fluorescence, most microscopy) that is the same range: the package reproduces
nuclei's probabilities to about 1e-6. For colour images the joint range is wider and the probabilities differ (on
the three DSB2018 colour samples shipped with nuclei, 8-15 % of pixels change side of the foreground threshold):
the documentation says to use nuclei for those.

bioimage.io libraries are imported lazily (the `bioimageio` extra); TensorFlow and Keras never (the Keras file is
repacked as a zip, not loaded).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import tifffile
from matplotlib.figure import Figure  # not pyplot: no global state in the caller's process

from nuclei.core.normalize import CLIP, Normalization
from nuclei.core.postprocess import instances
from nuclei.core.tiling import overlap_for, pad_to_at_least, round_up
from nuclei.errors import ModelError, NucleiError
from nuclei.export.model_card import PackageShape, write_documentation
from nuclei.io.images import read_raw
from nuclei.modeldir import ModelDir, load_model_dir
from nuclei.plots import overlay

if TYPE_CHECKING:
    from bioimageio.spec.model import v0_5

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'nuclei[bioimageio]'"
SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "sample" / "images"
# A DSB2018 grey image both shipped models held out of training (360x360, 8-bit): the packaged test input.
DEFAULT_SAMPLE = SAMPLES / "d7db360fabfce9828559a21f6bffff589ae868e0dc6101d7c1212de34a25e3cb.png"
MAX_TEST_SIZE = 512  # px per side: test tensors stay a few MB
EPS = 1e-6  # scale_range's epsilon (its default), mirrored when making the test output
INPUT_ID, OUTPUT_ID = "image", "mask"  # the ONNX model's names
# The training data sets nuclei knows, by a substring of config.json `data_dir`: (name, citations (text, DOI)).
DATASETS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "dsb2018": ("DSB2018 (BBBC038), CC0", [
        ("Caicedo et al., Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl, "
         "Nature Methods 16, 1247-1253 (2019)", "10.1038/s41592-019-0612-7")]),
    "bbbc039": ("BBBC039 v1, CC0", [
        ("Caicedo et al., Evaluation of Deep Learning Strategies for Nucleus Segmentation in Fluorescence Images, "
         "Cytometry A 95, 952-965 (2019)", "10.1002/cyto.a.23863"),
        ("Ljosa et al., Annotated high-throughput microscopy image sets for validation, Nature Methods 9, 637 (2012)",
         "10.1038/nmeth.2083")]),
    "s-bsst265": ("S-BSST265, CC0", [
        ("Kromp et al., An annotated fluorescence image dataset for training nuclear segmentation methods, "
         "Scientific Data 7, 262 (2020)", "10.1038/s41597-020-00608-w")]),
}
UNET_CITATION = ("Ronneberger et al., U-Net: Convolutional Networks for Biomedical Image Segmentation, MICCAI 2015",
                 "10.1007/978-3-319-24574-4_28")


def _require_bioimageio() -> None:
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as exc:
        raise NucleiError(f"bioimage.io export needs bioimageio.spec, bioimageio.core, onnx: {INSTALL_HINT}") from exc


# --- the model file: opset and producer ---

@dataclass(frozen=True)
class OnnxInfo:
    opset: int
    producer: str


def onnx_info(path: Path) -> OnnxInfo:
    """The default-domain opset and the producer (converter and version) of an ONNX file."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others for a bad file
        raise ModelError(f"{path}: not a readable ONNX file ({exc})") from exc
    opsets = [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")]
    if not opsets:
        raise ModelError(f"{path}: no default-domain opset in the ONNX file")
    producer = f"{proto.producer_name} {proto.producer_version}".strip().removesuffix(" None")  # tf2onnx: no hash
    return OnnxInfo(opset=opsets[0], producer=producer)


# --- the test tensors: a sample image, the packaged preprocessing mirrored in numpy, ONNX Runtime ---

def min_input_size(model: ModelDir) -> int:
    """Smallest valid side: a multiple of the pad multiple that leaves output after cropping the halo twice."""
    return round_up(2 * halo(model) + 1, model.pad_multiple)


def halo(model: ModelDir) -> int:
    """Pixels each side that lack full context: half the receptive field rounded up to the pad multiple, the
    overlap nuclei's own tiling uses."""
    return overlap_for(model.receptive_field, model.pad_multiple)


def sample_image(model: ModelDir, sample: Path) -> np.ndarray:
    """The sample as (H, W, 3) in its stored dtype, centre-cropped to a valid size (mirror-padded if small)."""
    raw = read_raw(sample)
    raw = raw[..., None] if raw.ndim == 2 else raw
    raw = raw[..., :1] if raw.shape[2] == 2 else raw[..., :3]  # grey + alpha: the grey
    rgb = np.repeat(raw, 3, axis=2) if raw.shape[2] == 1 else raw
    smallest, step = min_input_size(model), model.pad_multiple
    rgb = pad_to_at_least(rgb, smallest, smallest)
    height, width = (min(MAX_TEST_SIZE, s) // step * step for s in rgb.shape[:2])
    top, left = (rgb.shape[0] - height) // 2, (rgb.shape[1] - width) // 2
    return np.ascontiguousarray(rgb[top : top + height, left : left + width])


def input_dtype(model: ModelDir, image: np.ndarray) -> str:
    """float32 for percentile models (any range works); dtype-range models are described for the sample's dtype."""
    if model.normalization.kind != "dtype_range":  # percentile, foreground or local: any range works
        return "float32"
    if not np.issubdtype(image.dtype, np.integer):
        raise NucleiError(f"a model with dtype-range scaling needs an integer sample image, got {image.dtype}")
    return str(image.dtype)


def packaged_preprocessing(batch: np.ndarray, norm: Normalization) -> np.ndarray:
    """What the package's preprocessing does to an NHWC batch, in numpy: makes the test output."""
    x = batch.astype(np.float64)
    if norm.kind == "dtype_range":
        return (x / float(np.iinfo(batch.dtype).max)).astype(np.float32)
    lo, hi = np.percentile(x, (norm.low, norm.high), axis=(1, 2, 3), keepdims=True)
    return np.clip((x - lo) / (hi - lo + EPS), *CLIP).astype(np.float32)


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: batch})[0], dtype=np.float32)


# --- cover and Keras file (the documentation: `nuclei.export.model_card`) ---

def write_cover(image: np.ndarray, prob: np.ndarray, model: ModelDir, out: Path) -> Path:
    """2:1 cover: the image with the nuclei `nuclei segment` finds outlined, and the foreground probability."""
    fig = Figure(figsize=(8, 4))
    left, right = fig.subplots(1, 2)
    left.imshow(overlay(image, instances(prob, model.thresholds)))
    right.imshow(prob[..., 0], cmap="magma", vmin=0.0, vmax=1.0)
    for ax, title in ((left, "nuclei (seeded watershed)"), (right, f"{model.channels[0]} probability")):
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.02)
    fig.savefig(out, dpi=100)
    return out


def inference_keras(src: Path, out: Path) -> str:
    """Copy a .keras file without its compile config: bioimage.io loads it without nuclei's custom loss. Returns
    the Keras version it was saved with."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        metadata = json.loads(zin.read("metadata.json"))
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "config.json":
                config = json.loads(data)
                config.pop("compile_config", None)  # loss and metrics are nuclei.training functions
                data = json.dumps(config).encode()
            zout.writestr(info, data)
    return str(metadata["keras_version"])


# --- the description ---

def _name(model: ModelDir) -> str:
    """bioimage.io names: 5..128 of letters, digits, `_+- ()`."""
    base = "".join(c if c.isalnum() or c in "_+- ()" else "-" for c in model.path.name)
    return base if "nuclei" in base.lower() else f"nuclei {base}"


def _citations(model: ModelDir) -> tuple[list[str], list[tuple[str, str]]]:
    """Names of the training data sets in config.json and their citations (U-Net's first)."""
    dirs = model.config.get("data_dir") or []
    dirs = [dirs] if isinstance(dirs, str) else dirs
    found = [key for key in DATASETS if any(key in str(d).lower() for d in dirs)]
    return [DATASETS[k][0] for k in found], [UNET_CITATION, *(c for k in found for c in DATASETS[k][1])]


def _keras_entry(model: ModelDir, work: Path) -> v0_5.KerasV3WeightsDescr | None:
    """The Keras v3 weights the ONNX file was converted from, when the directory has them and says which
    TensorFlow saved them (the backend version is required)."""
    from bioimageio.spec.model import v0_5

    src = model.path / "model.keras"
    versions_file = model.path / "versions.json"
    versions = json.loads(versions_file.read_text()) if versions_file.is_file() else {}
    if not src.is_file() or "tensorflow" not in versions:
        return None
    try:
        keras_version = inference_keras(src, work / "model.keras")
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ModelError(f"{src}: not a Keras v3 model file ({exc})") from exc
    return v0_5.KerasV3WeightsDescr(
        source=work / "model.keras", keras_version=v0_5.Version(keras_version),
        backend=("tensorflow", v0_5.Version(str(versions["tensorflow"]))),
        comment="the trained Keras model without its compile config (loss and metrics are nuclei.training's)")


def _weights(model: ModelDir, work: Path, keras: bool) -> v0_5.WeightsDescr:
    from bioimageio.spec.model import v0_5

    info = onnx_info(model.onnx_path)
    keras_entry = _keras_entry(model, work) if keras else None
    onnx = v0_5.OnnxWeightsDescr(
        source=model.onnx_path, opset_version=info.opset, parent="keras_v3" if keras_entry else None,
        comment=f"float32, converted with {info.producer or 'an unknown converter'}")
    return v0_5.WeightsDescr(onnx=onnx, keras_v3=keras_entry)


def _preprocessing(model: ModelDir, dtype: str) -> list[Any]:
    from bioimageio.spec.model import v0_5

    norm = model.normalization
    first = v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32"))
    last = v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32"))  # else it casts back to `dtype`
    if norm.kind == "dtype_range":
        gain = 1.0 / float(np.iinfo(np.dtype(dtype)).max)
        return [first, v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearKwargs(gain=gain)), last]
    axes = [v0_5.AxisId("y"), v0_5.AxisId("x"), v0_5.AxisId("channel")]  # per sample: no batch axis
    scale = v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
        axes=axes, min_percentile=norm.low, max_percentile=norm.high, eps=EPS))
    clip = v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=CLIP[0], max=CLIP[1]))
    return [first, scale, clip, last]


def _tensors(model: ModelDir, dtype: str, test_in: Path, test_out: Path, samples: tuple[Path, Path]
             ) -> tuple[v0_5.InputTensorDescr, v0_5.OutputTensorDescr]:
    from bioimageio.spec.model import v0_5

    size = v0_5.ParameterizedSize(min=min_input_size(model), step=model.pad_multiple)
    image = v0_5.TensorId(INPUT_ID)
    inputs = v0_5.InputTensorDescr(
        id=image, description="RGB image as stored (grey: 3 equal channels), " + (
            "any range: normalised per image" if dtype == "float32" else f"{dtype}, scaled by the dtype's range"),
        axes=[v0_5.BatchAxis(), v0_5.SpaceInputAxis(id=v0_5.AxisId("y"), size=size),
              v0_5.SpaceInputAxis(id=v0_5.AxisId("x"), size=size),
              v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in ("red", "green", "blue")])],
        data=v0_5.IntervalOrRatioDataDescr.model_validate({"type": dtype}),
        test_tensor=v0_5.FileDescr(source=test_in), sample_tensor=v0_5.FileDescr(source=samples[0]),
        preprocessing=_preprocessing(model, dtype))
    outputs = v0_5.OutputTensorDescr(
        id=v0_5.TensorId(OUTPUT_ID), description="sigmoid probabilities per pixel, one channel per class",
        axes=[v0_5.BatchAxis(),
              *(v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(a), halo=halo(model),
                                             size=v0_5.SizeReference(tensor_id=image, axis_id=v0_5.AxisId(a)))
                for a in ("y", "x")),
              v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in model.channels])],
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        test_tensor=v0_5.FileDescr(source=test_out), sample_tensor=v0_5.FileDescr(source=samples[1]))
    return inputs, outputs


def _config(model: ModelDir, datasets: list[str]) -> v0_5.Config:
    from bioimageio.spec.model import v0_5

    cfg = model.config
    bioimageio = v0_5.BioimageioConfig(
        architecture_type="U-Net",
        architecture_description=f"U-Net, depth {cfg.get('depth')}, {cfg.get('base_filters')} base filters, "
                                 f"sigmoid outputs {', '.join(model.channels)}",
        modality="fluorescence and brightfield/stained light microscopy (2D)", target_structure=["nuclei"],
        task="semantic segmentation (probabilities) for seeded-watershed instance segmentation",
        out_of_scope_use="Cells, membranes or organelles other than nuclei; 3D stacks (run plane by plane); "
                         "diagnostic decisions without checking the results.",
        training=v0_5.TrainingDetails(
            training_preprocessing=f"{model.normalization.describe()}; augmentation in MODEL_CARD",
            training_epochs=cfg.get("epochs"), training_batch_size=cfg.get("batch_size"),
            initial_learning_rate=cfg.get("learning_rate"), optimizer="Adam"),
    )
    nuclei_cfg = {"model_version": model.version, "thresholds": model.thresholds.as_dict(),
                  "nucleus_diameter": model.nucleus_diameter, "normalization": model.normalization.model_dump(),
                  "training_data": datasets}
    return v0_5.Config.model_validate({"bioimageio": bioimageio, "nuclei": nuclei_cfg})  # extra keys: allowed


def describe(model: ModelDir, work: Path, sample: Path = DEFAULT_SAMPLE, keras: bool = True) -> v0_5.ModelDescr:
    """The bioimage.io description of ``model``; its generated files (test tensors, cover, docs) go to ``work``."""
    from bioimageio.spec.model import v0_5

    image = sample_image(model, sample)
    dtype = input_dtype(model, image)
    batch = image[None].astype(dtype)
    prob = run_onnx(model.onnx_path, packaged_preprocessing(batch, model.normalization))
    test_in, test_out = work / f"test_input_{INPUT_ID}.npy", work / f"test_output_{OUTPUT_ID}.npy"
    np.save(test_in, batch)
    np.save(test_out, prob)
    samples = work / f"sample_input_{INPUT_ID}.tif", work / f"sample_output_{OUTPUT_ID}.tif"
    tifffile.imwrite(samples[0], image, photometric="rgb")  # sample tensors: for people to look at (FAIR)
    tifffile.imwrite(samples[1], np.moveaxis(prob[0], -1, 0), photometric="minisblack")  # one plane per channel
    cover = write_cover(image, prob[0], model, work / "cover.png")
    docs = write_documentation(model, PackageShape(INPUT_ID, OUTPUT_ID, halo(model), min_input_size(model)),
                               work / "README.md")
    datasets, citations = _citations(model)
    inputs, outputs = _tensors(model, dtype, test_in, test_out, samples)
    attachments = [model.path / n for n in ("config.json", "thresholds.json", "metrics.json", "curves.png")]
    weights = _weights(model, work, keras)
    return v0_5.ModelDescr(
        name=_name(model),
        description=(f"Nucleus segmentation U-Net from nuclei (batch nuclei segmentation): per-pixel "
                     f"{' and '.join(model.channels)} probabilities for a seeded watershed; trained on "
                     f"{'; '.join(datasets) or 'see the documentation'}."),
        authors=[v0_5.Author(name="nuclei developers")], cite=[
            v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi)) for text, doi in citations],
        license=v0_5.LicenseId("MIT"), documentation=v0_5.FileDescr(source=docs), covers=[v0_5.FileDescr(source=cover)],
        attachments=[v0_5.FileDescr(source=p) for p in attachments if p.is_file()],
        tags=["nuclei", "segmentation", "instance-segmentation", "unet", "2d", "fluorescence-light-microscopy",
              "onnx", *(["keras"] if weights.keras_v3 else [])],
        inputs=[inputs], outputs=[outputs], weights=weights, config=_config(model, datasets),
    )


def check_package(path: Path) -> None:
    """bioimageio.core's own test of the ONNX weights on CPU: the test outputs are reproduced from the test inputs,
    and inference runs at several sizes and batch sizes. (The Keras weights would need TensorFlow.)"""
    from bioimageio.core import test_model

    summary = test_model(path, weight_format="onnx", devices=["CPUExecutionProvider"])
    if summary.status != "passed":
        problems = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in summary.errors)
        raise ModelError(f"{path}: bioimageio.core's test failed ({problems or summary.status})")


def export_bioimageio(model_dir: str | Path, out_zip: str | Path, *, sample: str | Path | None = None,
                      keras: bool = True, test: bool = True) -> Path:
    """Write ``model_dir`` as a bioimage.io model package (zip) at ``out_zip`` and return its path. The package
    is validated as it is written (bioimageio.spec raises on an invalid one) and, with ``test``, test-run by
    bioimageio.core before it appears at ``out_zip``. ``keras=False`` leaves the Keras weights out."""
    _require_bioimageio()
    from bioimageio.spec import save_bioimageio_package

    model = load_model_dir(model_dir)
    out = Path(out_zip)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.tmp.zip")
    try:
        with tempfile.TemporaryDirectory(prefix="nuclei-bioimageio-") as tmp:
            descr = describe(model, Path(tmp), Path(sample) if sample else DEFAULT_SAMPLE, keras=keras)
            save_bioimageio_package(descr, output_path=partial)
        if test:
            check_package(partial)
        os.replace(partial, out)  # a reader never sees half a package
    except ValueError as exc:  # pydantic's ValidationError included: an invalid description
        raise ModelError(f"{model.path}: cannot be described for bioimage.io ({exc})") from exc
    finally:
        partial.unlink(missing_ok=True)
    log.info("bioimage.io package of %s written to %s", model.version, out)
    return out
