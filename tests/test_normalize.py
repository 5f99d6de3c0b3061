"""Intensity normalisation: any bit depth or brightness reaches the model alike (pure numpy, plus the engine)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from nuclei.core.normalize import LEGACY, Normalization, intensity_range, normalized
from nuclei.io.datasets import Sample, matches_group
from nuclei.io.synthetic import make_sample

NORM = Normalization(low=1.0, high=99.8)


def _eight_bit() -> np.ndarray:
    image, _ = make_sample((96, 128), n_nuclei=12, seed=3)
    return image


def test_12_bit_in_uint16_and_its_8_bit_copy_normalise_alike() -> None:
    eight = _eight_bit()
    twelve = eight.astype(np.uint16) * 12 + 100  # 100..3160: what a 12-bit camera writes into uint16
    np.testing.assert_allclose(normalized(twelve, NORM), normalized(eight, NORM), atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.float32, np.float64, np.uint16])
def test_any_dtype_normalises_to_the_same_input(dtype: type) -> None:
    eight = _eight_bit()
    other = eight.astype(dtype) * 3 + 50
    np.testing.assert_allclose(normalized(other, NORM), normalized(eight, NORM), atol=1e-5)


def test_percentiles_map_to_zero_and_one() -> None:
    image = np.arange(10_000, dtype=np.uint16).reshape(100, 100)
    out = normalized(image, NORM)
    assert out.shape == (100, 100, 3) and out.dtype == np.float32
    lo, hi = np.percentile(image, (1.0, 99.8))
    assert out[image == round(lo)].mean() == pytest.approx(0.0, abs=1e-3)
    assert out[image == round(hi)].mean() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("value", [0, 7, 65535])
def test_uniform_and_empty_images_do_not_divide_by_zero(value: int) -> None:
    image = np.full((32, 48), value, np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning: divide by zero / invalid value
        out = normalized(image, NORM)
    assert np.isfinite(out).all() and not out.any()


def test_nan_pixels_do_not_poison_the_range() -> None:
    image = _eight_bit().astype(np.float32)
    image[0, :5] = np.nan
    out = normalized(image, NORM)
    assert np.isfinite(out).all()


def test_legacy_models_scale_by_the_dtype_range() -> None:
    image = np.full((4, 4), 4095, np.uint16)
    assert normalized(image, LEGACY).max() == pytest.approx(4095 / 65535)
    assert intensity_range(image, LEGACY) == (0.0, 1.0)


def test_normalization_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="below high"):
        Normalization(low=99.0, high=5.0)


def test_held_out_rules_match_manifest_fields_ids_and_categories() -> None:
    sample = Sample("IXMtest_B07_s2_w1", np.zeros((2, 2)), np.zeros((2, 2), np.uint16), Path("x"),
                    dataset="bbbc039", meta={"preparation": "BM cytospin"})
    assert matches_group(sample, r"bbbc039:id=_[A-C]\d\d_")
    assert not matches_group(sample, r"bbbc039:id=_[D-P]\d\d_")
    assert not matches_group(sample, r"dsb2018-dev:id=_[A-C]\d\d_")  # another data set
    assert matches_group(sample, "*:preparation=^BM cytospin$")
