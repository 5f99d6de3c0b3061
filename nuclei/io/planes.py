"""Lab images: multi-channel and multi-plane (OME-)TIFF files reduced to the one plane the model segments.

A file's axes come from its OME-XML or ImageJ metadata (tifffile). The default is what a lab would expect and
never a guess: one channel is used as is, RGB goes to the model as RGB (luminance-normalised), and anything
else is refused with the file, its shape and the option to give: ``--channel N|NAME`` for the nuclear channel,
``--z max|N`` for z-stacks. An axis that cannot be told apart (a plain TIFF of shape (2, H, W)) is refused too,
never segmented as an image 2 pixels tall. The pixel size comes from OME PhysicalSizeX, or the TIFF resolution
tags with an ImageJ or TIFF unit; unknown stays unknown.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import tifffile

from nuclei.errors import InputError

# Units to micrometres, for OME PhysicalSizeXUnit and ImageJ's `unit`.
_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "\\u00B5m": 1.0, "nm": 1e-3, "mm": 1e3,
          "cm": 1e4, "m": 1e6}


PLAUSIBLE_UM = (0.01, 50.0)  # pixel sizes a microscope writes, in micrometres


@dataclass(frozen=True)
class PlaneChoice:
    """Which plane to segment: a channel (index or name) and a z plane ("max" or an index)."""

    channel: str | None = None
    z: str | None = None


@dataclass
class LabImage:
    """The plane to segment, (H, W) or (H, W, S) for RGB(A), and what was chosen to get it."""

    array: np.ndarray
    axes: str  # the file's axes, e.g. "ZCYX"
    channel: int | None = None
    channel_name: str | None = None
    z: str | None = None  # "max" (maximum projection) or the plane index
    pixel_size_um: float | None = None

    def describe(self) -> dict[str, object]:
        return {"axes": self.axes, "channel": self.channel, "channel_name": self.channel_name, "z": self.z,
                "pixel_size_um": self.pixel_size_um}


def read_tiff(data: bytes, name: str, choice: PlaneChoice | None = None) -> LabImage:
    """The plane of a (OME-)TIFF file that ``choice`` names; InputError saying which option to give."""
    choice = choice or PlaneChoice()
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        _one_series(tif, name)
        series = tif.series[0]
        array, axes = series.asarray(), series.axes
        names, size = _ome_channels_and_size(tif)
        size = size or _resolution_size(tif)
    return select(array, axes, choice, name, names, size)


def _one_series(tif: tifffile.TiffFile, name: str) -> None:
    """A file of several images (TIFF series: positions, tiles, a multi-image export) is refused: only the first
    was segmented, silently. Levels of one pyramid are one series and pass."""
    if len(tif.series) > 1:
        shapes = ", ".join(f"{s.axes} {tuple(s.shape)}" for s in tif.series[:4])
        more = f", and {len(tif.series) - 4} more" if len(tif.series) > 4 else ""
        raise InputError(name, f"holds {len(tif.series)} images (TIFF series: {shapes}{more}); nuclei segments one "
                         "image per file: save each as its own file")


def select(array: np.ndarray, axes: str, choice: PlaneChoice, name: str, channel_names: list[str] | None = None,
           pixel_size_um: float | None = None) -> LabImage:
    """Reduce an array with named axes to (H, W) or (H, W, S)."""
    kept = [(a, n) for a, n in zip(axes, array.shape, strict=True) if n > 1 or a in "YX"]
    array = array.reshape([n for _, n in kept])
    axes = "".join(a for a, _ in kept)
    image = LabImage(array, axes, pixel_size_um=pixel_size_um)
    if choice.channel is not None and "C" not in axes and "S" in axes:
        axes = axes.replace("S", "C")  # --channel on an RGB file: one of its colours (e.g. the blue nuclei)
    unknown = [a for a in axes if a not in "YXSCZ"]
    if unknown:
        axes = _resolve_unknown(axes, unknown, array.shape, choice, name)
    if "T" in axes:
        raise InputError(name, f"a time series of shape {array.shape} (axes {axes}): give one time point")
    array = _pick_channel(array, axes, choice, name, channel_names, image)
    axes = axes.replace("C", "") if "C" in axes else axes
    array = _pick_plane(array, axes, choice, name, image)
    axes = axes.replace("Z", "")
    if axes not in ("YX", "YXS"):
        raise InputError(name, f"cannot use axes {axes} (shape {array.shape}): expected YX, or YXS for RGB")
    if axes == "YXS" and array.shape[-1] not in (3, 4):
        raise InputError(name, f"{array.shape[-1]} samples per pixel (shape {array.shape}): give --channel N")
    image.array = array
    return image


def _resolve_unknown(axes: str, unknown: list[str], shape: tuple[int, ...], choice: PlaneChoice, name: str) -> str:
    """A plain TIFF's leading axis (Q or I) is a channel or a plane only when the user says which."""
    if len(unknown) == 1 and choice.channel is not None and "C" not in axes:
        return axes.replace(unknown[0], "C")
    if len(unknown) == 1 and choice.z is not None and "Z" not in axes:
        return axes.replace(unknown[0], "Z")
    raise InputError(name, f"cannot tell the axes of shape {shape} apart (the file does not say): give "
                     "--channel N if they are channels, or --z max|N if they are z planes")


def _pick_channel(array: np.ndarray, axes: str, choice: PlaneChoice, name: str, names: list[str] | None,
                  image: LabImage) -> np.ndarray:
    if "C" not in axes:
        if choice.channel not in (None, "0"):
            raise InputError(name, f"has one channel; --channel {choice.channel} does not exist")
        return array
    count = array.shape[axes.index("C")]
    labels = names or []
    if choice.channel is None:
        listed = ", ".join(f"{i}={n}" for i, n in enumerate(labels)) or f"0..{count - 1}"
        raise InputError(name, f"has {count} channels ({listed}): give the nuclear channel with --channel N|NAME")
    index = _channel_index(choice.channel, count, labels, name)
    image.channel, image.channel_name = index, labels[index] if index < len(labels) else None
    return np.take(array, index, axis=axes.index("C"))


def _channel_index(wanted: str, count: int, names: list[str], name: str) -> int:
    if wanted in names:
        return names.index(wanted)
    if wanted.isdigit() and int(wanted) < count:
        return int(wanted)
    raise InputError(name, f"no channel {wanted!r}: it has {count} ({', '.join(names) or 'no names'})")


def _pick_plane(array: np.ndarray, axes: str, choice: PlaneChoice, name: str, image: LabImage) -> np.ndarray:
    if "Z" not in axes:
        return array
    count, axis = array.shape[axes.index("Z")], axes.index("Z")
    if choice.z is None:
        raise InputError(name, f"is a z-stack of {count} planes: give --z max (maximum projection) or --z N")
    image.z = choice.z
    if choice.z == "max":
        return array.max(axis=axis)
    if not choice.z.isdigit() or int(choice.z) >= count:
        raise InputError(name, f"no z plane {choice.z!r}: it has {count} (0..{count - 1})")
    return np.take(array, int(choice.z), axis=axis)


def _ome_channels_and_size(tif: tifffile.TiffFile) -> tuple[list[str] | None, float | None]:
    if not tif.is_ome or not tif.ome_metadata:
        return None, None
    try:
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
    except (KeyError, TypeError, IndexError, ValueError):
        return None, None
    channels = pixels.get("Channel") or []
    channels = channels if isinstance(channels, list) else [channels]
    names = [str(c.get("Name") or f"C{i}") for i, c in enumerate(channels)] or None
    size = pixels.get("PhysicalSizeX")
    unit = _TO_UM.get(str(pixels.get("PhysicalSizeXUnit") or "µm"))
    return names, float(size) * unit if size and unit else None


def _resolution_size(tif: tifffile.TiffFile) -> float | None:
    """Pixel size from XResolution (pixels per unit) with an ImageJ unit or the TIFF ResolutionUnit."""
    tags = getattr(tif.pages[0], "tags", {})
    tag = tags.get("XResolution")
    if tag is None:
        return None
    numerator, denominator = tag.value
    if not numerator:
        return None
    per_unit = denominator / numerator  # units per pixel
    unit_tag = tags.get("ResolutionUnit")
    tiff_unit = int(unit_tag.value) if unit_tag is not None else 1
    imagej_unit = (tif.imagej_metadata or {}).get("unit")
    factor = {2: 25400.0, 3: 10000.0}.get(tiff_unit) or (_TO_UM.get(str(imagej_unit)) if imagej_unit else None)
    size = per_unit * factor if factor else None
    # A screen resolution (72 dpi: 353 um a pixel) is no microscope's: such tags are left unknown.
    return size if size is not None and PLAUSIBLE_UM[0] <= size <= PLAUSIBLE_UM[1] else None
