"""Nucleus outlines for Fiji and QuPath: an ImageJ RoiSet zip (roifile) or QuPath GeoJSON per image.

Polygons run along pixel edges (`nuclei.core.outlines`), so their areas are the label areas. Coordinates are
image pixels (x right, y down), as both tools import them over the same image.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nuclei.core.outlines import polygons
from nuclei.store.backend import Store, validate_id

RoiFormat = Literal["qupath", "imagej"]
ROI_FORMATS: tuple[RoiFormat, ...] = ("qupath", "imagej")


def export_rois(store: Store, out_dir: str | Path, kind: RoiFormat) -> list[Path]:
    """OUT_DIR/<id>.geojson (qupath) or OUT_DIR/<id>.zip (imagej) for every complete entry."""
    out = Path(out_dir)
    written = []
    for image_id in store.ids():
        outlines = polygons(store.read_labels(image_id))
        path = out / f"{validate_id(image_id)}{'.geojson' if kind == 'qupath' else '.zip'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "qupath":
            path.write_text(json.dumps(geojson(outlines, image_id)))
        else:
            _write_imagej(outlines, path)
        written.append(path)
    return written


def geojson(outlines: dict[int, np.ndarray], image_id: str) -> dict[str, Any]:
    """A FeatureCollection of detections, one polygon per nucleus, as QuPath's GeoJSON import reads it."""
    return {"type": "FeatureCollection", "features": list(_features(outlines, image_id))}


def _features(outlines: dict[int, np.ndarray], image_id: str) -> Iterator[dict[str, Any]]:
    for label, xy in outlines.items():
        ring = [[round(float(x), 3), round(float(y), 3)] for x, y in xy]
        if ring[0] != ring[-1]:
            ring.append(ring[0])
        yield {"type": "Feature", "id": f"{image_id}#{label}",
               "geometry": {"type": "Polygon", "coordinates": [ring]},
               "properties": {"objectType": "detection", "name": f"nucleus {label}",
                              "classification": {"name": "Nucleus"}, "measurements": {"label": label}}}


def _write_imagej(outlines: dict[int, np.ndarray], path: Path) -> None:
    import roifile

    rois = [roifile.ImagejRoi.frompoints(xy[:-1] if len(xy) > 1 and np.array_equal(xy[0], xy[-1]) else xy,
                                         name=f"nucleus-{label:05d}")
            for label, xy in outlines.items()]
    path.unlink(missing_ok=True)
    if rois:
        roifile.roiwrite(path, rois)
    else:
        path.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip: Fiji opens it as no ROI
