"""Image and slide entries are one layout: one record (`store.record.record_for`) and one composition of the OME
metadata (`store.layout.entry_metadata`, `n_levels`), written as files for an image and through zarr-python for a
slide. Both are validated against ome-zarr-models' OME-NGFF 0.5 models, on real entries of a real run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v05.image import Image as OmeImage
from ome_zarr_models.v05.image_label import ImageLabel
from ome_zarr_models.v05.labels import Labels

import nuclei
from nuclei.io.images import read_raw
from nuclei.store import layout
from nuclei.store.backend import Store

from .conftest import SAMPLES

FIELD = SAMPLES / "images" / "IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB.png"  # BBBC039, 16-bit


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 1000 x 1300 tiled OME-TIFF (two pyramid levels) segmented whole (an image entry) and as blocks (a slide
    entry)."""
    folder = tmp_path_factory.mktemp("layout")
    field = read_raw(FIELD)
    top = np.concatenate([field, field[:, ::-1]], axis=1)
    mosaic = np.concatenate([top, top[::-1]], axis=0)[:1000, :1300]
    (folder / "in").mkdir()
    tifffile.imwrite(folder / "in" / "mosaic.ome.tif", mosaic, tile=(256, 256), compression="zlib", ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    found = {"image": folder / "image.zarr", "slide": folder / "slide.zarr"}
    assert nuclei.segment([folder / "in"], found["image"])["done"] == 1
    assert nuclei.segment([folder / "in"], found["slide"], slide_pixels=1, block_size=512)["done"] == 1
    return found


def _entry(store: Path) -> zarr.Group:
    return zarr.open_group(str(store / "images" / "mosaic.ome"), mode="r")


@pytest.mark.parametrize("kind", ["image", "slide"])
def test_entries_are_valid_ome_zarr(stores: dict[str, Path], kind: str) -> None:
    group = _entry(stores[kind])
    image = OmeImage.from_zarr(group)  # multiscales, omero, and the labels it names, level for level
    Labels.from_zarr(group["labels"])
    for name in layout.LABEL_NAMES:
        ImageLabel.from_zarr(group[f"labels/{name}"])
    assert image.labels is not None
    (datasets,) = image.datasets
    assert [d.path for d in datasets] == ["s0", "s1"] == [f"s{i}" for i in range(layout.n_levels(1000, 1300))]
    assert "s2" not in group and group["s1"].shape == (1, 500, 650)


def test_image_and_slide_entries_state_the_same_layout_and_record(stores: dict[str, Path]) -> None:
    """The two writers differ only where the entry does (the omero window comes from a slide's strided sample,
    a slide's record says how it was cut)."""
    image, slide = (_entry(stores[kind]) for kind in ("image", "slide"))
    assert image.attrs["ome"]["multiscales"] == slide.attrs["ome"]["multiscales"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in image.attrs["ome"]["multiscales"][0]["datasets"]]
    assert scales == [[1.0, 0.65, 0.65], [1.0, 1.3, 1.3]]  # micrometres: the file states its pixel size
    for path in ("labels", *(f"labels/{name}" for name in layout.LABEL_NAMES)):
        assert image[path].attrs.asdict() == slide[path].attrs.asdict()
    records = {kind: Store(stores[kind]).record("mosaic.ome") for kind in ("image", "slide")}
    assert records["image"] is not None and records["slide"] is not None
    fields = {kind: set(record.as_dict()) for kind, record in records.items()}
    assert fields["slide"] - fields["image"] == {"slide"} and fields["image"] <= fields["slide"]
    for kind, record in records.items():  # the summary from the measurements' area column, for both writers
        labels = nuclei.open_store(stores[kind]).labels("mosaic.ome")
        areas = np.bincount(labels.ravel())[1:]
        assert record.n_nuclei == labels.max() == np.count_nonzero(areas)
        assert record.covered_fraction == np.count_nonzero(labels) / labels.size
        assert record.mean_area == pytest.approx(areas[areas > 0].mean())
        assert record.shape == labels.shape and record.pixel_size_um == pytest.approx(0.65)
