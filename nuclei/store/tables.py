"""Tables of a whole store, as labs open them next: one row per nucleus (CellProfiler's habit), one per image.

Rows stream entry by entry (one entry's measurements in memory at a time), so stores of 10^5 images export in
constant memory; CSV always, Parquet when pyarrow is installed (by the file's suffix). The nucleus table is the
measurements each entry stores (`nuclei.core.measure.COLUMNS`, units in the names), read as written: the
export computes nothing, so it shows what `nuclei view` and the query API show. A micrometre column is empty
where the image's pixel size is unknown (no unit is made up).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nuclei.core.measure import COLUMN_NAMES, INTEGER_COLUMNS
from nuclei.core.text import spreadsheet_cell
from nuclei.errors import StoreError
from nuclei.store.backend import Store

NUCLEUS_COLUMNS = ["image_id", *COLUMN_NAMES]
IMAGE_COLUMNS = ["image_id", "source", "n_nuclei", "covered_fraction", "mean_area", "height", "width",
                 "channel", "channel_name", "z", "pixel_size_um", "model_version", "precision", "written"]
BATCH_ROWS = 10_000  # rows per Parquet row group
# Entries written before the columns carried units: the same values under their new names (mean_intensity was on
# a 0..1 scale, not the file's units, so it has no new name and is left out).
_RENAMED = {"area": "area_px", "centroid_y": "centroid_y_px", "centroid_x": "centroid_x_px",
            **{f"bbox_{e}_{a}": f"bbox_{e}_{a}_px" for e in ("min", "max") for a in "yx"}}


def nucleus_rows(store: Store) -> Iterator[dict[str, Any]]:
    """One row per nucleus of every complete entry, image by image in id order (only the measurements are read,
    never images or labels)."""
    for record in store.iter_records():
        image_id = record.id
        columns, table = store.open_entry(image_id, record).measurements()
        columns = [_RENAMED.get(name, name) for name in columns]
        for values in table:
            row: dict[str, Any] = dict.fromkeys(NUCLEUS_COLUMNS)  # an older entry's missing columns stay empty
            row["image_id"] = image_id
            row.update({name: cell(name, value) for name, value in zip(columns, values, strict=True)
                        if name in row})
            yield row


def cell(name: str, value: float) -> int | float | None:
    """A stored value as a table shows it: whole-number columns as int, NaN (unknown) as empty."""
    if math.isnan(value):
        return None
    return int(value) if name in INTEGER_COLUMNS else float(value)


def image_rows(store: Store) -> Iterator[dict[str, Any]]:
    """One row per complete entry, from the records alone (no arrays read)."""
    for record in store.iter_records():
        yield {"image_id": record.id, "source": record.source, "n_nuclei": record.n_nuclei,
               "covered_fraction": record.covered_fraction, "mean_area": record.mean_area,
               "height": record.shape[0], "width": record.shape[1], "channel": record.channel,
               "channel_name": record.channel_name, "z": record.z, "pixel_size_um": record.pixel_size_um,
               "model_version": record.model.version, "precision": record.model.precision,
               "written": record.written}


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
        for row in rows:  # file names become cells: none may start a spreadsheet formula
            writer.writerow({k: spreadsheet_cell(v) for k, v in row.items()})
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
    table = table.select(columns)
    if writer is None:  # a column empty throughout the first batch (no pixel size) is float, not "null"
        schema = pa.schema([pa.field(f.name, pa.float64()) if pa.types.is_null(f.type) else f for f in table.schema])
        table = table.cast(schema)
        writer = pq.ParquetWriter(str(path), schema)
    writer.write_table(table)
    return writer
