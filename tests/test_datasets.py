"""Data loading: each layout, real DSB2018 files, and every bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from nuclei.errors import InputError
from nuclei.io.datasets import detect_layout, load_dataset, split_indices
from nuclei.io.images import read_image, read_labels, write_png
from nuclei.io.synthetic import make_sample
from tests.conftest import SAMPLES, shared_data


def _write_seed_layout(root: Path, n: int = 3) -> None:
    for subset in ("train", "test"):
        for i in range(n):
            image, labels = make_sample((64, 80), n_nuclei=5, seed=i)
            write_png(root / subset / "inputs" / f"img{i}.png", image)
            write_png(root / subset / "masks" / f"img{i}.png", ((labels > 0) * 255).astype(np.uint8))


def _write_kaggle_layout(root: Path, n: int = 2) -> dict[str, np.ndarray]:
    truth = {}
    for i in range(n):
        image, labels = make_sample((64, 64), n_nuclei=4, touching_pairs=0, seed=10 + i)
        sid = f"sample{i}"
        rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
        write_png(root / "stage1_train" / sid / "images" / f"{sid}.png", rgba)
        for label in range(1, int(labels.max()) + 1):
            write_png(root / "stage1_train" / sid / "masks" / f"m{label:03d}.png",
                      ((labels == label) * 255).astype(np.uint8))
        truth[sid] = labels
    return truth


def test_paired_layout_loads_float_rgb_and_instance_labels() -> None:
    dataset = load_dataset(SAMPLES, progress=False)
    assert dataset.layout == "paired" and len(dataset.samples) == 12
    for sample in dataset.samples:
        assert sample.image.dtype == np.float32 and sample.image.shape[2] == 3
        assert sample.image.min() >= 0.0 and sample.image.max() <= 1.0
        assert sample.labels.shape == sample.image.shape[:2] and sample.labels.max() > 1
        assert set(np.unique(sample.mask)) == {0, 1}


def test_seed_layout_pairs_by_name_not_order(tmp_path: Path) -> None:
    _write_seed_layout(tmp_path)
    # A mask whose name sorts first but has no image must not shift the pairing.
    (tmp_path / "train" / "inputs" / "img1.png").rename(tmp_path / "train" / "inputs" / "zzz.png")
    (tmp_path / "train" / "masks" / "img1.png").rename(tmp_path / "train" / "masks" / "zzz.png")
    dataset = load_dataset(tmp_path, progress=False)
    assert dataset.layout == "seed"
    assert sorted(s.id for s in dataset.subset("train")) == ["img0", "img2", "zzz"]
    assert len(dataset.subset("test")) == 3
    for sample in dataset.samples:
        raw_mask = read_image(tmp_path / sample.subset / "masks" / f"{sample.id}.png")[..., 0] > 0
        assert np.array_equal(sample.labels > 0, raw_mask)


def test_kaggle_layout_merges_per_nucleus_masks(tmp_path: Path) -> None:
    truth = _write_kaggle_layout(tmp_path)
    dataset = load_dataset(tmp_path, progress=False)
    assert dataset.layout == "kaggle"
    for sample in dataset.samples:
        assert sample.image.shape == (64, 64, 3)  # alpha dropped
        assert np.array_equal(sample.labels > 0, truth[sample.id] > 0)
        assert len(np.unique(sample.labels)) == len(np.unique(truth[sample.id]))


def test_real_kaggle_samples_equal_the_dev_labels() -> None:
    kaggle = shared_data("dsb2018-stage1-sample")
    dev = shared_data("dsb2018-dev")
    dataset = load_dataset(kaggle, progress=False)
    assert len(dataset.samples) == 3
    for sample in dataset.samples:
        expected = read_image(dev / "images" / f"{sample.id}.png")
        assert np.array_equal(sample.image, expected)
        assert np.array_equal(sample.labels, read_labels(dev / "labels" / f"{sample.id}.png"))


@pytest.mark.parametrize("dtype,channels", [(np.uint8, 0), (np.uint8, 3), (np.uint8, 4), (np.uint16, 0),
                                            (np.uint16, 3)])
@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp", ".jpg"])
def test_image_formats_scale_to_unit_rgb(tmp_path: Path, dtype: type, channels: int, suffix: str) -> None:
    if suffix in (".bmp", ".jpg") and dtype == np.uint16:
        pytest.skip("BMP and JPEG hold 8-bit data only")
    rng = np.random.default_rng(0)
    high = np.iinfo(dtype).max
    shape = (20, 30) if channels == 0 else (20, 30, channels)
    array = rng.integers(0, high, shape, dtype=dtype)
    array[0, 0] = high
    path = tmp_path / f"img{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        write_png(path.with_suffix(".png"), array) if suffix == ".png" else _cv2_write(path, array)
    image = read_image(path)
    assert image.shape == (20, 30, 3) and image.dtype == np.float32
    assert image.max() <= 1.0 and image.min() >= 0.0
    if suffix != ".jpg":  # lossy
        grey = array if channels == 0 else array[..., 0]
        assert np.allclose(image[..., 0], grey / high, atol=1e-6)


def _cv2_write(path: Path, array: np.ndarray) -> None:
    import cv2

    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA if array.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), array)


def _paired(tmp_path: Path, n: int = 3) -> Path:
    for i in range(n):
        image, labels = make_sample((48, 48), n_nuclei=3, seed=i)
        write_png(tmp_path / "images" / f"s{i}.png", image)
        write_png(tmp_path / "labels" / f"s{i}.png", labels)
    return tmp_path


def test_image_without_label_is_named(tmp_path: Path) -> None:
    _paired(tmp_path)
    (tmp_path / "labels" / "s1.png").unlink()
    with pytest.raises(InputError, match=r"s1\.png: image has no mask"):
        load_dataset(tmp_path, progress=False)
    dataset = load_dataset(tmp_path, on_error="skip", progress=False)
    assert [s.id for s in dataset.samples] == ["s0", "s2"]
    assert len(dataset.skipped) == 1 and dataset.skipped[0].path.endswith("s1.png")


def test_label_without_image_is_named(tmp_path: Path) -> None:
    _paired(tmp_path)
    (tmp_path / "images" / "s2.png").unlink()
    with pytest.raises(InputError, match=r"labels/s2\.png: mask/label has no image"):
        load_dataset(tmp_path, progress=False)


def test_size_mismatch_is_named(tmp_path: Path) -> None:
    _paired(tmp_path)
    write_png(tmp_path / "labels" / "s0.png", np.zeros((40, 48), np.uint16))
    with pytest.raises(InputError, match=r"s0\.png: image is 48x48 but its labels are 40x48"):
        load_dataset(tmp_path, progress=False)
    assert len(load_dataset(tmp_path, on_error="skip", progress=False).samples) == 2


@pytest.mark.parametrize("content,reason", [(b"", "empty"), (b"this is text", "not a readable image"),
                                            (None, "not a readable image|cannot decode")])
def test_unreadable_files_are_named(tmp_path: Path, content: bytes | None, reason: str) -> None:
    _paired(tmp_path)
    target = tmp_path / "images" / "s1.png"
    target.write_bytes(target.read_bytes()[:200] if content is None else content)
    with pytest.raises(InputError, match=rf"s1\.png: .*({reason})"):
        load_dataset(tmp_path, progress=False)


def test_unknown_layout_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no known dataset layout"):
        detect_layout(tmp_path)


def test_split_is_seeded_80_20_and_disjoint() -> None:
    train, val = split_indices(100, 0.2, seed=12345)
    assert len(train) == 80 and len(val) == 20 and not set(train) & set(val)
    again, _ = split_indices(100, 0.2, seed=12345)
    other, _ = split_indices(100, 0.2, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
