"""Loggers that import :mod:`logging` only when a message is to be logged.

`clamwatch scan` is timed against clamdscan, which starts in 4 ms, and a hook
may run it once per upload. Importing logging (with traceback, linecache,
tokenize, string and weakref) cost 4-6 ms of its start, and a scan that goes
well logs nothing. The modules on scan's path (the clamd engine, the scan
command) log through a :class:`Logger` from here instead; the daemon, which
imports logging anyway, sees no difference.

``configure()`` is scan's ``logging.basicConfig(level=..., format=...)``: when
logging is not imported yet, it is applied at the first message that passes
``level``, and messages below it are dropped without importing logging. Only
a command that sets up logging no other way may call it (scan): a level it
leaves pending would hide the messages below it from any handler set up
later.
"""

from __future__ import annotations

import sys
import threading

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    import logging

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # logging's levels

_lock = threading.Lock()
# (level, format) for logging.basicConfig, not applied yet (see configure())
_pending: tuple[int, str] | None = None


def configure(level: int, fmt: str) -> None:
    """``logging.basicConfig(level=level, format=fmt)``, now or at the first message."""
    global _pending  # noqa: PLW0603 (the process's one logging setup)
    if "logging" in sys.modules:  # imported already (a test, another command): as it was
        import logging

        logging.basicConfig(level=level, format=fmt)
        return
    with _lock:
        _pending = (level, fmt)


def _apply_pending() -> None:
    global _pending
    with _lock:
        pending, _pending = _pending, None
    if pending is not None:
        import logging

        logging.basicConfig(level=pending[0], format=pending[1])


def shutdown() -> None:
    """``logging.shutdown()``, if logging was ever imported (its handlers are flushed)."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()


class Logger:
    """The part of :class:`logging.Logger` the engine and the scan command use."""

    __slots__ = ("name", "_real")

    def __init__(self, name: str) -> None:
        self.name = name
        self._real: logging.Logger | None = None

    def real(self) -> logging.Logger:
        real = self._real
        if real is None:
            import logging

            _apply_pending()
            real = self._real = logging.getLogger(self.name)
        return real

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        pending = _pending
        if pending is not None and level < pending[0]:
            return False
        return self.real().isEnabledFor(level)

    def debug(self, msg: str, *args: object) -> None:
        if self.isEnabledFor(DEBUG):
            self.real().debug(msg, *args, stacklevel=2)

    def info(self, msg: str, *args: object) -> None:
        if self.isEnabledFor(INFO):
            self.real().info(msg, *args, stacklevel=2)

    def warning(self, msg: str, *args: object) -> None:
        if self.isEnabledFor(WARNING):
            self.real().warning(msg, *args, stacklevel=2)

    def error(self, msg: str, *args: object) -> None:
        if self.isEnabledFor(ERROR):
            self.real().error(msg, *args, stacklevel=2)

    def exception(self, msg: str, *args: object) -> None:
        """An error with the traceback of the exception being handled."""
        if self.isEnabledFor(ERROR):
            self.real().error(msg, *args, exc_info=True, stacklevel=2)
