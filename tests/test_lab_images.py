"""Lab images: channels, z-stacks, OME-TIFF metadata and pixel sizes, read as a lab's files come."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nuclei.errors import InputError
from nuclei.io.images import decode_image
from nuclei.io.planes import PlaneChoice
from nuclei.io.synthetic import make_sample


def _nuclei(seed: int = 1) -> np.ndarray:
    return make_sample((64, 80), n_nuclei=6, seed=seed)[0][..., 0].astype(np.uint16) * 16


def _tiff(array: np.ndarray, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_a_two_channel_tiff_is_refused_until_a_channel_is_chosen() -> None:
    other = np.full((64, 80), 7, np.uint16)
    data = _tiff(np.stack([other, _nuclei()]))  # a plain TIFF: its first axis could be channels or planes
    with pytest.raises(InputError, match=r"two.tif: cannot tell the axes of shape \(2, 64, 80\) apart.*--channel"):
        decode_image(data, "two.tif")
    image = decode_image(data, "two.tif", choice=PlaneChoice(channel="1"))
    assert image.array.shape == (64, 80) and image.channel == 1
    np.testing.assert_array_equal(image.array, _nuclei())


def test_an_ome_tiff_gives_channel_names_pixel_size_and_z_planes() -> None:
    stack = np.stack([np.stack([np.full((64, 80), 3, np.uint16), _nuclei(seed)]) for seed in range(5)])  # ZCYX
    data = _tiff(stack, ome=True, metadata={"axes": "ZCYX", "Channel": {"Name": ["GFP", "DAPI"]},
                                            "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    with pytest.raises(InputError, match="has 2 channels \\(0=GFP, 1=DAPI\\).*--channel"):
        decode_image(data, "cells.ome.tif")
    with pytest.raises(InputError, match="z-stack of 5 planes.*--z max"):
        decode_image(data, "cells.ome.tif", choice=PlaneChoice(channel="DAPI"))
    top = decode_image(data, "cells.ome.tif", choice=PlaneChoice(channel="DAPI", z="max"))
    assert (top.channel, top.channel_name, top.z, top.pixel_size_um) == (1, "DAPI", "max", pytest.approx(0.65))
    np.testing.assert_array_equal(top.array, stack[:, 1].max(axis=0))
    plane = decode_image(data, "cells.ome.tif", choice=PlaneChoice(channel="1", z="3"))
    np.testing.assert_array_equal(plane.array, stack[3, 1])
    with pytest.raises(InputError, match="no z plane '9'"):
        decode_image(data, "cells.ome.tif", choice=PlaneChoice(channel="1", z="9"))


def test_pixel_size_from_imagej_resolution_and_none_when_unknown() -> None:
    imagej = _tiff(_nuclei(), imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "um"})
    assert decode_image(imagej, "a.tif").pixel_size_um == pytest.approx(0.5)
    assert decode_image(_tiff(_nuclei()), "b.tif").pixel_size_um is None
    screen = _tiff(_nuclei(), resolution=(72, 72), resolutionunit="INCH")  # 353 um a pixel: not a microscope's
    assert decode_image(screen, "c.tif").pixel_size_um is None


def test_rgb_stays_rgb_and_a_colour_can_be_picked() -> None:
    rgb = np.dstack([_nuclei(1), _nuclei(2), _nuclei(3)]).astype(np.uint8)
    data = _tiff(rgb, photometric="rgb")
    assert decode_image(data, "rgb.tif").array.shape == (64, 80, 3)
    np.testing.assert_array_equal(decode_image(data, "rgb.tif", choice=PlaneChoice(channel="2")).array, rgb[..., 2])


@pytest.mark.slow
def test_a_segmented_ome_tiff_stores_micrometres_and_the_plane_it_used(tmp_path: Path) -> None:
    import zarr
    from ome_zarr_models.v05.image import Image as OmeImage

    from nuclei.inference.run import segment
    from nuclei.store.backend import Store

    stack = np.stack([np.full((128, 128), 3, np.uint16), make_sample((128, 128), n_nuclei=8, seed=3)[0][..., 0]
                      .astype(np.uint16) * 16])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cells.ome.tif").write_bytes(_tiff(stack, ome=True, metadata={
        "axes": "CYX", "Channel": {"Name": ["GFP", "DAPI"]}, "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325}))
    refused = segment([tmp_path / "in"], tmp_path / "s.zarr")
    assert refused["failed"] == 1 and "--channel" in refused["failures"][0]["reason"], refused
    summary = segment([tmp_path / "in"], tmp_path / "s.zarr", channel="DAPI")
    assert summary["done"] == 1
    store = Store(tmp_path / "s.zarr")
    record = store.record("cells.ome")
    assert record is not None and (record.channel, record.channel_name, record.pixel_size_um) == (1, "DAPI", 0.325)
    group = zarr.open_group(tmp_path / "s.zarr" / "images" / record.key, mode="r")
    OmeImage.from_zarr(group)  # valid OME-NGFF 0.5
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert [a.get("unit") for a in multiscale["axes"]] == [None, "micrometer", "micrometer"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.325, 0.325]


def test_roi_exports_for_qupath_and_fiji_have_the_label_areas(tmp_path: Path) -> None:
    import json

    import roifile
    from skimage.draw import disk, ellipse

    from nuclei.cli.main import main
    from nuclei.core.measure import measure
    from nuclei.core.outlines import polygon_area
    from nuclei.store.backend import Store

    labels = np.zeros((96, 128), np.uint16)
    for label, (r, c, radius) in enumerate([(20, 20, 6), (50, 40, 12), (70, 100, 9), (20, 90, 5)], start=1):
        labels[disk((r, c), radius, shape=labels.shape)] = label
    labels[ellipse(80, 30, 6, 14, shape=labels.shape)] = 5  # elongated
    labels[40:44, 110:128] = 6  # touching the image edge
    image = (labels > 0).astype(np.uint8) * 200
    table = measure(labels, image)
    store_path = tmp_path / "s.zarr"
    record = {"source": "/data/a.png", "source_sha256": "0" * 64, "shape": [96, 128], "n_nuclei": 6,
              "covered_fraction": float((labels > 0).mean()), "mean_area": float(table[:, 1].mean()),
              "model": {"version": "m@1"}, "thresholds": {"foreground": 0.5}}
    Store(store_path, "a").write_entry("plate/a", image, labels, table, record)
    areas = np.bincount(labels.ravel())[1:]

    assert main(["query", str(store_path), "export", str(tmp_path / "qupath"), "--rois", "qupath"]) == 0
    features = json.loads((tmp_path / "qupath" / "plate" / "a.geojson").read_text())["features"]
    assert len(features) == 6
    for feature in features:
        label = feature["properties"]["measurements"]["label"]
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert polygon_area(ring) == pytest.approx(areas[label - 1], rel=0.02), label

    assert main(["query", str(store_path), "export", str(tmp_path / "fiji"), "--rois", "imagej"]) == 0
    rois = roifile.roiread(tmp_path / "fiji" / "plate" / "a.zip")
    assert len(rois) == 6
    for roi in rois:
        label = int(roi.name.split("-")[1])
        assert polygon_area(roi.coordinates()) == pytest.approx(areas[label - 1], rel=0.02), label
