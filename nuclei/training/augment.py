"""Training crops and augmentation, pure numpy/OpenCV: zoom, flips, 90-degree rotations, brightness per nucleus,
intensity, blur, noise and colour changes. Images arrive normalised (`nuclei.core.normalize`), so intensity
changes act around 0..1."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb, rgb_from_hed

from nuclei.core.normalize import CLIP
from nuclei.core.tiling import pad_to_at_least


def random_crop(
    image: np.ndarray, target: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The same random size x size window of an image and its targets."""
    image, target = pad_to_at_least(image, size, size), pad_to_at_least(target, size, size)
    y = int(rng.integers(0, image.shape[0] - size + 1))
    x = int(rng.integers(0, image.shape[1] - size + 1))
    return image[y : y + size, x : x + size], target[y : y + size, x : x + size]


def zoomed_crop(
    image: np.ndarray, target: np.ndarray, size: int, zoom: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random window of size / zoom pixels, resized to size x size: zoom > 1 makes nuclei bigger.
    Targets are resized by nearest neighbour, so masks stay 0/1 and weights keep their values."""
    if zoom == 1.0:
        return random_crop(image, target, size, rng)
    window = max(8, round(size / zoom))
    image, target = random_crop(image, target, window, rng)
    interpolation = cv2.INTER_AREA if zoom < 1.0 else cv2.INTER_LINEAR
    image = cv2.resize(image, (size, size), interpolation=interpolation)
    target = cv2.resize(target, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, target.reshape(size, size, -1)


def flip_rotate(
    image: np.ndarray, target: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 symmetries of the square, applied to both."""
    k = int(rng.integers(0, 4))
    image, target = np.rot90(image, k), np.rot90(target, k)
    if rng.random() < 0.5:
        image, target = image[:, ::-1], target[:, ::-1]
    return image, target


def _is_grey(image: np.ndarray) -> bool:
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def jitter_colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stain and colour changes for colour images: per-channel gain, a channel shuffle, or greyscale."""
    if _is_grey(image):
        return image
    image = image * rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    roll = rng.random()
    if roll < 0.2:
        image = image[..., rng.permutation(3)]
    elif roll < 0.4:
        image = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2)
    return image


def jitter_stain(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Another lab's staining: the haematoxylin, eosin and DAB optical densities (Ruifrok-Johnston colour
    deconvolution, scikit-image's matrices) each scaled by 1 +- sigma and shifted by +- sigma, as Tellez et al.
    (Med Image Anal 2019) augment H&E; 0.05 is their light setting. Exact without it: densities are not clipped
    (scikit-image's rgb2hed clips them, which alone moves colours by up to 0.2). Colour images, 0..1."""
    if sigma <= 0 or _is_grey(image):
        return image
    density = -np.log(np.clip(image, 1e-3, 1.0)) @ hed_from_rgb
    density = density * rng.uniform(1 - sigma, 1 + sigma, size=3) + rng.uniform(-sigma, sigma, size=3)
    return np.clip(np.exp(-(density @ rgb_from_hed)), 0.0, 1.0).astype(np.float32)


# Per-nucleus gains are log-uniform over this range: interphase nuclei at 5-100% of their neighbours' brightness.
NUCLEUS_GAIN = (0.05, 1.0)
# Nuclei pushed towards saturation (mitotic, apoptotic cells): gain over this range, then clipped flat.
SATURATED_GAIN = (2.0, 8.0)
HALO = 4
# The rescale that restores the median nucleus amplifies noise too, as normalising a dim field does; capped.
MAX_RESCALE = 4.0


def vary_nuclei_brightness(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Give every nucleus a brightness of its own, as lab fields have (dim interphase nuclei beside a few
    saturated cells), then rescale so the median nucleus pixel keeps its value, as the foreground
    normalisation does at inference: the network learns that a nucleus at 5% of its neighbours' brightness,
    or one clipped flat, is still a nucleus. Gains vary smoothly across nucleus borders (no painted edges)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    inside = labels > 0
    if ids.size == 0 or inside.all():
        return image
    low, high = np.log(NUCLEUS_GAIN)
    gains = np.exp(rng.uniform(low, high, size=ids.size))
    saturated = np.zeros(ids.size, dtype=bool)
    if rng.random() < 0.5:  # in half of the varied crops, one to three nuclei (on average) near saturation
        saturated = rng.random(ids.size) < min(1.0, rng.uniform(1, 4) / ids.size)
        gains[saturated] = rng.uniform(*SATURATED_GAIN, size=int(np.count_nonzero(saturated)))
    lookup = np.ones(int(labels.max()) + 1, np.float32)
    lookup[ids.astype(np.int64)] = gains
    # Each nucleus's blurred rim (HALO px around it) takes its gain too, so no bright ring is left behind.
    distance, (iy, ix) = ndi.distance_transform_edt(~inside, return_indices=True)
    nearest = np.where(distance <= HALO, labels[iy, ix], 0).astype(np.int64)
    gain = cv2.GaussianBlur(lookup[nearest], (0, 0), 1.0)[..., None]
    background = float(np.median(image[~inside]))
    before = float(np.median(image[inside])) - background
    varied = background + (image - background) * gain
    after = float(np.median(varied[inside])) - background
    if before > 0 and after > 0:
        varied = background + (varied - background) * min(before / after, MAX_RESCALE)
    if np.any(saturated):
        ceiling = np.float32(rng.uniform(1.0, CLIP[1]))
        flat = np.isin(labels, ids[saturated])[..., None]
        varied = np.where(flat, np.minimum(varied, ceiling), varied)
    return varied.astype(np.float32)


def jitter_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast and offset changes, then sometimes blur (out of focus) and noise (a dim, short exposure)."""
    image = np.clip(image, 0.0, None) ** rng.uniform(0.6, 1.6) if rng.random() < 0.6 else image
    image = image * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.2:
        image = cv2.GaussianBlur(np.ascontiguousarray(image, np.float32), (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.2:
        image = image + rng.normal(0.0, rng.uniform(0.01, 0.08), image.shape[:2])[..., None]
    return np.clip(image, *CLIP).astype(np.float32)


def random_zoom(scale_range: tuple[float, float], rng: np.random.Generator) -> float:
    """A training crop's zoom, log-uniform over ``scale_range`` (1 where it is (1, 1))."""
    return float(np.exp(rng.uniform(*np.log(scale_range)))) if tuple(scale_range) != (1.0, 1.0) else 1.0


def augmented_crop(
    image: np.ndarray,
    target: np.ndarray,
    size: int,
    rng: np.random.Generator,
    augment: bool = True,
    scale_range: tuple[float, float] = (1.0, 1.0),
    labels: np.ndarray | None = None,
    nucleus_brightness: float = 0.0,
    stain_jitter: float = 0.0,
    zoom: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A training example: a random (zoomed) crop, then (optionally) symmetries, brightness per nucleus (in a
    ``nucleus_brightness`` share of crops; needs the instance ``labels``), stain (``stain_jitter``: the HED
    sigma), colour and intensity jitter. ``zoom`` fixes the zoom (validation crops at a chosen scale)."""
    if zoom is None:
        zoom = random_zoom(scale_range, rng) if augment else 1.0
    vary = augment and labels is not None and rng.random() < nucleus_brightness
    if vary:  # the labels ride along as a last target plane, so the crop, zoom and symmetries match
        target = np.concatenate([target, np.asarray(labels, np.float32)[..., None]], axis=-1)
    image, target = zoomed_crop(image, target, size, zoom, rng)
    if augment:
        image, target = flip_rotate(image, target, rng)
        if vary:
            image = vary_nuclei_brightness(image, np.rint(target[..., -1]).astype(np.int32), rng)
            target = target[..., :-1]
        image = jitter_intensity(jitter_colour(jitter_stain(image, stain_jitter, rng), rng), rng)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(target, np.float32)
