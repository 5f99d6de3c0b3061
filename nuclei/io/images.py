"""Reading microscopy images and label images into nuclei's in-memory form.

Images become float32 RGB in [0, 1] (H, W, 3); labels become uint16/uint32 instance labels (0 = background).
Every failure is an `InputError` that names the file and the reason.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from nuclei.config import DEFAULT_MAX_PIXELS
from nuclei.core.normalize import to_float_rgb
from nuclei.errors import InputError
from nuclei.io.planes import LabImage, PlaneChoice, read_tiff, select

log = logging.getLogger(__name__)


# TIFF and its slide-scanner dialects: Aperio SVS, BigTIFF's .btf (a folder of them was found empty before)
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".btf")
IMAGE_SUFFIXES = (".png", *TIFF_SUFFIXES, ".jpg", ".jpeg", ".bmp")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def quiet_opencv() -> None:
    """Turn OpenCV's own log lines off for this process (the CLI without -v, and its LocalCluster's workers).

    They ("[ WARN:0@14.9] ... PNG input buffer is incomplete") go straight to stderr, into the progress bar and
    the Prefect logs, while the file's failure is already reported once, by nuclei, with its name. OpenCV's
    errors still raise (cv2.error): only its logging is off. libpng prints its "libpng error: ..." line itself,
    whatever OpenCV's level: `_decode` tells a truncated PNG before handing it over."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _plain_reason(exc: Exception) -> str:
    """A decoder's message without the in-memory buffer it was given (`<_io.BytesIO object at 0x...>`)."""
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def image_size(data: bytes, name: str | Path) -> tuple[int, int]:
    """(height, width) from the file header alone, without decoding pixels."""
    try:
        if str(name).lower().endswith(TIFF_SUFFIXES):
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                shape = tif.pages[0].shape
                return int(shape[0]), int(shape[1])
        if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":  # the header says the size: no decoder
            return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
        with warnings.catch_warnings():  # our max_pixels check names the limit; Pillow's global one stays as is
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                return int(height), int(width)
    except Exception as exc:  # noqa: BLE001 - every decoder error becomes one clear message
        raise InputError(name, f"not a readable image ({_plain_reason(exc)})") from exc


def read_raw(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file as stored: (H, W) or (H, W, C), uint8/uint16/float, RGB channel order."""
    path = Path(path)
    _check_readable(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from exc
    return decode(data, path, max_pixels)


def decode(data: bytes, name: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes (``name`` gives the format and the error messages); refuses decompression bombs.
    A multi-channel or multi-plane TIFF is refused here: `decode_image` with a PlaneChoice picks its plane."""
    return decode_image(data, name, max_pixels).array


def decode_image(data: bytes, name: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
                 choice: PlaneChoice | None = None) -> LabImage:
    """Decode image bytes to the plane to segment, with what was chosen (channel, z, pixel size)."""
    choice = choice or PlaneChoice()
    if not data:
        raise InputError(name, "file is empty (0 bytes)")
    height, width = image_size(data, name)
    if height * width > max_pixels:
        raise InputError(
            name, f"image is {height}x{width} = {height * width / 1e6:.0f} Mpixel, above max_pixels="
            f"{max_pixels / 1e6:.0f} Mpixel (raise max_pixels if the image is genuine)"
        )
    if str(name).lower().endswith(TIFF_SUFFIXES):
        try:
            image = read_tiff(data, str(name), choice)
        except InputError:  # already says which option to give
            raise
        except Exception as exc:  # noqa: BLE001 - every decoder error becomes one clear message
            raise InputError(name, f"cannot decode ({_plain_reason(exc)})") from exc
    else:
        array = _decode(data, name)
        image = LabImage(array, "YX" if array.ndim == 2 else "YXS")
        if choice.channel is not None or choice.z not in (None, "0", "max"):
            image = select(array, image.axes, choice, str(name))
    if image.array.ndim not in (2, 3) or image.array.shape[0] == 0 or image.array.shape[1] == 0:
        raise InputError(name, f"unexpected image shape {image.array.shape}")
    return image


def _check_readable(path: Path) -> None:
    if path.is_dir():
        raise InputError(path, "is a directory, not an image file")
    try:
        size = path.stat().st_size
    except OSError as exc:  # missing, broken link, symlink loop
        raise InputError(path, f"cannot open ({exc.strerror or exc})") from exc
    if not os.access(path, os.R_OK):
        raise InputError(path, "permission denied")
    if size == 0:
        raise InputError(path, "file is empty (0 bytes)")


def _decode(data: bytes, name: str | Path) -> np.ndarray:
    if data.startswith(PNG_SIGNATURE) and b"IEND" not in data:  # libpng would print its own error line first
        raise InputError(name, "cannot decode: truncated or not an image (a PNG without its end chunk)")
    try:
        decoded: np.ndarray | None = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except Exception as exc:  # noqa: BLE001
        raise InputError(name, f"cannot decode ({_plain_reason(exc)})") from exc
    if decoded is None:
        raise InputError(name, "cannot decode: truncated or not an image")
    array = decoded
    if array.ndim == 3 and array.shape[2] >= 3:  # OpenCV decodes BGR(A)
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return array


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as float32 RGB (H, W, 3) in [0, 1]."""
    return to_float_rgb(read_raw(path, max_pixels))


def read_labels(path: str | Path) -> np.ndarray:
    """Read a label image: instance ids are kept; a binary mask becomes connected components (8-connected), in
    whatever encoding it was saved: 0/1, 0/255, 0/65535, 8-, 16- or 32-bit, integer, whole-valued float (ImageJ's
    32-bit) or boolean. An image of two values is a mask whatever its dtype (16-bit 0/1 masks were read as one
    nucleus per image); the lower value is the background."""
    raw = read_raw(path)
    if raw.ndim == 3:
        if not np.array_equal(raw[..., 0], raw[..., min(1, raw.shape[2] - 1)]):
            raise InputError(path, "label image has colour channels; expected one channel of ids")
        raw = raw[..., 0]
    raw = _whole_ids(raw, path)
    values = np.unique(raw)
    if values.size <= 2:
        return binary_to_labels(raw > values[0] if values.size == 2 else raw > 0)
    if values[-1] >= 2**32:  # ids too large for uint32: numbered 1..N in their order
        return (np.searchsorted(values, raw) + int(values[0] != 0)).astype(np.uint32)
    return raw.astype(np.uint16 if values[-1] < 2**16 else np.uint32)


def _whole_ids(raw: np.ndarray, path: str | Path) -> np.ndarray:
    """The label image as non-negative integers: booleans and whole-valued floats converted, anything else
    refused naming the file."""
    if raw.dtype == np.bool_:
        return raw.astype(np.uint8)
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
            raise InputError(path, f"label image has dtype {raw.dtype} with fractional or non-finite values; "
                             "expected whole ids (0 background) or a binary mask")
        raw = raw.astype(np.int64)
    elif not np.issubdtype(raw.dtype, np.integer):
        raise InputError(path, f"label image has dtype {raw.dtype}; expected integers")
    if raw.size and raw.min() < 0:
        raise InputError(path, f"label image has negative values (down to {raw.min()}); expected ids >= 0")
    return raw


def binary_to_labels(mask: np.ndarray) -> np.ndarray:
    """Connected components (8-connected) of a binary mask as uint16 labels."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return labels.astype(np.uint16 if count < 2**16 else np.uint32)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8/uint16 grey or RGB(A) array as PNG, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] >= 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA if array.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise InputError(path, "could not write PNG")
