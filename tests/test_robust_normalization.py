"""The same nuclei whatever surrounds them (issue 30) and however bright their neighbours are (issue 26):
the `foreground` normalisation on a real BBBC039 field (vendored, from a well held out of training), with the
shipped default model."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from nuclei.core.metrics import matching
from nuclei.core.normalize import Normalization, intensity_range, sample_range, without_padding
from nuclei.io.images import read_labels, read_raw
from nuclei.training.augment import vary_nuclei_brightness
from tests.conftest import SAMPLES

FIELD = "IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB.png"  # 16-bit, 12-bit values, 520 x 696
FOREGROUND = Normalization(kind="foreground")


@cache
def _field() -> tuple[np.ndarray, np.ndarray]:
    return read_raw(str(SAMPLES / "images" / FIELD)), read_labels(str(SAMPLES / "labels" / FIELD))


@cache
def _engine():  # type: ignore[no-untyped-def]
    from nuclei.inference.engine import Engine
    from nuclei.modeldir import default_model_path, load_model_dir

    return Engine(load_model_dir(default_model_path()), providers=("CPUExecutionProvider",))


def _segment(image: np.ndarray) -> np.ndarray:
    from nuclei.core.postprocess import instances

    engine = _engine()
    return instances(engine.predict(image), engine.thresholds)


def _matched(reference: np.ndarray, other: np.ndarray) -> float:
    """Share of the reference's nuclei found again at IoU >= 0.5."""
    return matching(reference, other, 0.5).tp / max(1, int(len(np.unique(reference)) - 1))


def _canvas(field: np.ndarray, size: tuple[int, int], fill: str, at: tuple[int, int]) -> np.ndarray:
    """The field inside a larger image of zeros, its own 5th-percentile value, or noise like its background."""
    labels = _field()[1]
    background = field[labels == 0]
    if fill == "zeros":
        canvas = np.zeros(size, field.dtype)
    elif fill == "level":
        canvas = np.full(size, np.percentile(field, 5), field.dtype)
    else:
        centre = float(np.median(background))
        spread = 1.4826 * float(np.median(np.abs(background - centre)))
        noise = np.random.default_rng(0).standard_normal(size, dtype=np.float32) * spread + centre
        canvas = np.clip(noise, 0, np.iinfo(field.dtype).max).astype(field.dtype)
    y, x = at
    canvas[y : y + field.shape[0], x : x + field.shape[1]] = field
    return canvas


@pytest.mark.parametrize("fill", ["zeros", "level", "noise"])
def test_the_window_does_not_move_with_empty_background_up_to_slide_size(fill: str) -> None:
    field = _field()[0]
    lo, span = intensity_range(field, FOREGROUND)
    for size in [(2000, 2000), (10_000, 10_000)]:  # 4 and 100 Mpx around a 0.36 Mpx field
        got_lo, got_span = intensity_range(_canvas(field, size, fill, (700, 1300)), FOREGROUND)
        assert got_lo == pytest.approx(lo, abs=0.02 * span)
        assert got_span == pytest.approx(span, rel=0.05), (fill, size)


def test_the_percentile_window_did_move_with_empty_background() -> None:
    """Why the `foreground` kind exists: the 1st..99.8th percentiles fall into the nuclei on a large canvas."""
    field = _field()[0]
    percentile = Normalization(kind="percentile")
    _, span = intensity_range(field, percentile)
    _, on_canvas = intensity_range(_canvas(field, (6000, 6000), "level", (0, 0)), percentile)
    assert on_canvas < 0.5 * span


@pytest.mark.parametrize(("fill", "at"), [("zeros", (0, 0)), ("level", (900, 333)), ("noise", (1500, 1350))])
def test_the_same_nuclei_whatever_surrounds_the_field(fill: str, at: tuple[int, int]) -> None:
    field = _field()[0]
    alone = _segment(field)
    found = _segment(_canvas(field, (2048, 2048), fill, at))
    window = found[at[0] : at[0] + field.shape[0], at[1] : at[1] + field.shape[1]]
    assert _matched(alone, window) >= 0.95


def test_three_saturated_cells_do_not_black_out_the_dim_nuclei_beside_them() -> None:
    field, labels = _field()
    ids = np.unique(labels)[1:]
    bright = np.random.default_rng(1).choice(ids, 3, replace=False)
    background = float(np.median(field[labels == 0]))
    dimmed = background + (field.astype(np.float64) - background) * 0.1  # the rest at 10% of their brightness
    dimmed[np.isin(labels, bright)] = 4095  # three cells saturate the camera's 12 bits
    altered = np.clip(np.rint(dimmed), 0, 65535).astype(np.uint16)
    assert _matched(_segment(field), _segment(altered)) >= 0.95


def test_a_dark_8_bit_background_is_content_and_a_constant_fill_is_padding() -> None:
    rng = np.random.default_rng(0)
    quantised = rng.choice([3.0, 4.0, 5.0], size=10_000, p=[0.25, 0.5, 0.25])  # 8-bit dark background
    assert without_padding(quantised, tolerance=1.0).size == quantised.size
    padded = np.concatenate([np.zeros(30_000), 150 + rng.normal(0, 9, 10_000)])
    assert without_padding(padded, tolerance=1.0).size == 10_000


def test_brightfield_keeps_the_percentile_window() -> None:
    """Dark nuclei on a bright background: background does not move the high percentile there."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(200, 5, 50_000), rng.normal(60, 10, 5_000)])
    percentile = Normalization(kind="percentile")
    assert sample_range(values, FOREGROUND, 1.0) == pytest.approx(sample_range(values, percentile, 1.0))


def test_the_description_says_1st_not_1th() -> None:
    assert "1st" in FOREGROUND.describe() and "1th" not in FOREGROUND.describe()
    assert "99.8th" in Normalization(kind="percentile").describe()


def test_each_nucleus_gets_a_brightness_of_its_own_and_the_median_nucleus_keeps_its_value() -> None:
    field, labels = _field()
    image = np.repeat((field.astype(np.float32) / 1000.0)[..., None], 3, axis=2)
    varied = vary_nuclei_brightness(image, labels.astype(np.int32), np.random.default_rng(4))
    inside = labels > 0
    assert np.median(varied[inside]) == pytest.approx(np.median(image[inside]), rel=0.25)
    assert np.median(varied[~inside]) == pytest.approx(np.median(image[~inside]), abs=0.01)
    ratios = [np.median(varied[labels == i]) / np.median(image[labels == i]) for i in np.unique(labels)[1:]]
    assert max(ratios) / min(ratios) > 5  # from dim to bright, not one gain for all
