"""Telling the admin when the dispatcher fills up, and when it has caught up.

With ``max_pending`` files waiting, the dispatcher remembers a further
file's directory instead of the file, and walks it again once there is
room (dispatch.py). Nothing is lost, but verdicts come later and the
directories are read twice. The admin hears of it once when it begins
(queue-full, a warning) and once when every remembered directory has been
walked (queue-caught-up), not once per file.
"""

from __future__ import annotations

import time

from clamwatch import lazylog
from clamwatch.dispatch import Dispatcher
from clamwatch.eventkind import EventKind, emit


class BacklogReport:
    """Looks at the dispatcher on each of the daemon's ticks (:meth:`check`)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._seen = 0  # dispatcher.degraded at the last look
        self._began: float | None = None  # monotonic time it filled; None while it has room
        self._before = 0  # dispatcher.degraded before it filled

    @property
    def full(self) -> bool:
        """Between a queue-full and its queue-caught-up."""
        return self._began is not None

    def check(self) -> None:
        degraded, left = self.dispatcher.backlog
        grew, self._seen, before = degraded > self._seen, degraded, self._seen
        if self._began is None:
            if grew:
                self._began, self._before = time.monotonic(), before
                limit = self.dispatcher.max_pending
                emit(
                    EventKind.QUEUE_FULL,
                    f"{limit} files wait to be scanned (max_pending): files that arrive now are"
                    " remembered by their directories, which are walked again as room frees",
                    lazylog.WARNING,
                    max_pending=limit,
                )
        elif not grew and not left:
            # a file can be turned away more than once (its event, then the
            # walk of its directory while still full): arrivals, not files
            turned_away = degraded - self._before
            seconds = time.monotonic() - self._began
            self._began = None
            emit(
                EventKind.QUEUE_CAUGHT_UP,
                f"the queue has room again: every directory remembered while it was full"
                f" ({turned_away} arrivals turned away) has been walked again,"
                f" {seconds:.0f} s after it filled",
                turned_away=turned_away,
                seconds=round(seconds, 1),
            )
