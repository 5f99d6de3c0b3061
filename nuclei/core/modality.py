"""What kind of image this is, where it decides which model segments it.

Stained tissue in brightfield (H&E and similar) looks nothing like fluorescence: coloured nuclei on a bright,
coloured background. StarDist ships a separate model for it, and so does nuclei (`nuclei.modeldir`); this rule
picks it. Both measures are taken on the image's own percentile range, so bit depth and exposure do not matter.
On the three training sets it separates every image: DSB2018's 105 colour brightfield images have colour
>= 0.055 and background >= 0.40; its grey images and every BBBC039 and S-BSST265 image have colour 0 (and
fluorescence has a dark background, median <= 0.35 of its range, also when stored as colour).
"""

from __future__ import annotations

import numpy as np

from nuclei.core.normalize import Normalization, as_float_rgb, intensity_range

MIN_COLOUR = 0.03  # median (max - min channel) / the luminance range: grey images give 0
MIN_BACKGROUND = 0.35  # median luminance within its 1st..99.8th percentiles: most of brightfield is background
PERCENTILES = Normalization(kind="percentile", low=1.0, high=99.8)  # the range the models' inputs use
SAMPLE = 16_384  # pixels (a strided grid) the decision looks at: medians settle long before, and it runs per image


def is_stained_brightfield(raw: np.ndarray) -> bool:
    """True for a colour image with a bright background (H&E-like stained brightfield), any dtype."""
    if raw.ndim != 3 or raw.shape[2] < 3:
        return False
    step = max(1, int(np.sqrt(raw.shape[0] * raw.shape[1] / SAMPLE)))
    sample = raw[::step, ::step, :3]
    if np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(sample[..., 1], sample[..., 2]):
        return False  # grey stored as RGB: the common case, decided at once
    rgb = as_float_rgb(sample)  # float: a signed integer's max - min could overflow
    spread = float(np.median(rgb.max(axis=2) - rgb.min(axis=2)))  # channel spread, stored units
    if not spread > 0.0:  # mostly grey, or NaN
        return False
    lo, span = intensity_range(rgb, PERCENTILES)  # a uniform image's span is inf: colour 0
    colour = spread / span
    background = float(np.median(rgb.mean(axis=2)) - lo) / span
    return colour >= MIN_COLOUR and background >= MIN_BACKGROUND
