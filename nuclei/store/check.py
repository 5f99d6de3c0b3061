"""`nuclei check`: verify that every visible entry of a store is whole and says what its arrays hold.

An entry is damaged when its arrays cannot be read (corrupt chunks), their content differs from the hashes its
record was written with (a lost chunk reads as zeros: its content changed), or its counts disagree (labels,
mask, measurements, record). Records hash every array: level 0's image and labels whole, and, by their paths,
the mask, every pyramid level and the measurements a chunk at a time (`backend.content_sha256`). Records
written before those path hashes are checked as they were, and their measurements by content: the label column
must be 1..N. Index records
that do not parse are damaged too, and any other file in index/ is a stray: a record in a file not named for its
id (a sync tool's conflict copy, a backup, a hand-edited id) or not a record at all; it is never served. `repair`
hides damaged entries, deletes unreadable records and moves strays to STORE/aside/index/, so the next run
segments those images again; nothing else is touched. An entry a run is writing is reported as being
written, never as damaged: `check` and `repair` take each suspect entry's writer lock (`locks/KEY.lock`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nuclei.errors import StoreError
from nuclei.store.backend import Store, array_sha256, changed_arrays
from nuclei.store.index import key_to_id
from nuclei.store.record import EntryRecord
from nuclei.store.slide import slide_problem, unreadable

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """What `check` found: entries checked, damaged entries (id -> reason) and unreadable record files."""

    checked: int = 0
    damaged: dict[str, str] = field(default_factory=dict)
    unreadable_records: list[str] = field(default_factory=list)
    being_written: list[str] = field(default_factory=list)  # a run holds their lock: not judged, not touched
    stray_files: dict[str, str] = field(default_factory=dict)  # index files that are no entry's record -> why
    moved_aside: dict[str, str] = field(default_factory=dict)  # by repair: stray file -> where it went

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.unreadable_records and not self.stray_files


def entry_problem(store: Store, record: EntryRecord) -> str | None:
    """Why this entry cannot be trusted, or None."""
    if (record.model_extra or {}).get("slide"):  # read a block at a time: a slide never whole in memory
        return slide_problem(store, record)
    try:
        entry = store.open_entry(record.id, record)
        labels, mask, image = entry.labels(), entry.mask(), entry.image()
        columns, table = entry.measurements()
        changed = changed_arrays(entry.array, record.arrays_sha256)
    except Exception as exc:  # noqa: BLE001 - a codec error, a missing array: all mean "damaged"
        return unreadable(exc)
    sums = record.arrays_sha256
    if sums.get("labels") and array_sha256(labels) != sums["labels"]:
        return "labels differ from what was written (missing or changed chunks)"
    as_read = {array_sha256(image), array_sha256(image[..., 0])} if image.shape[-1] == 1 else {array_sha256(image)}
    if sums.get("image") and sums["image"] not in as_read:
        return "image differs from what was written (missing or changed chunks)"
    if changed:
        return f"{changed} differs from what was written (missing or changed chunks)"
    if int(labels.max(initial=0)) != record.n_nuclei or table.shape[0] != record.n_nuclei:
        return (f"counts disagree: record {record.n_nuclei} nuclei, labels up to {int(labels.max(initial=0))}, "
                f"{table.shape[0]} measurement rows")
    if not np.array_equal(mask > 0, labels > 0):
        return "mask and labels disagree"
    if "label" not in columns:
        return "measurements have no label column"
    if not np.array_equal(table[:, columns.index("label")], np.arange(1, record.n_nuclei + 1)):
        return "measurements' label column is not 1..N (missing or changed chunks)"
    return None


def check(store_path: str | Path, repair: bool = False) -> CheckReport:
    """Check every visible entry and every index record of a store; with ``repair``, hide the damaged entries
    and delete the unreadable records.

    An entry found wrong is checked again under its writer's lock before it is called damaged: a run that is
    rewriting it (record removed, arrays half replaced) makes it look damaged for a moment. While a writer
    holds the lock the entry is "being written", never damaged, and repair leaves it alone, so repair can
    never race a run."""
    store = Store(store_path, "a" if repair else "r")
    scan = store.scan()
    report = CheckReport(checked=len(scan.records))
    for image_id, record in scan.records.items():
        if entry_problem(store, record) is not None:
            _settle(store, image_id, report, repair)
    for path in scan.damaged:
        _settle_record_file(store, path, report, repair)
    report.stray_files = dict(scan.strays)
    if repair:  # no writer writes these (a run's own record in flight is never a stray): no lock to take
        for path in scan.strays:
            report.moved_aside[path] = store.move_aside(path)
            log.warning("moved stray index file %s aside to %s", path, report.moved_aside[path])
    return report


def _settle(store: Store, image_id: str, report: CheckReport, repair: bool) -> None:
    """Decide about an entry that looked wrong, under its lock: being written, fine after all, or damaged."""
    with store.unless_being_written(image_id) as free:
        if not free:
            report.being_written.append(image_id)
            return
        record = store.record(image_id)  # as it is now that no one writes it
        problem = entry_problem(store, record) if record is not None else None
        if problem is None:
            return
        report.damaged[image_id] = problem
        if repair:
            store.hide(image_id)
            log.warning("hid damaged entry %s", image_id)


def _settle_record_file(store: Store, path: str, report: CheckReport, repair: bool) -> None:
    """An index file that did not parse: damaged unless its entry's writer holds the lock (a store written
    before records were replaced atomically, or an object store, may show a record mid-write)."""
    key = Path(path).name.removesuffix(".json")
    try:
        image_id = key_to_id(key)
    except StoreError:  # not a name this store writes: nobody can be writing it
        image_id = None
    with contextlib.ExitStack() as held:
        if image_id is not None and not held.enter_context(store.unless_being_written(image_id)):
            report.being_written.append(image_id)
            return
        if not store.fs.exists(path):
            return
        try:
            if EntryRecord.model_validate_json(store.fs.cat_file(path)):
                return  # rewritten meanwhile: readable now
        except ValueError:
            pass
        report.unreadable_records.append(path)
        if repair:
            store.remove_record_file(path)
            log.warning("removed unreadable record %s", path)


def repair(store_path: str | Path, report: CheckReport | None = None) -> CheckReport:
    """Check again and repair under each entry's lock (a report from an earlier `check` may be stale: an entry
    it found damaged may have been rewritten since)."""
    return check(store_path, repair=True)
