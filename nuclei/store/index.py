"""The index's files as read: an entry's id and its record file's name, a record parsed from its bytes, what a
writer has in flight, and why a record file is not its entry's. Shared by the store (`backend`) and its cached
index (`catalog`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from nuclei.errors import StoreError
from nuclei.store.record import EntryRecord

log = logging.getLogger(__name__)


def parse_record(blob: bytes, path: str) -> EntryRecord | None:
    """The record in ``blob``, or None (logged) when it is empty, truncated or not a valid record."""
    try:
        return EntryRecord.model_validate_json(blob)
    except ValueError as exc:  # pydantic's ValidationError (bad JSON included) is a ValueError
        log.warning("damaged index record %s: %s", path, str(exc).splitlines()[0])
        return None


def validate_id(image_id: str) -> str:
    """An id is a relative POSIX path without '..', '.', empty or absolute parts: it can never escape."""
    parts = image_id.split("/")
    if not image_id or image_id.startswith("/") or "\\" in image_id or "\x00" in image_id or any(
        part in ("", ".", "..") for part in parts
    ):
        raise StoreError(f"invalid image id {image_id!r}: must be a relative path without '..' or '.' parts")
    return image_id


def id_to_key(image_id: str) -> str:
    """One safe path segment per id ('/' and every special character percent-encoded)."""
    return quote(validate_id(image_id), safe="")


def key_to_id(key: str) -> str:
    return validate_id(unquote(key))


@dataclass(frozen=True)
class IndexScan:
    """The index as read once: complete entries' records by id, the record files that do not parse, and stray
    files (path -> why): anything else in index/, records in a file not named for their id included."""

    records: dict[str, EntryRecord] = field(default_factory=dict)
    damaged: list[str] = field(default_factory=list)
    strays: dict[str, str] = field(default_factory=dict)


def in_flight(name: str) -> bool:
    """A record a writer is replacing right now: `durable.write_atomically`'s KEY.json.<uuid hex>.tmp."""
    stem, _, tmp = name.rpartition(".")
    return tmp == "tmp" and stem.rpartition(".")[0].endswith(".json")


def stray_reason(record: EntryRecord, name: str) -> str | None:
    """Why a record read from index/NAME is not its entry's record (None when NAME is its id's file): a copy
    under another name (a sync tool's conflict copy, a backup) or an id that is no valid id (hand-edited)."""
    try:
        key = id_to_key(record.id)
    except StoreError:
        return f"holds a record with the invalid id {record.id!r}"
    if name != f"{key}.json":
        return (f"holds a record of {record.id!r}, whose record is {key}.json: a copy (a sync tool's conflict "
                "copy, a backup), never served")
    return None
