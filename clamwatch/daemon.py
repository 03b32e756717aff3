"""`clamwatch run`: the watch daemon, wired together.

watcher --Work--> dispatcher --Work--> pipeline --ScanJob--> engine --> verdict events
   ^                  ^
   |                  +-- walker (new directories, overflow, startup scans)
   +-- roots supervised (missing, deleted and re-created)

SIGTERM or SIGINT: stop watching, let the scans in flight finish within
``stop_timeout``, save what was still to do in the state file, exit 0. The
next start scans it, and (startup_scan = "changed") whatever changed while
clamwatch was not running.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from types import FrameType

from clamwatch.actions import ActionRunner
from clamwatch.backlog import BacklogReport
from clamwatch.clamd.engine import ClamdUnavailableError, Engine
from clamwatch.clamd.settings import resolve_engine
from clamwatch.config import (
    Config,
    ConfigError,
    DaemonSettings,
    check_folders_in_use,
    load_config,
    settings_changed,
)
from clamwatch.dispatch import Dispatcher, Mode, Rescan, Work
from clamwatch.eventkind import EventKind, emit
from clamwatch.events import (
    EventStreamHandler,
    JsonFormatter,
    TextFormatter,
    emit_fields,
    shown,
)
from clamwatch.files import raise_nofile_limit
from clamwatch.journal import JournalHandler, stderr_is_journal
from clamwatch.notify import Notifier
from clamwatch.pipeline import Pipeline, Result
from clamwatch.policy import Rule
from clamwatch.quarantine import QuarantineError, QuarantineStore
from clamwatch.state import State, load_state, lock_state, save_state
from clamwatch.verdict import Clean, Infected, NotScanned, ScanError, describe
from clamwatch.watch.filters import WatchFilter
from clamwatch.watch.walker import Walker
from clamwatch.watch.watchdog_backend import TreeWatcher
from clamwatch.writable import quarantines, read_only_folders, read_only_root, report

log = logging.getLogger(__name__)

_CHECKPOINT_EVERY = 30.0  # seconds between state file checkpoints
_STATUS_EVERY = 5.0  # seconds between STATUS= updates to systemd
_TICK = 1.0  # the main loop's pace: signals, watchdog
# A loop that has not come round for this long is stuck: both loops wake at
# least every second (the engine's select and the pipeline's wait are capped).
_STALLED = 10.0
_SLACK = 2.0  # seconds of clock and timestamp granularity allowed for in "changed"
_ARMED_LATE = "watch armed after the start"  # the walk of such a root, with startup_scan "none"


@functools.cache
def _words(rule: Rule) -> str:
    """``move tag``: a rule as its verdict events print it (a handful of rules exist)."""
    return " ".join(rule.words)


def setup_logging(log_format: str, target: str = "auto", level: int = logging.INFO) -> None:
    """Events to the journal (under systemd, or asked for), else to stderr."""
    handler: logging.Handler
    if target == "journal" or (target == "auto" and stderr_is_journal()):
        handler = JournalHandler()
    else:
        handler = EventStreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # watchdog's own warnings stay visible; its debug chatter does not
    logging.getLogger("watchdog").setLevel(logging.WARNING)


@dataclass(slots=True)
class _Coverage:
    """The watches whose startup walk has ended this run."""

    walked: set[str] = field(default_factory=set)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        settings = config.daemon
        address, engine_settings = resolve_engine(config.clamd, give_up_after=None)
        self.engine = Engine(
            address,
            engine_settings,
            relearn=lambda: resolve_engine(config.clamd, give_up_after=None)[1],
        )
        self.dispatcher = Dispatcher(settings.max_pending, settings.settle_time)
        self.backlog = BacklogReport(self.dispatcher)
        own = (str(settings.state_directory), str(config.quarantine.directory))
        self.filters = {str(w.path): WatchFilter(w, own) for w in config.watches}
        self.store = QuarantineStore(config.quarantine.directory) if quarantines(config) else None
        self.actions = ActionRunner(self.store, self._retry)
        self.pipeline = Pipeline(
            self.dispatcher, self.engine, self.filters, self._report, actions=self.actions
        )
        self.walker = Walker(self.dispatcher, self.filters, self._walked)
        self.watcher = TreeWatcher(list(self.filters.values()), self.dispatcher, self._armed)
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.notifier = Notifier()
        self._stall_reported = False
        self.state = State()
        self._coverage = _Coverage()
        self._started_at: float | None = None  # epoch s, once the roots there were armed

    # -- verdicts ---------------------------------------------------------------------

    def _report(self, result: Result) -> None:
        work, verdict = result.work, result.verdict
        # Built in the order the fields are printed, with no None in it:
        # handed to emit_fields as it is (thousands a second in a burst).
        fields: dict[str, object]
        match verdict:
            case Clean():
                self.pipeline.scanned += 1
                if not self._logs_clean(work.watch):
                    return
                kind, level, fields = EventKind.CLEAN, logging.INFO, {}
            case Infected(signature=signature):
                self.pipeline.scanned += 1
                self.pipeline.infected += 1
                kind, level, fields = EventKind.DETECTION, logging.WARNING, {"signature": signature}
            case NotScanned(reason=reason, detail=detail):
                kind, level = EventKind.NOT_SCANNED, logging.WARNING
                fields = {"not_scanned": reason.value, "detail": detail}
            case ScanError(message=error):
                kind, level, fields = EventKind.SCAN_ERROR, logging.ERROR, {"error": error}
        fields["path"] = work.path
        fields["watch"] = work.watch
        rules = self.filters.get(work.watch)
        if rules is not None and rules.watch.name != work.watch:
            fields["watch_name"] = rules.watch.name  # [[watch]] name, when one is given
        fields["verdict"] = verdict.kind
        fields["latency_ms"] = round(result.latency * 1000, 1)
        fields["reason"] = work.reason
        fields["action"] = _words(result.rule)
        outcome = result.outcome
        if outcome is not None:
            if outcome.transport is not None:
                fields["transport"] = outcome.transport.value
            fields["attempts"] = outcome.attempts
            if outcome.clamd_version is not None:
                fields["clamd_version"] = outcome.clamd_version
        emit_fields(kind, f"{shown(work.path)}: {describe(verdict)}", level, fields)

    def _logs_clean(self, watch: str) -> bool:
        """Whether the watch logs clean verdicts (log_clean); a watch just removed does."""
        rules = self.filters.get(watch)  # replaced in place by a reload
        return rules is None or rules.watch.log_clean

    def _retry(self, path: str, watch: str, delay: float) -> None:
        """An action failed (quarantine full): scan and act again later."""
        self.dispatcher.retry_later(Work(path, watch, time.monotonic(), "action retry"), delay)

    # -- watches and walks ---------------------------------------------------------------

    def _armed(self, rules: WatchFilter, first: bool) -> None:
        root = rules.root
        # said at every arming: a root created again may be on another mount
        read_only = read_only_root(rules.watch)
        if read_only is not None:
            report(read_only)
        mode = self.config.daemon.startup_scan
        # These walks race with writers that are busy as the watch is armed:
        # what they find settles (it is scanned at once when no writer has it
        # open, else at its close), so a file caught half-written is not
        # scanned twice, once half-written and once at its close.
        settle = Mode.SETTLE
        if not first:
            # deleted and created again: whatever it holds now is new to us
            self.dispatcher.rescan(Rescan(root, root, "watch root re-created", settle))
            return
        covered = self.state.covered_at.get(root)
        if mode == "none" and self._started_at is not None:
            # Armed after the start: it did not exist then, or could not be
            # watched. "none" skips what was there at the start; anything
            # newer arrived with no watch to see it.
            self.dispatcher.rescan(
                Rescan(root, root, _ARMED_LATE, settle, newer_than=self._started_at - _SLACK)
            )
        elif mode == "none":
            self._coverage.walked.add(root)
        elif mode == "changed" and covered is not None:
            self.dispatcher.rescan(
                Rescan(root, root, "changed while not running", settle, newer_than=covered - _SLACK)
            )
        else:
            self.dispatcher.rescan(Rescan(root, root, "startup scan", settle, if_changed=False))

    def _walked(self, request: Rescan) -> None:
        if request.directory == request.watch and request.reason in (
            "changed while not running",
            "startup scan",
            _ARMED_LATE,
        ):
            self._coverage.walked.add(request.watch)

    def _events_read_until(self) -> float | None:
        """Epoch time before which every inotify event has been read and handed over.

        Coverage saved stops there: a file whose close is still in the
        kernel's queue (a reader behind a burst) is in no snapshot, and a
        crash then must not count it as covered. None: not known yet.
        """
        until = self.dispatcher.events_read_until  # time.monotonic(), as the watcher's
        if until is None:
            return None
        return time.time() - (time.monotonic() - until)

    def _checkpoint(self, watched_until: float | None = None) -> bool:
        """Save what is still to do, and how far each watch is covered; False if it failed.

        Everything unresolved (waiting, settling, in flight, directories to
        walk or being walked, files whose actions or hook have not ended)
        is saved by name, so coverage may move up to now, or rather to the
        last time the watcher found the kernel's queue empty
        (:meth:`_events_read_until`). Once the watcher has stopped,
        ``watched_until`` (epoch s) is when it stopped: what changed after
        that was seen by no one, and coverage must not reach past it. A
        state that cannot be written (a full disk) is an error the daemon
        runs on with: the file keeps the last coverage saved, so the next
        start's walk of what changed since reaches back to it.
        """
        now = time.time() if watched_until is None else watched_until
        read_until = self._events_read_until()
        covered = dict(self.state.covered_at)
        for root in list(self._coverage.walked):  # the walker adds to it meanwhile
            if root in self.filters and read_until is not None:
                # a watch a reload removed is covered no further
                covered[root] = max(covered.get(root, 0.0), min(now, read_until))
        keep = self.config.quarantine
        if self.store is not None and (keep.max_age or keep.max_total_size):
            try:
                deleted = self.store.enforce_retention(keep.max_age, keep.max_total_size)
            except QuarantineError as exc:
                # the quarantine cannot be listed (removed, out of descriptors):
                # no reason to lose the state, which is saved all the same (this
                # ended the daemon, at its stop without saving it)
                log.error("quarantine retention not applied: %s", exc)
                deleted = []
            for entry in deleted:
                log.info("quarantine entry %s deleted by the retention settings", entry)
        snapshot = self.dispatcher.snapshot()
        # After the snapshot: a file's actions are submitted before the
        # dispatcher is told its scan is done, so none falls between the two.
        paths = snapshot.paths
        acting = set(self.actions.acting())  # a few; the snapshot may list 200,000
        if acting:
            acting.difference_update(paths)  # no set of the snapshot's paths: its peak RSS
            paths += sorted(acting)
        rescans = [(r.directory, r.watch) for r in snapshot.rescans]
        state = State(covered, paths, rescans)
        directory = self.config.daemon.state_directory
        try:
            save_state(directory, state)
        except OSError as exc:
            log.error(
                "cannot save the state under %s: %s; %d file(s) and %d folder(s) still to do"
                " would be lost with a restart, and the next start walks back to the last"
                " state saved",
                directory,
                exc.strerror or exc,
                len(state.pending),
                len(state.rescans),
            )
            return False
        self.state = state
        return True

    # -- running ----------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested.set()

    def run(self) -> int:
        settings = self.config.daemon
        emit(
            EventKind.STARTED,
            f"clamwatch starting: {len(self.filters)} watch(es), clamd at {self.engine.address}",
            config=str(self.config.source),
        )
        self._report_read_only()
        try:
            lock: int | None = lock_state(settings.state_directory)
        except OSError as exc:
            # Scanning matters more than the lock: run on, as with a state
            # that cannot be saved (each checkpoint then says so too).
            log.error(
                "cannot lock the state directory %s: %s; running without the lock, so a"
                " second clamwatch on it would not be refused",
                settings.state_directory,
                exc.strerror or exc,
            )
            lock = None
        try:
            return self._run(settings)
        finally:
            if lock is not None:
                os.close(lock)

    def _run(self, settings: DaemonSettings) -> int:
        self.state = load_state(settings.state_directory)
        # a descriptor per file waiting for its verdict (the window), and the
        # rest for clamd's sockets, inotify, the journal and the actions
        self.pipeline.window = min(self.pipeline.window, max(16, raise_nofile_limit() // 4))
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_reload)
        # lease-break notices (files.open_unwritten holds a read lease for microseconds)
        signal.signal(signal.SIGIO, signal.SIG_IGN)
        self.engine.start()
        for path, watch in self.state.pending:
            if watch in self.filters:
                self.dispatcher.due(Work(path, watch, time.monotonic(), "pending at last stop"))
        for directory, watch in self.state.rescans:
            if watch in self.filters:
                self.dispatcher.rescan(Rescan(directory, watch, "pending at last stop"))
        self.pipeline.start()
        self.walker.start()
        started_at = time.time()
        self.watcher.start()  # arms every root that exists now
        self._started_at = started_at
        # READY only once clamd answered: `systemctl start` returns when
        # clamwatch really scans. Files arriving meanwhile wait.
        if self._wait_for_clamd():
            emit(
                EventKind.READY,
                f"clamwatch ready: watching {self.watcher.armed} of {len(self.filters)} tree(s)",
            )
            self.notifier.ready(self._status())
            self._serve()
        return self._stop()

    def _wait_for_clamd(self) -> bool:
        self.notifier.status(f"waiting for clamd at {self.engine.address}")
        while not self.stop_requested.is_set():
            try:
                self.engine.wait_ready(_TICK)
                return True
            except ClamdUnavailableError:
                self._watchdog()
        return False

    def _serve(self) -> None:
        now = time.monotonic()
        next_status, next_checkpoint = now + _STATUS_EVERY, now + _CHECKPOINT_EVERY
        tick = min(_TICK, self.notifier.watchdog_interval or _TICK)
        while not self.stop_requested.wait(tick):
            now = time.monotonic()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self._reload()
            self._watchdog()
            self.backlog.check()
            if now >= next_status:
                self.notifier.status(self._status())
                next_status = now + _STATUS_EVERY
            if now >= next_checkpoint:
                self._checkpoint()
                next_checkpoint = now + _CHECKPOINT_EVERY

    def _watchdog(self) -> None:
        """WATCHDOG=1 only while the engine's loop and the pipeline's loop both tick."""
        now = time.monotonic()
        stalled = [
            name
            for name, beat in (("clamd engine", self.engine.heartbeat),
                               ("scanning pipeline", self.pipeline.heartbeat))
            if beat and now - beat > _STALLED
        ]  # fmt: skip
        if stalled:
            if not self._stall_reported:
                log.error("the %s loop has not run for %.0f s", stalled[0], _STALLED)
            self._stall_reported = True
            return
        self._stall_reported = False
        self.notifier.watchdog()

    def _status(self) -> str:
        clamd = "up" if self.engine.reachable else "unreachable"
        ready, sessions = self.engine.sessions_ready, self.engine.settings.sessions
        if self.engine.reachable and ready < sessions:
            clamd += f" ({ready} of {sessions} sessions connected)"  # the others reconnecting
        return (
            f"watching {self.watcher.armed}/{len(self.filters)} trees; "
            f"{self.pipeline.scanned} scanned, {self.pipeline.infected} infected; "
            f"{self.dispatcher.depth} waiting; clamd {clamd}"
        )

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested.set()

    def _reload(self) -> None:
        """SIGHUP: a valid new configuration replaces the watches; a bad one is refused."""
        self.notifier.reloading()
        old = self.config
        try:
            new = load_config(old.source)
            if not new.watches:
                raise ConfigError(f"{old.source}: no [[watch]] is configured")
            check_folders_in_use(new, old.daemon, old.quarantine)
        except ConfigError as exc:
            self._reject(exc)
            return
        later = settings_changed(old, new)
        if self.store is None and quarantines(new):
            try:
                # its folder made now (this ended the daemon when it could
                # not be: a full file system); refused as a start would be
                store = QuarantineStore(old.quarantine.directory)
            except QuarantineError as exc:
                self._reject(exc)
                return
            self.store = store
            self.actions.store = store
        self.config = replace(new, clamd=old.clamd, daemon=old.daemon, quarantine=old.quarantine)
        own = (str(old.daemon.state_directory), str(old.quarantine.directory))
        fresh = {str(w.path): WatchFilter(w, own) for w in new.watches}
        # one key at a time: the pipeline and the walker read this dict live
        for root, rules in fresh.items():
            self.filters[root] = rules
        for root in [r for r in self.filters if r not in fresh]:
            del self.filters[root]
            # what is written there now is seen by no one: its coverage stays
            # where it is, and a reload that adds it back walks what changed
            # since (it stayed in, and advanced, and those files were skipped)
            self._coverage.walked.discard(root)
        self.watcher.update(list(fresh.values()))
        # named key by key, so the admin knows what still waits for a restart
        ignored = ", ".join(later) or None
        note = f"; not applied until the next restart: {ignored}" if ignored else ""
        emit(
            EventKind.CONFIG_RELOADED,
            f"configuration reloaded: {len(fresh)} watch(es){note}",
            config=str(old.source),
            restart_needed=ignored,
        )
        self._report_read_only()
        self.notifier.ready(self._status())

    def _report_read_only(self) -> None:
        """The folders other than watch roots that actions need and cannot change
        (the roots are checked as they are armed)."""
        for found in read_only_folders(self.config, quarantines=self.store is not None):
            report(found)

    def _reject(self, problem: Exception) -> None:
        """A reload refused: the running configuration stays."""
        emit(
            EventKind.CONFIG_REJECTED,
            f"the new configuration is refused, the running one stays: {problem}",
            logging.ERROR,
            error=str(problem),
            config=str(self.config.source),
        )
        self.notifier.ready(self._status())

    def _stop(self) -> int:
        settings = self.config.daemon
        self.notifier.stopping()
        emit(EventKind.STOPPING, "clamwatch stopping: finishing the scans in flight")
        deadline = time.monotonic() + settings.stop_timeout
        # Files written from here on have no watcher to see them, and the
        # drain below may take all of stop_timeout: the coverage saved ends
        # here, so the next start's walk finds them.
        watched_until = time.time()
        self.watcher.stop()
        self.walker.stop()
        self.pipeline.stop(deadline)  # what it did not finish is in the snapshot
        self.actions.close()
        stopped = (
            f"clamwatch stopped: {self.pipeline.scanned} scanned, {self.pipeline.infected} infected"
        )
        if not self._checkpoint(watched_until):
            message = f"{stopped}; what was still to do could NOT be saved (see above)"
            emit(EventKind.STOPPED_UNSAVED, message, logging.ERROR)
            return 1
        saved = len(self.state.pending) + len(self.state.rescans)
        emit(EventKind.STOPPED, f"{stopped}, {saved} saved for the next start", pending=saved)
        return 0
