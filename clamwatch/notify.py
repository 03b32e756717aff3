"""sd_notify(3): READY, STATUS, RELOADING, STOPPING and WATCHDOG for systemd.

Without systemd (no NOTIFY_SOCKET) every call does nothing. An unreachable
NOTIFY_SOCKET raises OSError in python-systemd: it is logged once and
otherwise ignored, since systemd's own timeouts then tell the story.
"""

from __future__ import annotations

import logging
import os

from systemd import daemon

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._failed = False
        self.watchdog_interval: float | None = None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            # ping at half the period, as sd_watchdog_enabled(3) advises
            self.watchdog_interval = int(usec) / 1_000_000 / 2

    def send(self, **state: str) -> None:
        if not self.enabled:
            return
        text = "\n".join(f"{key}={value}" for key, value in state.items())
        try:
            daemon.notify(text)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd (NOTIFY_SOCKET): %s", exc)
            self._failed = True

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def reloading(self) -> None:
        self.send(RELOADING="1", STATUS="reloading the configuration")

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="stopping: finishing the scans in flight")

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")
