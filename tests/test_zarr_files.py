"""Zarr v3 files composed by nuclei.store.zarr_files read back through zarr-python exactly like its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from nuclei.store.zarr_files import CHUNK_KEY_SEPARATOR, array_files, group_files

CASES = [
    ("uint8 single chunk", np.arange(3 * 64 * 80, dtype=np.uint8).reshape(3, 64, 80), (3, 64, 80)),
    ("uint16 edge chunks", np.arange(1500 * 1100, dtype=np.uint16).reshape(1, 1500, 1100), (1, 1024, 1024)),
    ("uint32 labels", np.arange(70 * 50, dtype=np.uint32).reshape(70, 50) * 70_000, (32, 32)),
    ("float32", np.linspace(-1, 1, 40 * 30, dtype=np.float32).reshape(40, 30), (40, 30)),
    ("float64 table", np.random.default_rng(0).random((7, 12)), (7, 12)),
    ("empty table", np.zeros((0, 12)), (1, 12)),
]


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, blob in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)


@pytest.mark.parametrize(("data", "chunks"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_array_reads_back_like_zarr_pythons_own(tmp_path: Path, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    names = ("c", "y", "x")[-data.ndim:] if data.ndim >= 2 else None
    _write(tmp_path / "ours", array_files("a", data, chunks, {"columns": ["k"]}, dimension_names=names))
    theirs = zarr.open_group(tmp_path / "theirs", mode="w", zarr_format=3)
    theirs.create_array("a", data=data, chunks=chunks, attributes={"columns": ["k"]}, dimension_names=names,
                        chunk_key_encoding={"name": "default", "separator": CHUNK_KEY_SEPARATOR})

    ours = zarr.open_array(tmp_path / "ours" / "a", mode="r")
    reference = zarr.open_array(tmp_path / "theirs" / "a", mode="r")
    assert ours.metadata.to_dict() == reference.metadata.to_dict()
    np.testing.assert_array_equal(ours[...], data)
    assert ours.dtype == data.dtype

    def files(root: Path) -> set[str]:  # the same files, and no chunk folders: an array is one folder
        return {str(p.relative_to(root)) for p in root.rglob("*")}

    assert files(tmp_path / "ours" / "a") == files(tmp_path / "theirs" / "a")
    assert [p.name for p in (tmp_path / "ours" / "a").iterdir() if p.is_dir()] == []


def test_groups_nest_and_keep_attributes(tmp_path: Path) -> None:
    files = group_files("", {"ome": {"version": "0.5"}}) | group_files("labels", {"n": 2})
    files |= array_files("labels/s0", np.ones((4, 4), np.uint8), (4, 4))
    _write(tmp_path, files)
    root = zarr.open_group(tmp_path, mode="r")
    assert root.attrs["ome"] == {"version": "0.5"}
    labels = root["labels"]
    assert isinstance(labels, zarr.Group) and labels.attrs["n"] == 2
    np.testing.assert_array_equal(labels["s0"][...], np.ones((4, 4), np.uint8))


def test_unsupported_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        array_files("a", np.array(["x"]), (1,))
    with pytest.raises(ValueError, match="unsupported"):
        array_files("a", np.zeros((2, 2)), (2,))


def test_entries_carry_rendering_settings_viewers_use(tmp_path: Path) -> None:
    """RGB shows in its colours; a dim 12-bit-in-uint16 image gets a window on its used range, not 0..65535."""
    from ome_zarr_models.v05.image import Image as OmeImage

    from nuclei.core.measure import COLUMN_NAMES
    from nuclei.store.backend import Store

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    dim = rng.integers(100, 3000, (40, 50), dtype=np.uint16)
    labels = np.zeros((40, 50), np.uint16)
    labels[5:15, 5:15] = 1
    store = Store(tmp_path / "s.zarr", mode="a")
    record = {"source": "x", "source_sha256": "0" * 64, "shape": (40, 50), "n_nuclei": 1, "covered_fraction": 0.05,
              "mean_area": 100.0, "model": {"version": "m@1"}, "thresholds": {}}
    for image_id, image in (("rgb", rgb), ("dim", dim)):
        store.write_entry(image_id, image, labels, np.zeros((1, len(COLUMN_NAMES))), record)
    groups = {i: zarr.open_group(tmp_path / "s.zarr" / "images" / i, mode="r") for i in ("rgb", "dim")}
    for group in groups.values():
        OmeImage.from_zarr(group)
    rgb_omero = groups["rgb"].attrs["ome"]["omero"]
    assert [c["color"] for c in rgb_omero["channels"]] == ["FF0000", "00FF00", "0000FF"]
    assert [c["window"]["start"] for c in rgb_omero["channels"]] == [0, 0, 0]  # black stays black
    assert len({c["window"]["end"] for c in rgb_omero["channels"]}) == 1  # one window: the colours keep balance
    assert 250 <= rgb_omero["channels"][0]["window"]["end"] <= 255  # a full-range image is shown as it is
    window = groups["dim"].attrs["ome"]["omero"]["channels"][0]["window"]
    assert 100 <= window["start"] < window["end"] <= 3000 and window["max"] == 65535
    dark = (rgb // 8).astype(np.uint8)  # a dark RGB image (values 0..31) opens bright enough to see
    store.write_entry("dark", dark, labels, np.zeros((1, len(COLUMN_NAMES))), record)
    end = zarr.open_group(tmp_path / "s.zarr" / "images" / "dark", mode="r").attrs["ome"]["omero"]["channels"][0]
    assert 28 <= end["window"]["end"] <= 31
