"""A quarantine entry's record: what was quarantined, from where, and why.

Each entry is a data file ``<id>`` and this record ``<id>.json`` beside it.
A name may hold any byte but ``/`` and NUL, so the original path is kept as
its exact bytes in ``original_path_b64``; ``original_path`` is the same name
as text (bytes that are not UTF-8 written ``\\xe9``) for people reading the
file. Records are written atomically (a temporary file, fsync, rename, fsync
of the directory), so a crash leaves either no record or a whole one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

from clamwatch.durable import replace_file

RECORD_VERSION = 1
HOW = ("moved", "copied")

# 20261125T095900Z-3f9a1c2b: the UTC second of detection, so ids sort by
# time, and 32 random bits so that entries of one second do not collide
# (and a collision is only ever a retry: names are created O_EXCL).
_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")

T = TypeVar("T")


def new_entry_id(detected_at: float) -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(detected_at))}-{secrets.token_hex(4)}"


def is_entry_id(text: str) -> bool:
    """Whether ``text`` has the form of an id: anything else (``../x``) is never a path."""
    return _ID.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    id: str
    original_path: str  # os.fsdecode form: lone surrogates stand for bytes that are not UTF-8
    watch: str
    signature: str
    clamd_version: str | None
    detected_at: float  # epoch seconds
    owner: int
    group: int
    mode: int  # the full st_mode
    size: int
    mtime_ns: int
    sha256: str
    dev: int  # the original's identity, so one version is never quarantined twice
    ino: int
    how: str  # "moved" or "copied"

    def to_json(self) -> dict[str, object]:
        raw = os.fsencode(self.original_path)
        # every field is a str, a number or None: no deep copy (dataclasses.asdict) needed
        data: dict[str, object] = {"version": RECORD_VERSION}
        for name in _FIELD_NAMES:
            data[name] = getattr(self, name)
        data["original_path"] = raw.decode("utf-8", "backslashreplace")
        data["original_path_b64"] = base64.b64encode(raw).decode("ascii")
        return data

    @classmethod
    def from_json(cls, data: object) -> QuarantineRecord:
        """Raises ValueError naming the field that is missing or malformed."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"not a clamwatch quarantine record of version {RECORD_VERSION}")
        try:
            raw = base64.b64decode(_get(data, "original_path_b64", str), validate=True)
        except ValueError as exc:
            raise ValueError(f"original_path_b64: not base64 ({exc})") from exc
        entry_id = _get(data, "id", str)
        how = _get(data, "how", str)
        if not is_entry_id(entry_id):
            raise ValueError(f"id: {entry_id!r} is not a quarantine entry id")
        if how not in HOW:
            raise ValueError(f"how: expected one of {', '.join(HOW)}")
        clamd_version = data.get("clamd_version")
        if clamd_version is not None and not isinstance(clamd_version, str):
            raise ValueError("clamd_version: expected a string or null")
        return cls(
            id=entry_id,
            original_path=os.fsdecode(raw),
            watch=_get(data, "watch", str),
            signature=_get(data, "signature", str),
            clamd_version=clamd_version,
            detected_at=float(_get(data, "detected_at", (int, float))),
            owner=_get(data, "owner", int),
            group=_get(data, "group", int),
            mode=_get(data, "mode", int),
            size=_get(data, "size", int),
            mtime_ns=_get(data, "mtime_ns", int),
            sha256=_get(data, "sha256", str),
            dev=_get(data, "dev", int),
            ino=_get(data, "ino", int),
            how=how,
        )


_FIELD_NAMES = tuple(field.name for field in fields(QuarantineRecord))


def _get(data: Mapping[str, object], name: str, kind: type[T] | tuple[type[T], ...]) -> T:
    value = data.get(name)
    # bool is an int to isinstance, never a valid number here
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{name}: missing or of the wrong type")
    return value


def record_path(directory: Path, entry_id: str) -> Path:
    return directory / f"{entry_id}.json"


def read_record(directory: Path, entry_id: str) -> QuarantineRecord:
    """OSError when it cannot be read, ValueError when it is not a valid record."""
    with record_path(directory, entry_id).open(encoding="utf-8") as handle:
        record = QuarantineRecord.from_json(json.load(handle))
    if record.id != entry_id:
        raise ValueError(f"id: the record is of {record.id}")
    return record


def write_record(directory: Path, record: QuarantineRecord) -> None:
    """Write (or replace) ``<id>.json`` atomically and durably."""
    text = json.dumps(record.to_json(), indent=2) + "\n"
    replace_file(record_path(directory, record.id), text, prefix=f".{record.id}.", suffix=".tmp")
