"""The index's files as read: an entry's id and its record file's name, a record parsed from its bytes, what a
writer has in flight, and why a record file is not its entry's. Shared by the store (`backend`) and its cached
index (`catalog`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from pydantic import BaseModel

from nuclei.errors import StoreError
from nuclei.store.record import EntryRecord

log = logging.getLogger(__name__)


# A store's records repeat most of their values: the model, thresholds, normalisation, settings key and the set of
# field names pydantic keeps per instance. Held apart, a scan of 10^6 records took 5.5 KB a record (a listing of
# such a store peaked at 7-9 GB); equal parts are kept once. Records are frozen and nothing mutates their dicts.
_REPEATED = ("model", "thresholds", "normalization", "providers", "output_key", "dtype", "nuclei_version",
             "status", "axes")
_SHARED: dict[tuple[Any, ...], Any] = {}
SHARED_LIMIT = 100_000  # distinct parts kept (a store written by a few runs has tens); past it, start afresh


def _key(value: Any) -> Any:
    """A cheap hashable key of a record's part (parsed dicts keep their writer's order; equal writers, equal keys).
    Values carry their type: 1, 1.0 and True are equal in Python but not in a record's JSON."""
    if isinstance(value, dict):
        return tuple((k, type(v), v) for k, v in value.items())
    if isinstance(value, list):
        return tuple((type(v), v) for v in value)
    if isinstance(value, BaseModel):
        return (type(value), _key(value.__dict__), _key(value.__pydantic_extra__ or {}))
    return value


def _compact(record: EntryRecord) -> EntryRecord:
    """``record`` with its repeated parts shared with the records parsed before it (same values, one object)."""
    if len(_SHARED) > SHARED_LIMIT:
        _SHARED.clear()
    values = record.__dict__
    try:
        for name in _REPEATED:
            values[name] = _SHARED.setdefault((name, _key(values[name])), values[name])
    except TypeError:  # an unhashable part (a newer writer's nested value): kept as parsed
        pass
    names = record.__pydantic_fields_set__
    object.__setattr__(record, "__pydantic_fields_set__", _SHARED.setdefault(("fields", frozenset(names)), names))
    return record


def parse_record(blob: bytes, path: str) -> EntryRecord | None:
    """The record in ``blob``, or None (logged) when it is empty, truncated or not a valid record."""
    try:
        return _compact(EntryRecord.model_validate_json(blob))
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
