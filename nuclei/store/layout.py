"""An entry's OME-NGFF 0.5 layout as plain files: the image pyramid, its rendering window, two label images
and the measurements table. Pure composition (arrays in, relative paths -> bytes out); where and how the files
are written, and when an entry becomes visible, is `nuclei.store.backend`'s business.

    images/KEY/zarr.json               OME-Zarr image group: multiscales, omero, and attrs "nuclei" (the record)
    images/KEY/s0 [, s1, ...]          (c, y, x), halved until the largest side is at most PYRAMID_MIN_SIZE
                                       (`n_levels`)
    images/KEY/labels/nuclei/s0 ...    instance labels 1..N (image-label)
    images/KEY/labels/mask/s0 ...      binary mask 0/1 (image-label)
    images/KEY/measurements            float64 (N, k), column names in attrs (`nuclei.core.measure.COLUMNS`)

`entry_arrays` gives every array of an entry by its path, so the writer can hash each one (`nuclei check` reads
them all back) before `files_of` composes them. `entry_metadata` composes the groups' OME metadata for image and
slide entries alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from nuclei.store.record import EntryRecord
from nuclei.store.zarr_files import array_files, group_files

OME_VERSION = "0.5"
PYRAMID_MIN_SIZE = 1024  # halve until the largest side is at most this (`n_levels`): a small level for viewers
CHUNK = 1024
LABEL_NAMES = ("nuclei", "mask")
LABELS_PATH = "labels/nuclei/s{level}"
MASK_PATH = "labels/mask/s{level}"
IMAGE_PATH = "s{level}"
MEASUREMENTS_PATH = "measurements"


def entry_arrays(image: np.ndarray, labels: np.ndarray, measurements: np.ndarray,
                 n_columns: int) -> dict[str, np.ndarray]:
    """Every array of an entry by its path in the entry: the image's levels (c, y, x), both label images'
    levels and the measurements table."""
    arrays = {IMAGE_PATH.format(level=i): level for i, level in enumerate(_levels(to_cyx(image), nearest=False))}
    for path, label_image in ((LABELS_PATH, labels), (MASK_PATH, (labels > 0).astype(np.uint8))):
        arrays |= {path.format(level=i): level for i, level in enumerate(_levels(label_image, nearest=True))}
    arrays[MEASUREMENTS_PATH] = np.asarray(measurements, dtype=np.float64).reshape(-1, n_columns)
    return arrays


def chunks_of(path: str, array: np.ndarray) -> tuple[int, ...]:
    """The chunks an entry's array is stored in: the table whole, image and label levels CHUNK px squares."""
    if path == MEASUREMENTS_PATH:
        return max(1, array.shape[0]), max(1, array.shape[1])
    return tuple(min(s, CHUNK) if i >= array.ndim - 2 else s for i, s in enumerate(array.shape))


def entry_files(record: EntryRecord, image: np.ndarray, labels: np.ndarray, measurements: np.ndarray,
                columns: Sequence[str]) -> dict[str, bytes]:
    """An entry's files (relative paths -> bytes): the OME-Zarr image, its two label images, measurements."""
    return files_of(record, entry_arrays(image, labels, measurements, len(columns)), columns)


def files_of(record: EntryRecord, arrays: dict[str, np.ndarray], columns: Sequence[str]) -> dict[str, bytes]:
    """The files of an entry whose arrays (`entry_arrays`) are composed already."""
    level0 = arrays[IMAGE_PATH.format(level=0)]
    files: dict[str, bytes] = {}
    for path, attributes in entry_metadata(record, omero(level0), n_levels(*level0.shape[-2:])).items():
        files |= group_files(path, attributes)
    for path, array in arrays.items():
        if path == MEASUREMENTS_PATH:
            files |= array_files(path, array, chunks_of(path, array), attributes={"columns": list(columns)})
        else:
            files |= array_files(path, array, chunks_of(path, array), dimension_names=("c", "y", "x")[-array.ndim:])
    return files


def entry_metadata(record: EntryRecord, omero: dict[str, Any], levels: int) -> dict[str, dict[str, Any]]:
    """The attributes of an entry's groups by their path in the entry ("" the image, "labels", "labels/NAME"):
    OME-NGFF 0.5 multiscales of ``levels`` levels (`n_levels`) in the record's pixel size, the rendering
    settings ``omero`` (`omero`), the label images, and the record itself under "nuclei". One composition for
    every entry: an image's are written as files (`files_of`), a slide's through zarr-python
    (`nuclei.store.slide`)."""
    pixel_um = record.pixel_size_um
    groups = {
        "": {"nuclei": record.as_dict(), "ome": {
            "version": OME_VERSION, "multiscales": _multiscales(_cyx(pixel_um), levels, "image", pixel_um),
            "omero": omero}},
        "labels": {"ome": {"version": OME_VERSION, "labels": list(LABEL_NAMES)}},
    }
    for name in LABEL_NAMES:
        groups[f"labels/{name}"] = {"ome": {
            "version": OME_VERSION,
            "multiscales": _multiscales(_yx(pixel_um), levels, name, pixel_um),
            "image-label": {"version": OME_VERSION, "source": {"image": "../../"}},
        }}
    return groups


def n_levels(height: int, width: int) -> int:
    """How many pyramid levels an entry of this size has: full resolution, then halved (sides rounded up) until
    the largest side is at most PYRAMID_MIN_SIZE."""
    levels, side = 1, max(height, width)
    while side > PYRAMID_MIN_SIZE:
        side, levels = (side + 1) // 2, levels + 1
    return levels


def to_cyx(image: np.ndarray) -> np.ndarray:
    """An image as the store keeps it, (c, y, x), from (y, x) or (y, x, c)."""
    return image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)


def _levels(array: np.ndarray, nearest: bool) -> Iterator[np.ndarray]:
    """Full resolution, then half sizes (`n_levels` of them in all)."""
    yield array
    for _ in range(1, n_levels(*array.shape[-2:])):
        if nearest:
            array = array[..., ::2, ::2]
        else:
            h, w = array.shape[-2:]
            planes = [cv2.resize(p, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA) for p in array]
            array = np.stack(planes)
        yield array


def omero(cyx: np.ndarray) -> dict[str, Any]:
    """OME-Zarr rendering settings, so viewers show an RGB image in its colours (red, green, blue channels added
    up) and a dim image bright enough to see: a grey channel gets the window 1st..99.8th percentile of its values,
    an RGB image one window for its three channels (black stays black, white is the 99.8th percentile of all
    three together), so a dark RGB image opens visible and its colours keep their balance."""
    rgb = cyx.shape[0] == 3
    colours = ["FF0000", "00FF00", "0000FF"] if rgb else ["FFFFFF"] * cyx.shape[0]
    names = ["red", "green", "blue"] if rgb else [f"channel {i}" for i in range(cyx.shape[0])]
    step = max(1, max(cyx.shape[1:]) // WINDOW_SAMPLE)  # percentiles of a subsample: cheap, about the same window
    sample = cyx[:, ::step, ::step]
    joint = _rgb_window(sample) if rgb else None
    channels = []
    for plane, colour, name in zip(sample, colours, names, strict=True):
        full = _full_range(plane)
        if joint is None:
            low, high = (float(v) for v in np.percentile(plane, [1.0, 99.8]))
            joint_or_own = (low, max(high, low + 1e-6))
        else:
            joint_or_own = joint
        channels.append({"color": colour, "label": name, "active": True,
                         "window": {"min": full[0], "max": full[1], "start": joint_or_own[0],
                                    "end": joint_or_own[1]}})
    return {"channels": channels, "rdefs": {"model": "color" if rgb else "greyscale"}}


WINDOW_SAMPLE = 256  # px per side the window's percentiles look at (a 256x256 RGB sample: about 2 ms)


def _full_range(plane: np.ndarray) -> tuple[float, float]:
    if plane.dtype.kind in "ui":
        return 0.0, float(np.iinfo(plane.dtype).max)
    return float(plane.min()), float(plane.max())


def _rgb_window(sample: np.ndarray) -> tuple[float, float]:
    """(black, white) for all three channels: black the range's bottom, white the 99.8th percentile of every
    value, never above the range's top nor closer to black than 1/64 of the range (a near-black image is not
    stretched into noise)."""
    bottom, top = _full_range(sample)
    white = float(np.percentile(sample, 99.8))
    return bottom, min(top, max(white, bottom + (top - bottom) / 64))


def _multiscales(
    axes: list[dict[str, str]], n_levels: int, name: str, pixel_um: float | None
) -> list[dict[str, Any]]:
    """OME-NGFF multiscales: the scale is in micrometres when the pixel size is known, else in pixels (the
    axes then carry no unit rather than a made-up one)."""
    spatial = sum(1 for a in axes if a["type"] == "space")
    size = pixel_um or 1.0
    datasets = [
        {"path": f"s{i}", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0] * (len(axes) - spatial) + [size * 2**i] * spatial}]}
        for i in range(n_levels)
    ]
    return [{"name": name, "axes": axes, "datasets": datasets}]


def _yx(pixel_um: float | None) -> list[dict[str, str]]:
    unit = {"unit": "micrometer"} if pixel_um else {}
    return [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]


def _cyx(pixel_um: float | None) -> list[dict[str, str]]:
    return [{"name": "c", "type": "channel"}, *_yx(pixel_um)]
