"""The watchdog (inotify) backend: kernel events in, dispatcher entries out.

Triggers (style.md, design.md): close after write; the destination of a
move into or within the tree; a file created (it settles, in case no close
is seen); a directory created or moved in (walked: after mkdir, writes often
land before the new directory's watch exists). Directory-modified noise is
never asked for (watchdog >= 4 event filters).

watchdog drops the kernel's IN_Q_OVERFLOW without telling its handler; it
only logs "Inotify queue overflowed" (watchdog issue #654, still so in 7.x).
:class:`OverflowDetector` listens for that log record and every tree is
walked again. Roots are supervised by polling their identity once a second:
a root that does not exist yet is waited for, one deleted and created again
is watched afresh and walked.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyObserver

from clamwatch.dispatch import Dispatcher, Mode, Rescan, Work
from clamwatch.events import EventKind, emit
from clamwatch.watch.filters import WatchFilter

log = logging.getLogger(__name__)

_EVENTS: list[type[FileSystemEvent]] = [
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]
_SUPERVISE_EVERY = 1.0  # seconds between checks of the watch roots
_RETRY_FAILED = 10.0  # seconds before a watch that failed to arm is tried again


def _os_path(value: str | bytes) -> str:
    return os.fsdecode(value)


class _Handler(FileSystemEventHandler):
    """Turns one watch's events into dispatcher entries. Runs on watchdog's thread."""

    def __init__(self, rules: WatchFilter, dispatcher: Dispatcher) -> None:
        self.rules = rules
        self.dispatcher = dispatcher

    def _inside(self, path: str) -> bool:
        root = self.rules.root
        return path == root or path.startswith(root.rstrip("/") + "/")

    def dispatch(self, event: FileSystemEvent) -> None:
        now = time.monotonic()
        watch = self.rules.root
        if isinstance(event, FileClosedEvent):
            path = _os_path(event.src_path)
            if not self.rules.excluded(path):
                self.dispatcher.due(Work(path, watch, now, "closed after write"))
        elif isinstance(event, FileMovedEvent):
            path = _os_path(event.dest_path)
            if self._inside(path) and not self.rules.excluded(path):
                self.dispatcher.due(Work(path, watch, now, "moved in"))
        elif isinstance(event, FileCreatedEvent):
            path = _os_path(event.src_path)
            if not self.rules.excluded(path):
                self.dispatcher.settle(Work(path, watch, now, "created"))
        elif isinstance(event, DirMovedEvent):
            path = _os_path(event.dest_path)
            if self._inside(path) and not self.rules.excluded(path):
                self.dispatcher.rescan(Rescan(path, watch, "directory moved in"))
        elif isinstance(event, DirCreatedEvent):
            path = _os_path(event.src_path)
            if not self.rules.excluded(path):
                # files the watch did see arrive are scanned once: the walk
                # skips versions that already have their verdict
                self.dispatcher.rescan(Rescan(path, watch, "new directory", Mode.SETTLE))


class OverflowDetector(logging.Handler):
    """Hears watchdog's "Inotify queue overflowed" log record and calls back."""

    LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify_buffer")

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.on_overflow()

    def install(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)

    def remove(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


@dataclass(slots=True)
class _Root:
    rules: WatchFilter
    handler: _Handler
    observed: ObservedWatch | None = None
    identity: tuple[int, int] | None = None
    announced_waiting: bool = False
    retry_at: float = 0.0
    armed_once: bool = False


class TreeWatcher:
    """Recursive watches on every configured root, supervised."""

    def __init__(
        self,
        filters: list[WatchFilter],
        dispatcher: Dispatcher,
        on_armed: Callable[[WatchFilter, bool], None],
    ) -> None:
        self.dispatcher = dispatcher
        self.on_armed = on_armed  # (watch, first time) -> walk it as needed
        # full events: a file moved in from outside the tree is a move with no
        # source, not a "created" that would wait for settle_time
        self._observer: BaseObserver = InotifyObserver(generate_full_events=True)
        self._roots = [_Root(rules, _Handler(rules, dispatcher)) for rules in filters]
        self._lock = threading.Lock()  # _roots: changed by update(), walked by the supervisor
        self._overflow = OverflowDetector(self._overflowed)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._supervise, name="clamwatch-watch-roots", daemon=True
        )

    def start(self) -> None:
        """Arm every root that exists now (so READY means watching), then supervise."""
        self._overflow.install()
        self._observer.start()
        with self._lock:
            for root in self._roots:
                self._check(root, time.monotonic())
        self._thread.start()

    @property
    def armed(self) -> int:
        return sum(root.observed is not None for root in self._roots)

    def _overflowed(self) -> None:
        emit(
            EventKind.OVERFLOW_RESCAN,
            "the kernel's inotify queue overflowed and events were lost; walking every watched"
            " tree again (raise fs.inotify.max_queued_events to make this rarer)",
            logging.WARNING,
        )
        for root in self._roots:
            self.dispatcher.rescan(Rescan(root.rules.root, root.rules.root, "inotify overflow"))

    def _supervise(self) -> None:
        while not self._stop.wait(_SUPERVISE_EVERY):
            now = time.monotonic()
            with self._lock:
                for root in self._roots:
                    self._check(root, now)

    def update(self, filters: list[WatchFilter]) -> None:
        """A reloaded configuration: new rules, new roots armed, dropped roots disarmed."""
        wanted = {rules.root: rules for rules in filters}
        with self._lock:
            kept: list[_Root] = []
            for root in self._roots:
                rules = wanted.pop(root.rules.root, None)
                if rules is None:
                    self._disarm(root)
                    log.info("no longer watching %s", root.rules.root)
                    continue
                root.rules = root.handler.rules = rules
                kept.append(root)
            for rules in wanted.values():
                root = _Root(rules, _Handler(rules, self.dispatcher))
                kept.append(root)
                self._check(root, time.monotonic())
            self._roots = kept

    def _check(self, root: _Root, now: float) -> None:
        path = root.rules.root
        try:
            st = os.stat(path)
            identity: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            identity = None
        if identity is not None and identity == root.identity and root.observed is not None:
            return
        if root.observed is not None:
            self._disarm(root)
            if identity is None:
                emit(
                    EventKind.WATCH_WAITING,
                    f"watch root {path} was removed; waiting for it to come back",
                    logging.WARNING,
                    watch=path,
                )
        if identity is None:
            if not root.announced_waiting and not root.armed_once:
                emit(
                    EventKind.WATCH_WAITING,
                    f"watch root {path} does not exist yet; waiting for it",
                    logging.WARNING,
                    watch=path,
                )
            root.announced_waiting = True
            return
        if now < root.retry_at:
            return
        self._arm(root, identity, now)

    def _arm(self, root: _Root, identity: tuple[int, int], now: float) -> None:
        path = root.rules.root
        try:
            root.observed = self._observer.schedule(
                root.handler, path, recursive=True, event_filter=_EVENTS
            )
        except OSError as exc:
            root.retry_at = now + _RETRY_FAILED
            emit(
                EventKind.WATCH_FAILED,
                f"cannot watch {path}: {_explain(exc)}; trying again in {_RETRY_FAILED:.0f} s",
                logging.ERROR,
                watch=path,
            )
            return
        first = not root.armed_once
        root.identity, root.armed_once, root.announced_waiting = identity, True, False
        emit(EventKind.WATCH_ARMED, f"watching {path}", watch=path)
        self.on_armed(root.rules, first)

    def _disarm(self, root: _Root) -> None:
        observed, root.observed, root.identity = root.observed, None, None
        if observed is not None:
            # KeyError: watchdog already dropped a watch whose root was deleted
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(observed)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._observer.stop()
        self._observer.join()
        self._overflow.remove()


def _explain(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return (
            "the kernel's limit on inotify watches is reached; raise"
            " fs.inotify.max_user_watches (sysctl -w fs.inotify.max_user_watches=1048576)"
        )
    if exc.errno == errno.EMFILE:
        return (
            "the kernel's limit on inotify instances is reached; raise"
            " fs.inotify.max_user_instances"
        )
    return exc.strerror or str(exc)
