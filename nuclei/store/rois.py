"""Nucleus outlines for Fiji and QuPath: an ImageJ RoiSet zip (roifile) or QuPath GeoJSON per image.

Polygons run along pixel edges (`nuclei.core.outlines`), so their areas are the label areas. Coordinates are
image pixels (x right, y down), as both tools import them over the same image. Both files are written as the
outlines are found, and a large image (a slide) is read a window of labels at a time, each nucleus in the window
its bounding box starts in: memory stays one window's, whatever the image's size.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nuclei.core.outlines import polygon, polygons
from nuclei.store.backend import Store, StoredEntry
from nuclei.store.index import validate_id

RoiFormat = Literal["qupath", "imagej"]
ROI_FORMATS: tuple[RoiFormat, ...] = ("qupath", "imagej")


# Labels larger than this are read in windows of this side (plus the nuclei that reach past a window's edge).
WINDOW = 4096
_BOX = ("label", "bbox_min_y_px", "bbox_min_x_px", "bbox_max_y_px", "bbox_max_x_px")


def export_rois(store: Store, out_dir: str | Path, kind: RoiFormat) -> list[Path]:
    """OUT_DIR/<id>.geojson (qupath) or OUT_DIR/<id>.zip (imagej) for every complete entry."""
    out = Path(out_dir)
    written = []
    for image_id in store.ids():
        outlines = entry_outlines(store.open_entry(image_id))
        path = out / f"{validate_id(image_id)}{'.geojson' if kind == 'qupath' else '.zip'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "qupath":
            _write_geojson(outlines, image_id, path)
        else:
            _write_imagej(outlines, path)
        written.append(path)
    return written


def entry_outlines(entry: StoredEntry, window: int = WINDOW) -> Iterator[tuple[int, np.ndarray]]:
    """(label, polygon) of each nucleus of a stored entry; above ``window`` x ``window`` pixels the labels are
    read a window at a time, the nuclei found from the measurements' bounding boxes."""
    labels = entry.labels_array()
    height, width = labels.shape
    if height * width <= window * window:
        yield from polygons(np.asarray(labels[...])).items()
        return
    columns, table = entry.measurements()
    boxes = table[:, [columns.index(name) for name in _BOX]].astype(np.int64)
    for y0 in range(0, height, window):
        for x0 in range(0, width, window):
            inside = boxes[(boxes[:, 1] >= y0) & (boxes[:, 1] < y0 + window)
                           & (boxes[:, 2] >= x0) & (boxes[:, 2] < x0 + window)]
            if not inside.size:
                continue
            y1, x1 = int(inside[:, 3].max()), int(inside[:, 4].max())  # the window's nuclei whole
            area = np.asarray(labels[y0:y1, x0:x1])
            for label, by0, bx0, by1, bx1 in inside.tolist():
                xy = polygon(area[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0] == label, (by0, bx0))
                if xy is not None:
                    yield label, xy


def _write_geojson(outlines: Iterable[tuple[int, np.ndarray]], image_id: str, path: Path) -> None:
    """A FeatureCollection of detections, one polygon per nucleus, as QuPath's GeoJSON import reads it, written
    a feature at a time."""
    with path.open("w") as handle:
        handle.write('{"type": "FeatureCollection", "features": [')
        for i, feature in enumerate(_features(outlines, image_id)):
            handle.write(("," if i else "") + json.dumps(feature))
        handle.write("]}")


def _features(outlines: Iterable[tuple[int, np.ndarray]], image_id: str) -> Iterator[dict[str, Any]]:
    for label, xy in outlines:
        ring = [[round(float(x), 3), round(float(y), 3)] for x, y in xy]
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        yield {"type": "Feature", "id": f"{image_id}#{label}",
               "geometry": {"type": "Polygon", "coordinates": [ring]},
               "properties": {"objectType": "detection", "name": f"nucleus {label}",
                              "classification": {"name": "Nucleus"}, "measurements": {"label": label}}}


def _write_imagej(outlines: Iterable[tuple[int, np.ndarray]], path: Path) -> None:
    """An ImageJ RoiSet zip (what roifile.roiwrite writes), a ROI at a time."""
    import roifile

    path.unlink(missing_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for label, xy in outlines:
            points = xy[:-1] if len(xy) > 1 and np.array_equal(xy[0], xy[-1]) else xy
            name = f"nucleus-{label:05d}"
            archive.writestr(f"{name}.roi", roifile.ImagejRoi.frompoints(points, name=name).tobytes())
