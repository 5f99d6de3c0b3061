"""Training crops and augmentation, pure numpy: flips, 90-degree rotations, crops and intensity changes."""

from __future__ import annotations

import numpy as np

from nuclei.tiling import pad_to_at_least


def random_crop(
    image: np.ndarray, target: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The same random size x size window of an image and its targets."""
    image, target = pad_to_at_least(image, size, size), pad_to_at_least(target, size, size)
    y = int(rng.integers(0, image.shape[0] - size + 1))
    x = int(rng.integers(0, image.shape[1] - size + 1))
    return image[y : y + size, x : x + size], target[y : y + size, x : x + size]


def flip_rotate(
    image: np.ndarray, target: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 symmetries of the square, applied to both."""
    k = int(rng.integers(0, 4))
    image, target = np.rot90(image, k), np.rot90(target, k)
    if rng.random() < 0.5:
        image, target = image[:, ::-1], target[:, ::-1]
    return image, target


def jitter_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast and brightness changes, and a channel shuffle for stained colour images."""
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    image = (image - image.mean()) * rng.uniform(0.75, 1.3) + image.mean() + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.3:
        image = image[..., rng.permutation(3)]
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def augmented_crop(
    image: np.ndarray, target: np.ndarray, size: int, rng: np.random.Generator, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A training example: a random crop, then (optionally) symmetries and intensity jitter."""
    image, target = random_crop(image, target, size, rng)
    if augment:
        image, target = flip_rotate(image, target, rng)
        image = jitter_intensity(image, rng)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(target, np.float32)
