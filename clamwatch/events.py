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
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from typing import NamedTuple, TextIO

from clamwatch.eventkind import EventKind
from clamwatch.names import display_path, is_utf8

log = logging.getLogger("clamwatch.events")


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
    EventKind.QUEUE_FULL: "5e4f301b3f4546c0bfd007fbfa061880",
    EventKind.QUEUE_CAUGHT_UP: "a9e348f02d0e466cb7d3d5a880430391",
    EventKind.WATCH_WAITING: "101d0b18b3654c759bb3d942118e386b",
    EventKind.WATCH_ARMED: "46bb3fd4f5054784b0cd5c5ce9dc605a",
    EventKind.WATCH_FAILED: "5849fdf14732424bbafae5d4cd23f453",
    EventKind.READ_ONLY: "db351da57ab84b49aeb69e3ba57dcd0f",
    EventKind.CONFIG_RELOADED: "00622b605ec64c7baccbb409d10dd668",
    EventKind.CONFIG_REJECTED: "4e6f988480ea4f1db9c4090982ab893a",
    EventKind.STOPPING: "a18538ea34604b7faed0e77b20e8115c",
    EventKind.STOPPED: "537ac23b5df1415a99c1c2474fd35b12",
    EventKind.STOPPED_UNSAVED: "2a8d9adb0b6945828d6c120809cde285",
}


def emit_fields(kind: EventKind, message: str, level: int, fields: dict[str, object]) -> None:
    """:func:`clamwatch.eventkind.emit` for a dict of fields the caller gives away.

    None of them may be None. The daemon's verdicts come this way.
    """
    if log.isEnabledFor(level):
        log_event(kind, message, level, fields)


def log_event(kind: EventKind, message: str, level: int, fields: dict[str, object]) -> None:
    """Hand one event to the handlers (emit() and emit_fields() have checked its level)."""
    direct = _sole_event_handler(level)
    if direct is not None:
        direct.handle_event(LoggedEvent(time.time(), level, kind, message, fields))
        return
    # Logger.log would also look up the caller's frame (findCaller), which no
    # handler of events uses, and copy ``extra`` key by key.
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None, "emit")
    record.event = kind
    record.fields = fields
    log.handle(record)


class LoggedEvent(NamedTuple):
    """What the handlers of events read of one: an event's own parts, or a LogRecord's."""

    created: float  # time.time()
    level: int
    kind: EventKind | None  # None: a plain log message
    message: str
    fields: Mapping[str, object]
    logger: str = log.name
    exception: str | None = None  # a formatted traceback

    @classmethod
    def of(cls, record: logging.LogRecord, exception: str | None) -> LoggedEvent:
        kind = getattr(record, "event", None)
        fields = getattr(record, "fields", None)
        return cls(
            record.created,
            record.levelno,
            kind if isinstance(kind, EventKind) else None,
            record.getMessage(),
            fields if isinstance(fields, dict) else {},
            record.name,
            exception,
        )


class EventHandler(logging.Handler):
    """A handler that also takes events without a LogRecord (see _sole_event_handler)."""

    def handle_event(self, event: LoggedEvent) -> None:
        """Handle one event as handle() would handle its record; never raises."""
        with self.lock if self.lock is not None else contextlib.nullcontext():
            try:
                self.emit_event(event)
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": event.message}))

    def takes_events(self) -> bool:
        """Whether handle_event() does for an event all that handle() would do."""
        return True

    def emit_event(self, event: LoggedEvent) -> None:
        raise NotImplementedError


def _sole_event_handler(level: int) -> EventHandler | None:
    """The one handler an event would reach, when it can take the event without a record.

    That is the daemon's setup: one handler on the root logger. A verdict then
    skips making a LogRecord (the time, the thread, the process and a dozen
    attributes no event handler reads) and the handler's filter and format
    calls: half the cost of an event. Any other handler or filter in the way
    (a test's, a library's) and the event goes through logging as usual.
    """
    if log.filters or log.disabled:
        return None
    found: logging.Handler | None = None
    logger: logging.Logger | None = log
    while logger is not None:
        for handler in logger.handlers:
            if found is not None:
                return None
            found = handler
        logger = logger.parent if logger.propagate else None
    if (
        isinstance(found, EventHandler)
        and not found.filters
        and level >= found.level
        and found.takes_events()
    ):
        return found
    return None


def _as_text(value: object) -> object:
    """The JSON encoder's default: a value that is not str, int, float, bool or None."""
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    return str(value)


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


def _level_name(level: int) -> str:
    return logging.getLevelName(level).lower()


class EventFormatter(logging.Formatter):
    """A formatter that also formats an event without a LogRecord."""

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(LoggedEvent.of(record, exception))

    def line(self, event: LoggedEvent) -> str:
        raise NotImplementedError


class TextFormatter(EventFormatter):
    """``clamwatch[LEVEL]: message``: what an admin reads on a terminal."""

    def line(self, event: LoggedEvent) -> str:
        text = f"clamwatch[{_level_name(event.level)}]: {event.message}"
        if event.exception:
            text += "\n" + event.exception
        return text


class JsonFormatter(EventFormatter):
    """One JSON object per event, with the fields the journal will carry."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds()
        # Imported here, not with the module: `clamwatch scan` imports this
        # module and never formats JSON. Made once: json.dumps(...,
        # ensure_ascii=False) builds a new encoder for every call.
        import json

        self._encoder = json.JSONEncoder(ensure_ascii=False, default=_as_text)

    def line(self, event: LoggedEvent) -> str:
        created, kind = event.created, event.kind
        # milliseconds as LogRecord.msecs has them
        data: dict[str, object] = {
            "time": f"{self._seconds(created)}.{int((created - int(created)) * 1000):03d}Z",
            "level": _level_name(event.level),
            "event": kind.value if kind is not None else "log",
            "message": event.message,
            "logger": event.logger,
        }
        data.update(event.fields)  # a value JSON has no type for: the encoder's default
        for key, value in event.fields.items():
            if isinstance(value, str) and not value.isascii() and not is_utf8(value):
                # a name that is not UTF-8: its bytes as \xNN (a lone surrogate
                # would be no valid JSON), and exactly in KEY_b64
                import base64

                raw = os.fsencode(value)
                data[key] = raw.decode("utf-8", "backslashreplace")
                data[f"{key}_b64"] = base64.b64encode(raw).decode("ascii")
        if event.exception:
            data["exception"] = event.exception
        return self._encoder.encode(data)


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


class EventStreamHandler(logging.StreamHandler[TextIO], EventHandler):
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
        self._add(line)

    def takes_events(self) -> bool:
        return isinstance(self.formatter, EventFormatter)

    def emit_event(self, event: LoggedEvent) -> None:
        assert isinstance(self.formatter, EventFormatter)  # takes_events()
        self._add(self.formatter.line(event) + self.terminator)

    def _add(self, line: str) -> None:
        # handle() and handle_event() hold self.lock around emit()
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
