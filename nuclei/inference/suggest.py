"""What to label next: the images a model is least sure of, so a lab corrects those that teach it most.

    nuclei suggest unlabelled/ --n 10          # or a results store; --json for scripts (QuPath users)
    >>> rank(Engine(load_model_dir(path)), images_of("unlabelled/"))[:10]   # doctest: +SKIP

The signal is measured, not guessed: the model runs on the image and its three mirror images (test-time flips),
each probability map is flipped back, and where the four disagree the model is unsure. ``flip_disagreement`` is
1 - IoU of the four foreground masks (at the model's own threshold): 0 when every flip finds the same nuclei,
towards 1 when they find different ones. ``confidence`` (mean foreground probability inside the nuclei found)
is reported beside it.

A batch to label is more than the top of that ranking: the least sure images are often of one kind (a handful of
63x cytospins in a folder of 20x fields), and correcting five of one kind teaches the model that kind only.
`pick` spreads a batch over the folder (Zhdanov 2019, Citovsky et al. 2021: uncertainty within clusters): the
images are grouped into N clusters of look-alikes (by the size and number of the nuclei found and the image's
size), and the least sure image of each cluster is taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nuclei.core.measure import median_diameter
from nuclei.core.postprocess import instances
from nuclei.errors import InputError
from nuclei.inference.engine import Engine
from nuclei.io.discovery import discover
from nuclei.io.images import read_raw
from nuclei.store.query import NucleiStore

FLIPS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (0, 1))  # none, vertical, horizontal, both


@dataclass(frozen=True)
class Candidate:
    """One image to label, with how unsure the model is of it."""

    id: str
    source: str
    flip_disagreement: float  # 1 - IoU of the four flips' foreground masks: the ranking signal
    confidence: float  # mean foreground probability inside the nuclei found (1: sure)
    n_nuclei: int
    diameter: float = 0.0  # median equivalent diameter of the nuclei found, px (0: none found)
    pixels: int = 0  # height x width

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# An image to rank: its id, where it comes from (a file or STORE#id) and how to read its pixels as stored.
Source = tuple[str, str, Callable[[], np.ndarray]]


def flip_probabilities(engine: Engine, raw: np.ndarray) -> np.ndarray:
    """The probabilities (H, W, C) of ``raw`` and of each mirror image, flipped back: (4, H, W, C)."""
    engine = replace(engine.for_image(raw), tta=False)  # the flips are ours, kept apart
    maps = []
    for axes in FLIPS:
        flipped = np.ascontiguousarray(np.flip(raw, axes)) if axes else raw
        prob = engine.predict(flipped)
        maps.append(np.flip(prob, axes) if axes else prob)
    return np.stack(maps)


def uncertainty(engine: Engine, raw: np.ndarray, image_id: str, source: str) -> Candidate:
    """How unsure ``engine`` is of one image (see the module's docstring); its nuclei are those of the four
    flips' mean, as `Engine(tta=True)` finds them."""
    probs = flip_probabilities(engine, raw)
    used = engine.for_image(raw)
    masks = probs[..., 0] > used.thresholds.foreground
    union = np.count_nonzero(masks.any(axis=0))
    agreed = np.count_nonzero(masks.all(axis=0))
    mean = probs.mean(axis=0)
    labels = instances(mean, used.thresholds)
    inside = labels > 0
    return Candidate(
        id=image_id, source=source,
        flip_disagreement=round(1.0 - agreed / union, 6) if union else 0.0,
        confidence=round(float(mean[..., 0][inside].mean()), 6) if inside.any() else 0.0,
        n_nuclei=int(np.unique(labels[inside]).size), diameter=round(median_diameter([labels]), 3),
        pixels=int(raw.shape[0] * raw.shape[1]),
    )


def rank(engine: Engine, images: Iterable[Source], on_image: Callable[[int], None] | None = None
         ) -> list[Candidate]:
    """Every image measured, the least sure first (largest flip disagreement; ties: the less confident first).
    ``on_image(i)`` after each image (a progress bar; it may raise to stop)."""
    found = []
    for i, (image_id, source, read) in enumerate(images):
        found.append(uncertainty(engine, read(), image_id, source))
        if on_image is not None:
            on_image(i + 1)
    return sorted(found, key=lambda c: (-c.flip_disagreement, c.confidence, c.id))


def pick(ranked: list[Candidate], n: int, seed: int = 0, proportional: bool = False) -> list[Candidate]:
    """A batch of ``n`` images to label from ``ranked`` (`rank`'s order), spread over the kinds of image it holds:
    k-means (k = n) on each image's log nucleus diameter, log nucleus count and log size, then the least sure of
    each cluster, those most unsure first; clusters that came out empty leave their places to the next in rank.
    ``proportional``: each cluster gets places in proportion to its size instead of one each (its least sure
    images), so a kind that is most of the folder is most of the batch. The rest follow in rank order, so the
    list is still every image."""
    if n <= 1 or n >= len(ranked):
        return list(ranked)
    from scipy.cluster.vq import kmeans2

    features = np.log1p(np.array([[c.diameter, c.n_nuclei, c.pixels] for c in ranked], np.float64))
    spread = features.std(axis=0)
    features = (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    _, cluster = kmeans2(features, n, minit="++", seed=seed)
    sizes = np.bincount(cluster, minlength=n)
    places = shares(sizes, n) if proportional else np.minimum(sizes, 1)
    chosen: list[int] = []
    for k in range(n):  # ranked is least sure first, so a cluster's first members are its least sure
        chosen += [int(m) for m in np.flatnonzero(cluster == k)[: places[k]]]
    taken = set(chosen)
    chosen += [i for i in range(len(ranked)) if i not in taken][: n - len(chosen)]
    first = set(chosen)
    return [ranked[i] for i in sorted(first)] + [c for i, c in enumerate(ranked) if i not in first]


def shares(sizes: np.ndarray, n: int) -> np.ndarray:
    """``n`` places split in proportion to ``sizes`` (largest remainders; never more than a size)."""
    exact = n * sizes / max(1, int(sizes.sum()))
    places = np.minimum(np.floor(exact).astype(int), sizes)
    for k in np.argsort(-(exact - places), kind="stable"):
        if places.sum() >= min(n, int(sizes.sum())):
            break
        if places[k] < sizes[k]:
            places[k] += 1
    return places


def images_of(source: str | Path) -> list[Source]:
    """The images of a folder (as `nuclei segment` finds them) or of a results store (its entries' images)."""
    if (Path(source) / "zarr.json").is_file():  # a store's root group
        return list(_store_images(NucleiStore(source)))
    found = discover([str(source)])
    if not found.items:
        raise InputError(str(source), "no images to rank")
    return [(item.id, item.url, _reader(item.url)) for item in found.items]


def _reader(url: str) -> Callable[[], np.ndarray]:
    return lambda: read_raw(url)


def _store_images(store: NucleiStore) -> Iterator[Source]:
    for image_id in store.ids():
        yield image_id, f"{store.url}#{image_id}", _store_reader(store, image_id)


def _store_reader(store: NucleiStore, image_id: str) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        image = store.image(image_id)
        return image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    return read


def table(candidates: list[Candidate]) -> str:
    """The ranking as aligned text, most useful to label first."""
    rows = [("rank", "id", "flip disagreement", "confidence", "nuclei")]
    rows += [(str(i), c.id, f"{c.flip_disagreement:.3f}", f"{c.confidence:.3f}", str(c.n_nuclei))
             for i, c in enumerate(candidates, start=1)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
