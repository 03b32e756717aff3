"""The kinds of event the daemon reports, and :func:`emit`, which reports one.

Apart from :mod:`clamwatch.events` (the formatters and handlers) so that the
clamd engine, which `clamwatch scan` imports, can report clamd lost and back
without importing :mod:`logging` on every scan (see lazylog.py): the events
module is imported only when an event is to be logged.
"""

from __future__ import annotations

import enum

from clamwatch import lazylog

_log = lazylog.Logger("clamwatch.events")  # the logger clamwatch.events logs on


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
    QUEUE_FULL = "queue-full"  # max_pending files wait; further ones are kept by directory
    QUEUE_CAUGHT_UP = "queue-caught-up"  # every directory kept while full has been walked
    WATCH_WAITING = "watch-waiting"  # a watch root does not exist (yet)
    WATCH_ARMED = "watch-armed"  # a watch root is watched
    WATCH_FAILED = "watch-failed"  # a watch could not be set up
    READ_ONLY = "read-only"  # a folder the actions must change is on a read-only mount
    CONFIG_RELOADED = "config-reloaded"  # SIGHUP: the new configuration is in force
    CONFIG_REJECTED = "config-rejected"  # SIGHUP: the new configuration is invalid; the old runs on
    STOPPING = "stopping"  # SIGTERM/SIGINT: draining
    STOPPED = "stopped"  # drained and saved what was pending
    STOPPED_UNSAVED = "stopped-unsaved"  # drained, but what was pending could not be saved


def emit(kind: EventKind, message: str, level: int = lazylog.INFO, **fields: object) -> None:
    """Log one event; ``fields`` hold its facts (None values are left out)."""
    if _log.isEnabledFor(level):
        from clamwatch.events import log_event

        log_event(kind, message, level, {k: v for k, v in fields.items() if v is not None})
