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


# --- through `nuclei segment` with the shipped default model -------------------------------------------------


def _segment_folder(folder: Path, store: Path) -> dict[str, np.ndarray]:
    from nuclei.inference.run import segment
    from nuclei.store.backend import Store

    summary = segment([folder], store)
    assert summary["failed"] == 0, summary["failures"]
    written = Store(store)
    return {image_id: written.read_labels(image_id) for image_id in written.ids()}


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a > 0) == (b > 0)))


@pytest.mark.slow
def test_a_12_bit_camera_image_and_its_8_bit_copy_give_the_same_nuclei(tmp_path: Path) -> None:
    """Tolerance: the same nucleus count and >= 99.5% of pixels called alike (int8 rounding can move a few edge
    pixels: the inputs agree to 1e-5, not bit for bit)."""
    from nuclei.io.images import read_raw, write_png

    sample = Path(__file__).resolve().parent.parent / "nuclei" / "assets" / "sample" / "images"
    eight = read_raw(next(p for p in sorted(sample.glob("*.png")) if read_raw(p).dtype == np.uint8))[..., 0]
    write_png(tmp_path / "in" / "eight.png", eight)
    write_png(tmp_path / "in" / "twelve.png", eight.astype(np.uint16) * 12 + 100)  # values 100..3160
    labels = _segment_folder(tmp_path / "in", tmp_path / "s.zarr")
    assert labels["eight"].max() >= 5  # the model finds nuclei at all
    assert abs(int(labels["eight"].max()) - int(labels["twelve"].max())) <= 1
    assert _agreement(labels["eight"], labels["twelve"]) >= 0.995


@pytest.mark.slow
def test_a_dim_16_bit_image_is_segmented_like_its_stretched_copy(tmp_path: Path) -> None:
    """The vendored BBBC039 field as the microscope wrote it (12-bit values in uint16), the same field at a
    tenth of the brightness, and stretched to 8 bits: nuclei counts within 5%, >= 97% of pixels alike."""
    from nuclei.io.images import read_raw, write_png

    path = Path(__file__).resolve().parent.parent / "nuclei" / "assets" / "sample" / "images"
    raw = read_raw(next(path.glob("IXMtest_*.png")))
    lo, hi = np.percentile(raw, (1, 99.8))
    write_png(tmp_path / "in" / "camera.png", raw)
    write_png(tmp_path / "in" / "dim.png", (raw // 10).astype(np.uint16))
    write_png(tmp_path / "in" / "stretched.png", (np.clip((raw - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8))
    labels = _segment_folder(tmp_path / "in", tmp_path / "s.zarr")
    counts = {k: int(v.max()) for k, v in labels.items()}
    assert counts["camera"] >= 50, counts  # 110 nuclei in the ground truth
    for other in ("dim", "stretched"):
        assert abs(counts[other] - counts["camera"]) <= 0.05 * counts["camera"], counts
        assert _agreement(labels[other], labels["camera"]) >= 0.97


@pytest.mark.parametrize("image", [
    np.arange(40 * 30 * 3, dtype=np.uint32).reshape(40, 30, 3).astype(np.uint8),  # RGB
    (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 3),  # grey 16-bit
    np.arange(40 * 30 * 4).reshape(40, 30, 4).astype(np.uint8),  # RGBA: alpha dropped
    np.arange(40 * 30 * 2).reshape(40, 30, 2).astype(np.uint8),  # grey + alpha
    np.linspace(-0.2, 1.5, 40 * 30 * 3, dtype=np.float32).reshape(40, 30, 3),  # float: clipped to [0, 1]
    np.arange(40 * 30).reshape(40, 30) % 3 == 0,  # bool
    (np.arange(40 * 30).reshape(40, 30) - 200).astype(np.int16),  # signed
])
def test_channel_mean_is_the_mean_of_the_scaled_rgb_channels(image: np.ndarray) -> None:
    from nuclei.core.normalize import channel_mean, to_float_rgb

    assert np.allclose(channel_mean(image), to_float_rgb(image).mean(axis=-1, dtype=np.float64), atol=1e-7)
