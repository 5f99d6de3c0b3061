"""`nuclei check`: verify that every visible entry of a store is whole and says what its arrays hold.

An entry is damaged when its arrays cannot be read (missing or corrupt chunks), their content differs from the
hashes its record was written with, or its counts disagree (labels, mask, measurements, record). Index records
that do not parse are damaged too. `repair` hides damaged entries and deletes unreadable records, so the next
run segments those images again; nothing else is touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nuclei.store.backend import Store, array_sha256
from nuclei.store.record import EntryRecord

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """What `check` found: entries checked, damaged entries (id -> reason) and unreadable record files."""

    checked: int = 0
    damaged: dict[str, str] = field(default_factory=dict)
    unreadable_records: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.unreadable_records


def entry_problem(store: Store, record: EntryRecord) -> str | None:
    """Why this entry cannot be trusted, or None."""
    try:
        labels = store.read_labels(record.id)
        mask = store.read_mask(record.id)
        image = store.read_image(record.id)
        columns, table = store.read_measurements(record.id)
    except Exception as exc:  # noqa: BLE001 - a codec error, a missing array: all mean "damaged"
        return f"arrays unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    sums = record.arrays_sha256
    if sums.get("labels") and array_sha256(labels) != sums["labels"]:
        return "labels differ from what was written (missing or changed chunks)"
    as_read = {array_sha256(image), array_sha256(image[..., 0])} if image.shape[-1] == 1 else {array_sha256(image)}
    if sums.get("image") and sums["image"] not in as_read:
        return "image differs from what was written (missing or changed chunks)"
    if int(labels.max(initial=0)) != record.n_nuclei or table.shape[0] != record.n_nuclei:
        return (f"counts disagree: record {record.n_nuclei} nuclei, labels up to {int(labels.max(initial=0))}, "
                f"{table.shape[0]} measurement rows")
    if not np.array_equal(mask > 0, labels > 0):
        return "mask and labels disagree"
    if "label" not in columns:
        return "measurements have no label column"
    return None


def check(store_path: str | Path) -> CheckReport:
    """Check every visible entry and every index record of a store."""
    store = Store(store_path, "r")
    records = store.records()
    report = CheckReport(checked=len(records), unreadable_records=list(store.damaged))
    for image_id, record in records.items():
        problem = entry_problem(store, record)
        if problem:
            report.damaged[image_id] = problem
    return report


def repair(store_path: str | Path, report: CheckReport) -> None:
    """Hide damaged entries and delete unreadable index records: the next run segments them again."""
    store = Store(store_path, "a")
    for image_id in report.damaged:
        store.hide(image_id)
        log.warning("hid damaged entry %s", image_id)
    for path in report.unreadable_records:
        store.remove_record_file(path)
        log.warning("removed unreadable record %s", path)
