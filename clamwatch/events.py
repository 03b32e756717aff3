"""Every notable thing the daemon does, as a structured log event.

Events go through :mod:`logging` with two extras, ``event`` (an
:class:`EventKind`) and ``fields`` (lower-case names: path, verdict,
signature, action, latency_ms, watch, ...). The formatters below print them
as a line of text or as one JSON object; a journald handler maps the same
fields to CLAMWATCH_* journal fields. Only the daemon's setup installs
handlers (style.md).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import time
from collections.abc import Mapping

from clamwatch.names import display_path

log = logging.getLogger("clamwatch.events")


class EventKind(enum.Enum):
    STARTED = "started"  # the daemon is starting
    READY = "ready"  # config loaded, clamd answered, watches armed
    CLEAN = "clean"  # a file was scanned and is clean
    DETECTION = "detection"  # a file is infected
    NOT_SCANNED = "not-scanned"  # a file was not scanned (too large, symlink, ...)
    SCAN_ERROR = "scan-error"  # scanning failed after retries
    ACTION_DONE = "action-done"  # a file was moved, copied, removed, released, tagged; a hook ran
    ACTION_FAILED = "action-failed"  # an action could not be done (the file stays as it was)
    CLAMD_LOST = "clamd-lost"  # clamd became unreachable
    CLAMD_BACK = "clamd-back"  # clamd answers again
    OVERFLOW_RESCAN = "overflow-rescan"  # events were lost; trees are walked again
    WATCH_WAITING = "watch-waiting"  # a watch root does not exist (yet)
    WATCH_ARMED = "watch-armed"  # a watch root is watched
    WATCH_FAILED = "watch-failed"  # a watch could not be set up
    CONFIG_RELOADED = "config-reloaded"  # SIGHUP: the new configuration is in force
    CONFIG_REJECTED = "config-rejected"  # SIGHUP: the new configuration is invalid; the old runs on
    STOPPING = "stopping"  # SIGTERM/SIGINT: draining
    STOPPED = "stopped"  # drained and saved what was pending


#: A fixed MESSAGE_ID per kind, so ``journalctl MESSAGE_ID=...`` finds every
#: event of a kind; packaging/clamwatch.catalog explains each for journalctl -x.
MESSAGE_IDS: dict[EventKind, str] = {
    EventKind.STARTED: "69d1b44ec6484f63a7b64979fcc7cfa4",
    EventKind.READY: "db305df8e7c94962aa51fb1d77468080",
    EventKind.CLEAN: "3f831124fd1d48d38c59a0258ddab4fb",
    EventKind.DETECTION: "fea0b3cbc179463c9ee89aedcc28d914",
    EventKind.NOT_SCANNED: "a0b5532d04db4d7680a06cd7e3a61fb0",
    EventKind.SCAN_ERROR: "267ad5522bc74e3381e9f38e63850822",
    EventKind.ACTION_DONE: "ce60f0bddb5a4d9199f7e1573dbfc395",
    EventKind.ACTION_FAILED: "0dbd1abdd5ed484ebca53e28291e8613",
    EventKind.CLAMD_LOST: "7044bf8992a244d08b3ee71ddb862ddb",
    EventKind.CLAMD_BACK: "d91dbea37eae4950b39e594d89d92d19",
    EventKind.OVERFLOW_RESCAN: "f3b362dc54ee4c43bf9f7b08180c55c7",
    EventKind.WATCH_WAITING: "101d0b18b3654c759bb3d942118e386b",
    EventKind.WATCH_ARMED: "46bb3fd4f5054784b0cd5c5ce9dc605a",
    EventKind.WATCH_FAILED: "5849fdf14732424bbafae5d4cd23f453",
    EventKind.CONFIG_RELOADED: "00622b605ec64c7baccbb409d10dd668",
    EventKind.CONFIG_REJECTED: "4e6f988480ea4f1db9c4090982ab893a",
    EventKind.STOPPING: "a18538ea34604b7faed0e77b20e8115c",
    EventKind.STOPPED: "537ac23b5df1415a99c1c2474fd35b12",
}


def emit(kind: EventKind, message: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one event; ``fields`` hold its facts (None values are left out)."""
    log.log(
        level,
        message,
        extra={"event": kind, "fields": {k: v for k, v in fields.items() if v is not None}},
    )


def _fields(record: logging.LogRecord) -> Mapping[str, object]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _jsonable(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    return str(value)


class TextFormatter(logging.Formatter):
    """``clamwatch[LEVEL]: message``: what an admin reads on a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"clamwatch[{record.levelname.lower()}]: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per event, with the fields the journal will carry."""

    def format(self, record: logging.LogRecord) -> str:
        kind = getattr(record, "event", None)
        data: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": kind.value if isinstance(kind, EventKind) else "log",
            "message": record.getMessage(),
            "logger": record.name,
        }
        for key, value in _fields(record).items():
            data[key] = _jsonable(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def shown(path: str) -> str:
    """A path as it appears inside an event message."""
    return display_path(path)
