"""Tables of a whole store, as labs open them next: one row per nucleus (CellProfiler's habit), one per image.

Rows stream entry by entry (one image's arrays in memory at a time), so stores of 10^5 images export in
constant memory; CSV always, Parquet when pyarrow is installed (by the file's suffix). Shape features come from
scikit-image's regionprops_table; lengths and areas are in pixels, plus micrometres where the entry's pixel size
is known (empty otherwise: no unit is made up).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import regionprops_table

from nuclei.core.normalize import channel_mean
from nuclei.errors import StoreError
from nuclei.store.backend import Store
from nuclei.store.record import EntryRecord

# regionprops_table property -> our column names (its names of several columns are suffixed -0, -1, ...).
_PROPERTIES = {
    "label": ["label"], "area": ["area"], "centroid": ["centroid_y", "centroid_x"],
    "bbox": ["bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"], "intensity_mean": ["mean_intensity"],
    "eccentricity": ["eccentricity"], "solidity": ["solidity"], "axis_major_length": ["major_axis_length"],
    "axis_minor_length": ["minor_axis_length"], "perimeter": ["perimeter"],
}
NUCLEUS_COLUMNS = ["image_id", *(c for names in _PROPERTIES.values() for c in names),
                   "pixel_size_um", "area_um2", "centroid_y_um", "centroid_x_um", "perimeter_um"]
IMAGE_COLUMNS = ["image_id", "source", "n_nuclei", "covered_fraction", "mean_area", "height", "width",
                 "channel", "channel_name", "z", "pixel_size_um", "model_version", "precision", "written"]
BATCH_ROWS = 10_000  # rows per Parquet row group


def nucleus_rows(store: Store) -> Iterator[dict[str, Any]]:
    """One row per nucleus of every complete entry, image by image in id order."""
    for image_id, record in store.records().items():
        yield from _image_nuclei(store, image_id, record)


def _image_nuclei(store: Store, image_id: str, record: EntryRecord) -> Iterator[dict[str, Any]]:
    labels = store.read_labels(image_id).astype(np.int32)
    grey = channel_mean(store.read_image(image_id))  # scaled by the dtype's range, channels averaged
    table = regionprops_table(labels, intensity_image=grey, properties=list(_PROPERTIES))
    columns: dict[str, np.ndarray] = {}
    for prop, names in _PROPERTIES.items():
        for i, name in enumerate(names):
            columns[name] = table[prop if len(names) == 1 else f"{prop}-{i}"]
    size = record.pixel_size_um
    for i in range(len(columns["label"])):
        row: dict[str, Any] = {"image_id": image_id, **{k: _plain(v[i]) for k, v in columns.items()}}
        row.update(pixel_size_um=size, area_um2=row["area"] * size**2 if size else None,
                   centroid_y_um=row["centroid_y"] * size if size else None,
                   centroid_x_um=row["centroid_x"] * size if size else None,
                   perimeter_um=row["perimeter"] * size if size else None)
        yield row


def image_rows(store: Store) -> Iterator[dict[str, Any]]:
    """One row per complete entry, from the records alone (no arrays read)."""
    for record in store.records().values():
        yield {"image_id": record.id, "source": record.source, "n_nuclei": record.n_nuclei,
               "covered_fraction": record.covered_fraction, "mean_area": record.mean_area,
               "height": record.shape[0], "width": record.shape[1], "channel": record.channel,
               "channel_name": record.channel_name, "z": record.z, "pixel_size_um": record.pixel_size_um,
               "model_version": record.model.version, "precision": record.model.precision,
               "written": record.written}


def _plain(value: Any) -> int | float:
    return int(value) if isinstance(value, np.integer) else float(value)


def write_table(rows: Iterable[dict[str, Any]], columns: list[str], path: str | Path) -> int:
    """Write rows to ``path`` (.csv, or .parquet with pyarrow); returns the number of rows. Streams."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        return _write_parquet(rows, columns, path)
    if path.suffix.lower() != ".csv":
        raise StoreError(f"{path}: write .csv or .parquet")
    count = 0
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def _write_parquet(rows: Iterable[dict[str, Any]], columns: list[str], path: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise StoreError(f"{path}: Parquet needs pyarrow (pip install pyarrow), or write .csv") from exc
    count, batch, writer = 0, [], None
    try:
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH_ROWS:
                writer = _flush(pa, pq, batch, columns, path, writer)
                count, batch = count + len(batch), []
        if batch or writer is None:
            writer = _flush(pa, pq, batch, columns, path, writer)
            count += len(batch)
    finally:
        if writer is not None:
            writer.close()
    return count


def _flush(pa: Any, pq: Any, batch: list[dict[str, Any]], columns: list[str], path: Path, writer: Any) -> Any:
    table = pa.Table.from_pylist(batch, schema=writer.schema if writer else None) if batch else \
        pa.table({c: pa.array([], pa.float64()) for c in columns})
    if writer is None:
        writer = pq.ParquetWriter(str(path), table.select(columns).schema)
    writer.write_table(table.select(columns))
    return writer
