"""The documentation of a bioimage.io package: the model card, then how to use the package and how to get
nuclei from its probabilities, from the Markdown templates beside this module (`templates/*.md`, with
`string.Template` placeholders). The code block in `instances_cores.md` is run against
`nuclei.core.postprocess.instances` by tests/test_postprocess.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

from nuclei.core.normalize import CLIP, Normalization
from nuclei.core.postprocess import MIN_CORE_FRACTION
from nuclei.modeldir import ModelDir

TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class PackageShape:
    """What the package's tensors look like, as bioimage.io describes them."""

    input_id: str
    output_id: str
    halo: int  # px each side
    min_size: int  # smallest valid side, px


def render(name: str, **values: object) -> str:
    """A template of `templates/` with its placeholders filled (a missing one is an error, not a blank)."""
    return Template((TEMPLATES / name).read_text()).substitute({k: str(v) for k, v in values.items()})


def preprocessing_text(norm: Normalization) -> str:
    if norm.kind == "dtype_range":
        return "the stored values are divided by the maximum of the input's data type."
    return (f"per image, percentiles {norm.low:g} and {norm.high:g} of all R, G and B values jointly map to 0 and 1 "
            f"(`scale_range` over y, x and channel), then values are clipped to [{CLIP[0]:g}, {CLIP[1]:g}]. nuclei "
            "itself takes the percentiles of the luminance (mean of R, G and B), which bioimage.io cannot express: "
            "for grey images (R = G = B, as in fluorescence) the two are the same and so are the probabilities; for "
            "colour (e.g. stained) images the range differs and so do the results, noticeably: segment colour images "
            "with nuclei itself. (nuclei also takes the percentiles of images over 2 Mpixel from a strided sample, "
            "the package from every pixel.)" + WINDOW_NOTES.get(norm.kind, ""))


FOREGROUND_NOTE = (
    " This model was trained with nuclei's `foreground` window (the 75th percentile of the pixels standing out of "
    "the background maps to 1/1.75), which bioimage.io's steps cannot express either: the package uses the "
    "1st..99.8th percentile window, which that anchor matches on typical fields (median ratio 1.0 on the training "
    "images). Sparse fields (mostly empty background) and fields with a few saturated cells get a darker input "
    "from the package than from nuclei: segment those with nuclei itself.")
LOCAL_NOTE = (
    " This model was trained with nuclei's `local` normalisation (a smooth background removed and the foreground "
    "level measured over neighbourhoods of 32 px cells), which bioimage.io's steps cannot express: the package "
    "uses the 1st..99.8th percentile window instead, which matches it on flat, evenly lit fields. Fields with "
    "glow or vignetting, a few saturated cells, or mosaics of fields of other brightness get another input from "
    "the package than from nuclei: segment those with nuclei itself.")
WINDOW_NOTES = {"foreground": FOREGROUND_NOTE, "local": LOCAL_NOTE}


def usage_section(model: ModelDir, shape: PackageShape) -> str:
    names = model.channels
    meaning = "`foreground`: the pixel belongs to a nucleus" + (
        "; `core`: it belongs to the inner part of a nucleus, which stays apart where nuclei touch" if "core" in names
        else "")
    return render("usage.md", input_id=shape.input_id, output_id=shape.output_id, pad_multiple=model.pad_multiple,
                  min_size=shape.min_size, preprocessing=preprocessing_text(model.normalization),
                  channels=", ".join(f"`{n}`" for n in names), meaning=meaning, halo=shape.halo,
                  receptive_field=model.receptive_field)


def instances_section(model: ModelDir) -> str:
    """How `nuclei segment` turns the probabilities into nuclei, with code for models that predict cores."""
    t = model.thresholds
    common = {"foreground_channel": model.channels[0], "foreground": f"{t.foreground:g}", "min_size": t.min_size}
    if len(model.channels) < 2:
        return render("instances_mask.md", **common)
    return render("instances_cores.md", **common, core_channel=model.channels[1], core=f"{t.core:g}",
                  min_core_fraction=f"{MIN_CORE_FRACTION:g}", confidence=f"{t.confidence:g}",
                  n_channels=len(model.channels))


def write_documentation(model: ModelDir, shape: PackageShape, out: Path) -> Path:
    """The model card (or a title), then the package's usage, instances and validation sections."""
    card = model.path / "MODEL_CARD.md"
    head = card.read_text() if card.is_file() else f"# {model.path.name}\n\n{model.config.get('input', '')}\n"
    out.write_text(head.rstrip() + "\n" + usage_section(model, shape) + instances_section(model)
                   + render("validation.md"))
    return out
