"""`--diameter auto`: each image's nucleus size measured on a first pass, and a second pass at the model's
training scale when its nuclei are far outside the sizes the model learnt.

The model saw nuclei zoomed 0.4x-2x around its training diameter (`scale_range`), so images within about 2.5x
of it are left as they are (rescaling them measured no better: DSB2018 validation 0.7689 vs 0.7684 AP@0.5);
63x cytospins, nuclei about 100 px across against 24 px, gain 0.57 -> 0.65 AP@0.5 (`python -m benchmarks diameter`).
The estimate is the median equivalent diameter of the first pass's nuclei, as Cellpose's size model aims to
give; images with no nucleus found keep the first pass.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from nuclei.core.debris import drop_debris
from nuclei.core.measure import median_diameter
from nuclei.core.modality import is_stained_brightfield
from nuclei.core.postprocess import instances
from nuclei.errors import InputError
from nuclei.inference.engine import AUTO, Engine

AUTO_BAND = 2.5  # rescale when the first pass's median diameter is over 2.5x off the training diameter


def label_image(
    engine: Engine, image: NDArray[np.generic], prob: NDArray[np.float32] | None = None,
    max_pixels: int | None = None,
) -> tuple[NDArray[np.uint32], Engine]:
    """The nuclei of ``image`` (from ``prob`` when the caller already ran the engine on it) and the engine that
    made them: the stained-tissue model's for such an image (`Engine.for_image`); with ``diameter="auto"`` it
    carries the measured diameter when the image was rescaled (refused past ``max_pixels``, as a file would be)."""
    engine = engine.for_image(image)  # the stained-tissue model's engine for such an image, if one is set
    labels = nuclei_of(engine, image, engine.predict(image) if prob is None else prob)
    if engine.diameter != AUTO:
        return labels, engine
    trained, found = engine.model.nucleus_diameter, median_diameter([labels])
    if not trained or not found or 1.0 / AUTO_BAND < found / trained < AUTO_BAND:
        return labels, engine
    sized = replace(engine, diameter=round(found, 1))
    if max_pixels is not None:
        check_rescaled_size(sized, image.shape, max_pixels)
    return nuclei_of(sized, image, sized.predict(image)), sized


def nuclei_of(engine: Engine, image: NDArray[np.generic], prob: NDArray[np.float32]) -> NDArray[np.uint32]:
    """The nuclei in ``engine``'s probabilities for ``image``: `instances` with its thresholds, then, unless the
    engine keeps them, debris specks dropped (`nuclei.core.debris`; fluorescence only: in stained brightfield
    nuclei are dark)."""
    labels = instances(prob, engine.thresholds)
    if engine.drop_debris and not is_stained_brightfield(image):
        labels = drop_debris(labels, image)
    return labels


def check_rescaled_size(engine: Engine, shape: tuple[int, ...], max_pixels: int) -> None:
    """The pixel limit holds after rescaling too: ``--diameter 2`` on a 20000x300 strip made a 937 Mpixel image
    (2.9 GB and climbing) out of a 6 Mpixel file. Raises InputError saying what to give instead."""
    zoom = engine.zoom
    height, width = max(1, round(shape[0] * zoom)), max(1, round(shape[1] * zoom))
    if zoom <= 1.0 or height * width <= max_pixels:
        return
    raise InputError("image", f"rescaled x{zoom:.3g} (nuclei of {engine.diameter} px to the model's "
                     f"{engine.model.nucleus_diameter} px) it would be {height}x{width} = {height * width / 1e6:.1f} "
                     f"Mpixel, above max_pixels={max_pixels / 1e6:.1f} Mpixel (give the nuclei's real diameter, or "
                     "raise max_pixels)")
