"""Events into the systemd journal, with structured fields.

Each event's fields become CLAMWATCH_* journal fields (CLAMWATCH_PATH,
CLAMWATCH_VERDICT, CLAMWATCH_SIGNATURE, CLAMWATCH_ACTION, ...), its kind a
fixed MESSAGE_ID, its level a syslog PRIORITY: ``journalctl
MESSAGE_ID=fea0b3cbc179463c9ee89aedcc28d914`` lists every detection,
``journalctl CLAMWATCH_PATH=/srv/uploads/x`` everything about one file.
Names that are not UTF-8 go in as their exact bytes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from clamwatch.events import MESSAGE_IDS, EventHandler, EventKind, log
from systemd import journal

_PRIORITY = {  # syslog(3) priorities
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def priority(level: int) -> int:
    for threshold in sorted(_PRIORITY, reverse=True):
        if level >= threshold:
            return _PRIORITY[threshold]
    return 7


def _value(value: object) -> str | bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return str(value)


class JournalHandler(EventHandler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            kind = getattr(record, "event", None)
            extra = getattr(record, "fields", None)
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._send(
                message,
                record.levelno,
                record.name,
                kind if isinstance(kind, EventKind) else None,
                extra if isinstance(extra, dict) else {},
            )
        except Exception:
            self.handleError(record)

    def emit_event(
        self,
        kind: EventKind,
        message: str,
        level: int,
        fields: Mapping[str, object],
        created: float,
    ) -> None:
        # the journal stamps the entry itself, as it does for emit()'s
        self._send(message, level, log.name, kind, fields)

    def _send(
        self,
        message: str,
        level: int,
        logger: str,
        kind: EventKind | None,
        extra: Mapping[str, object],
    ) -> None:
        fields: dict[str, str | bytes] = {
            "PRIORITY": str(priority(level)),
            "SYSLOG_IDENTIFIER": "clamwatch",
            "CLAMWATCH_LOGGER": logger,
        }
        if kind is not None:
            fields["MESSAGE_ID"] = MESSAGE_IDS[kind]
            fields["CLAMWATCH_EVENT"] = kind.value
        for key, value in extra.items():
            fields["CLAMWATCH_" + key.upper()] = _value(value)
        journal.send(message, **fields)


def stderr_is_journal() -> bool:
    """systemd connected our stderr to the journal (JOURNAL_STREAM, systemd.exec(5))."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))
