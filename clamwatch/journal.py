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

from clamwatch.events import MESSAGE_IDS, EventHandler, LoggedEvent
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
            exc_info = record.exc_info
            exception = logging.Formatter().formatException(exc_info) if exc_info else None
            self.emit_event(LoggedEvent.of(record, exception))
        except Exception:
            self.handleError(record)

    def emit_event(self, event: LoggedEvent) -> None:
        # the journal stamps each entry with its own time
        fields: dict[str, str | bytes] = {
            "PRIORITY": str(priority(event.level)),
            "SYSLOG_IDENTIFIER": "clamwatch",
            "CLAMWATCH_LOGGER": event.logger,
        }
        if event.kind is not None:
            fields["MESSAGE_ID"] = MESSAGE_IDS[event.kind]
            fields["CLAMWATCH_EVENT"] = event.kind.value
        for key, value in event.fields.items():
            fields["CLAMWATCH_" + key.upper()] = _value(value)
        message = event.message
        if event.exception:
            message += "\n" + event.exception
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
