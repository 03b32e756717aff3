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


def _value(value: object) -> bytes:
    """A field's value as the journal takes it: a name that is not UTF-8 as its exact bytes."""
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "surrogateescape")


class JournalHandler(EventHandler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_info = record.exc_info
            exception = logging.Formatter().formatException(exc_info) if exc_info else None
            event = LoggedEvent.of(record, exception)
            code = (
                (
                    "CODE_FILE=" + record.pathname,
                    f"CODE_LINE={record.lineno:d}",
                    "CODE_FUNC=" + record.funcName,
                )
                if event.kind is None
                else ()  # an event's record is made by events.log_event, not by a call to name
            )
            self._send(event, code)
        except Exception:
            self.handleError(record)

    def emit_event(self, event: LoggedEvent) -> None:
        self._send(event, ())

    def _send(self, event: LoggedEvent, code: tuple[str, ...]) -> None:
        """One journal entry; ``code``: the CODE_* fields of a logging call, if it was one.

        journal.send() would fill CODE_FILE, CODE_LINE and CODE_FUNC itself
        from a traceback.extract_stack() of every call, and name this method
        each time: against a private journald an entry took 21-36 us of CPU
        that way, 13-14 us this way (measured). An event (a verdict, an
        action) has no line of code to name; a message logged through
        logging names the call that logged it.
        """
        message = event.message
        if event.exception:
            message += "\n" + event.exception
        # the journal stamps each entry with its own time
        lines: list[str | bytes] = [
            "MESSAGE=" + message,
            f"PRIORITY={priority(event.level):d}",
            "SYSLOG_IDENTIFIER=clamwatch",
            "CLAMWATCH_LOGGER=" + event.logger,
            *code,
        ]
        if event.kind is not None:
            lines.append("MESSAGE_ID=" + MESSAGE_IDS[event.kind])
            lines.append("CLAMWATCH_EVENT=" + event.kind.value)
        for key, value in event.fields.items():
            lines.append(b"CLAMWATCH_" + key.upper().encode("ascii") + b"=" + _value(value))
        journal.sendv(*lines)


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
