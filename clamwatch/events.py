"""Every notable thing the daemon does, as a structured log event.

Events go through :mod:`logging` with two extras, ``event`` (an
:class:`EventKind`) and ``fields`` (lower-case names: path, verdict,
signature, action, latency_ms, watch, ...). The formatters below print them
as a line of text or as one JSON object; a journald handler maps the same
fields to CLAMWATCH_* journal fields. Only the daemon's setup installs
handlers (style.md).

A burst reports thousands of verdicts a second on two CPUs shared with clamd,
so the path of one event is kept short: no caller lookup, no copy of its
fields, one JSON encoder made once, the timestamp's seconds formatted once a
second, and (:func:`held_back`) the lines of a round of verdicts written to
the stream together.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import TextIO

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
    if log.isEnabledFor(level):
        _log_event(kind, message, level, {k: v for k, v in fields.items() if v is not None})


def emit_fields(kind: EventKind, message: str, level: int, fields: dict[str, object]) -> None:
    """:func:`emit` for a dict of fields the caller gives away: none may be None."""
    if log.isEnabledFor(level):
        _log_event(kind, message, level, fields)


def _log_event(kind: EventKind, message: str, level: int, fields: dict[str, object]) -> None:
    # Logger.log would also look up the caller's frame (findCaller), which no
    # handler of events uses, and copy ``extra`` key by key.
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None, "emit")
    record.event = kind
    record.fields = fields
    log.handle(record)


def _fields(record: logging.LogRecord) -> Mapping[str, object]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _jsonable(value: object) -> object:
    if type(value) in _PLAIN or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    return str(value)


# json.dumps(..., ensure_ascii=False) builds a new encoder for every call
_ENCODER = json.JSONEncoder(ensure_ascii=False)


class _Seconds:
    """``2026-11-25T09:59:00``, formatted once per second of the clock."""

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        cached = self._cached  # one read: another thread may replace it
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._cached = cached
        return cached[1]


class TextFormatter(logging.Formatter):
    """``clamwatch[LEVEL]: message``: what an admin reads on a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"clamwatch[{record.levelname.lower()}]: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per event, with the fields the journal will carry."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds()

    def format(self, record: logging.LogRecord) -> str:
        kind = getattr(record, "event", None)
        data: dict[str, object] = {
            "time": f"{self._seconds(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": kind.value if isinstance(kind, EventKind) else "log",
            "message": record.getMessage(),
            "logger": record.name,
        }
        for key, value in _fields(record).items():
            data[key] = value if type(value) in _PLAIN else _jsonable(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(data)


_holding = threading.local()  # .depth: held_back() blocks this thread is inside
_held_handlers: weakref.WeakSet[EventStreamHandler] = weakref.WeakSet()


@contextlib.contextmanager
def held_back() -> Iterator[None]:
    """Lines this thread logs inside are written to the stream together at the end.

    For a round of verdicts: one write (and one wake-up of whoever reads the
    stream) instead of one per line. Keep the block short: nothing in it is
    seen before it ends.
    """
    _holding.depth = getattr(_holding, "depth", 0) + 1
    try:
        yield
    finally:
        _holding.depth -= 1
        if not _holding.depth:
            for handler in list(_held_handlers):
                handler.flush()


class EventStreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that holds lines back inside :func:`held_back`."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        _held_handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        # handle() holds self.lock around emit()
        self._lines.append(line)
        if not getattr(_holding, "depth", 0):
            self._write()

    def flush(self) -> None:
        with self.lock if self.lock is not None else contextlib.nullcontext():
            self._write()

    def _write(self) -> None:
        if not self._lines:
            with contextlib.suppress(AttributeError, ValueError):
                self.stream.flush()
            return
        text = "".join(self._lines)
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # as StreamHandler.emit: say so on stderr, never raise
            self.handleError(logging.makeLogRecord({"msg": text.rstrip("\n")}))


def shown(path: str) -> str:
    """A path as it appears inside an event message."""
    return display_path(path)
