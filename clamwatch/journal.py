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

from clamwatch.events import MESSAGE_IDS, EventKind
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


class JournalHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, str | bytes] = {
                "PRIORITY": str(priority(record.levelno)),
                "SYSLOG_IDENTIFIER": "clamwatch",
                "CLAMWATCH_LOGGER": record.name,
            }
            kind = getattr(record, "event", None)
            if isinstance(kind, EventKind):
                fields["MESSAGE_ID"] = MESSAGE_IDS[kind]
                fields["CLAMWATCH_EVENT"] = kind.value
            extra = getattr(record, "fields", None)
            if isinstance(extra, dict):
                for key, value in extra.items():
                    fields["CLAMWATCH_" + key.upper()] = _value(value)
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            journal.send(message, **fields)
        except Exception:
            self.handleError(record)


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
