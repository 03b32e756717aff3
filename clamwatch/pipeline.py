"""The scanning pipeline: work from the dispatcher, through the engine, to a verdict.

One thread ("clamwatch-dispatch") takes work from the dispatcher, opens each
file once (the disk I/O stays off the engine's socket loop), hands it to the
engine, and turns outcomes into verdict events. It keeps at most ``window``
files open and handed to the engine: while clamd is down those wait in the
engine, everything else waits as a path in the dispatcher.

It works in rounds: every outcome that came in, then as much new work as the
window has room for, each under one lock, then sleep on the dispatcher's
``ready`` event. The engine thread only queues an outcome and sets ``ready``
when it is clear, so a burst costs a wake-up per round, not one per file,
while a lone verdict is reported the moment its outcome arrives.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from clamwatch.actions import ActionRequest, ActionRunner
from clamwatch.clamd.engine import Engine
from clamwatch.clamd.job import ScanJob, ScanOutcome
from clamwatch.dispatch import Dispatcher, Work, trim_oldest
from clamwatch.events import held_back
from clamwatch.files import (
    CheckedFile,
    FileIdentity,
    OpenedFile,
    ShortageError,
    descriptor_path,
    open_for_scan,
    open_unwritten,
)
from clamwatch.policy import Rule, decide
from clamwatch.threadnames import name_this_thread
from clamwatch.verdict import NotScanned, NotScannedReason, ScanError, Verdict
from clamwatch.watch.filters import WatchFilter

log = logging.getLogger(__name__)

# A transport failure after the engine's own retries: try the file again
# later, a few times, before reporting an error.
_RETRY_DELAYS = (10.0, 60.0, 300.0)
# A file not opened for want of descriptors (files.ShortageError, a burst
# under a low RLIMIT_NOFILE, a system out of file handles): opened again after
# these pauses, before the error is reported. As a verdict at once, the file
# was never scanned again (it had not changed).
_RETRY_SHORT = (1.0, 5.0, 30.0, 60.0)
_SETTLE_EVERY = 0.05  # seconds between checks of files that settle (cheap when none do)
# Settling files looked at per round (a stat and a lease each, ~20 us): a
# burst's walks can leave thousands, and looking at them all at once kept
# clamd waiting for tens of milliseconds (measured).
_LOOKS_PER_ROUND = 256
_NOTHING = Rule()  # the rule whose words are ["none"]
# What a file is reported as when what was opened by its path lies out of its watch
_OUT_OF_THE_WATCH = NotScanned(
    NotScannedReason.SYMLINK,
    "a directory on its path is a symbolic link out of the watch, not followed",
)
# Files opened and handed to the engine, at most. clamd takes 64 of them at a
# time (16 per thread of its 4, engine._cap_total); the rest wait opened in the
# engine's queue, which sends the next one for each reply by itself. While a
# burst's writers run, some ten threads share two CPUs and this thread's rounds
# came 40-60 ms apart (traced every 5 ms): with 256 the engine's queue ran dry
# between them and clamd sat idle 1-4 times in a burst's first half second
# (in each of ten bursts); with 768, in two bursts of six; with 1,024, in
# none of three. Single bursts alternated on one clamd: 1.83 s with 768 against
# 1.94 s with 256 (medians of six), and 1.83 s with 1,024 in six later runs.
# A descriptor each: Daemon.run lowers it to a quarter of RLIMIT_NOFILE.
WINDOW = 1024
# Outcomes come in batches (see _sleep) once more than this many files are in
# the engine: clamd's 64 in flight and some queued behind them.
_BATCH_ABOVE = 64


@dataclass(frozen=True, slots=True)
class Result:
    work: Work
    verdict: Verdict
    outcome: ScanOutcome | None
    latency: float  # seconds from the first event to the verdict
    rule: Rule  # what the watch's policy says to do about it


class SeenVersions:
    """Which (path, inode, size, mtime, ctime) versions already have a verdict, bounded.

    Rescans after a lost event skip what is in here, so a file gets one final
    verdict per version of its content. Only hashes are kept (about 100 bytes
    an entry); the oldest go first, a sixteenth of ``limit`` at a time.
    """

    def __init__(self, limit: int = 262_144) -> None:
        self.limit = limit
        self._seen: dict[int, None] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(path: str, st: os.stat_result) -> int:
        # the ctime too: a rewrite of the same size whose owner set its mtime
        # back (utimensat) passed for the version scanned, and its close was
        # skipped; no one but the kernel sets the ctime
        return hash((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))

    @staticmethod
    def key_of(path: str, identity: FileIdentity) -> int:
        """The same key, from the identity the scanned descriptor had."""
        return hash(
            (path, identity.dev, identity.ino, identity.size, identity.mtime_ns, identity.ctime_ns)
        )

    def add(self, key: int) -> None:
        with self._lock:
            self._seen.pop(key, None)
            self._seen[key] = None
            # in one pass, a sixteenth at a time (one at a time cost 17 us a
            # verdict once the limit was reached, measured)
            trim_oldest(self._seen, self.limit)

    def __contains__(self, key: int) -> bool:
        with self._lock:
            return key in self._seen


class Pipeline:
    def __init__(
        self,
        dispatcher: Dispatcher,
        engine: Engine,
        filters: dict[str, WatchFilter],
        report: Callable[[Result], None],
        *,
        actions: ActionRunner | None = None,
        window: int = WINDOW,
        batch: int = 32,
    ) -> None:
        self.dispatcher = dispatcher
        self.engine = engine
        self.filters = filters
        self.report = report
        self.actions = actions
        # Daemon.run may lower it (open-files limit) before start(): what
        # depends on it is derived from it in _sleep, not kept
        self.window = window
        # outcomes per round while the engine has plenty to do (see _sleep)
        self._batch = batch
        self._wake_after = 1  # outcomes that wake the pipeline (read by the engine thread)
        self.seen = SeenVersions()
        if actions is not None:
            actions.seen = self.seen  # a tag sets the ctime: the tagged version is seen too
        self._real_roots: dict[str, str] = {}  # a watch's root, links resolved, with a "/"
        self._outstanding: dict[ScanJob, Work] = {}
        # appended by the engine thread, taken by ours (deque: thread-safe ends)
        self._completed: collections.deque[tuple[ScanJob, ScanOutcome]] = collections.deque()
        self._done: list[str] = []  # paths ended this round, for dispatcher.done_many
        self._starting: list[ScanJob] = []  # opened this round, for engine.submit_many
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clamwatch-dispatch", daemon=True)
        self.scanned = 0
        self.infected = 0
        self.heartbeat = 0.0  # monotonic time the loop last came round (0: not started)

    def start(self) -> None:
        self._thread.start()

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    # -- engine thread ------------------------------------------------------------------

    def _on_done(self, job: ScanJob, outcome: ScanOutcome) -> None:
        completed = self._completed
        completed.append((job, outcome))
        ready = self.dispatcher.ready
        # not set: the pipeline has yet to look (it will see this), or it
        # waits for a batch of outcomes (it has plenty in the engine meanwhile)
        if len(completed) >= self._wake_after and not ready.is_set():
            ready.set()

    # -- pipeline thread ----------------------------------------------------------------

    def _run(self) -> None:
        name_this_thread()
        next_settle = 0.0
        ready = self.dispatcher.ready
        while not self._stop.is_set():
            # Clear before looking: whatever arrives after this sets it again,
            # so the wait below never sleeps through new work.
            ready.clear()
            self._finish_completed()
            now = time.monotonic()
            self.heartbeat = now
            dispatcher = self.dispatcher
            if now >= next_settle and not dispatcher.passing:
                dispatcher.start_settle_pass()
                next_settle = now + _SETTLE_EVERY
            free = self.window - len(self._outstanding)
            if dispatcher.looks_waiting:
                # fitted to this round's take, which scans the files found
                # finished through the descriptors their looks opened
                dispatcher.settle_check(_lstat, open_unwritten, limit=_LOOKS_PER_ROUND, room=free)
            if free > 0:
                for work in dispatcher.take(free):
                    self._start(work)
                if self._starting:
                    jobs, self._starting = self._starting, []
                    self.engine.submit_many(jobs)
                self._flush_done()
            self._sleep()
        self._finish_completed()

    def _sleep(self) -> None:
        """Wait for the next round: at once for a lone file, in batches in a burst.

        With more than _BATCH_ABOVE files (or a quarter of a smaller window)
        in the engine, clamd has work for a while: new paths wait for the next
        round, and that round comes when a batch of outcomes is in (at most
        _SETTLE_EVERY later).
        """
        ready = self.dispatcher.ready
        busy_above = min(self.window // 4, _BATCH_ABOVE)
        if len(self._outstanding) <= busy_above:
            self._wake_after = 1
            if not self.dispatcher.looks_waiting:  # else the next slice, at once
                ready.wait(_SETTLE_EVERY)
            return
        # no more than are surely in the engine, so that the batch always comes in
        self._wake_after = max(1, min(self._batch, busy_above))
        self.dispatcher.taker_wants_work = False
        ready.clear()  # new paths that came during this round wait for the batch
        if len(self._completed) < self._wake_after and not self._stop.is_set():
            ready.wait(_SETTLE_EVERY)
        self.dispatcher.taker_wants_work = True
        self._wake_after = 1

    def _finish_completed(self) -> None:
        """Conclude every outcome that came in."""
        completed = self._completed
        if not completed:
            return
        with held_back():  # their lines written together, at the end of the round
            while completed:
                job, outcome = completed.popleft()
                work = self._outstanding.pop(job)
                self._conclude(work, outcome.verdict, outcome, job.file)
        self._flush_done()

    def _flush_done(self) -> None:
        if self._done:
            done, self._done = self._done, []
            self.dispatcher.done_many(done)

    def _conclude(
        self,
        work: Work,
        verdict: Verdict,
        outcome: ScanOutcome | None,
        opened: OpenedFile | None,
    ) -> None:
        """Report a verdict and hand the file (ours to close) to the actions."""
        if (
            isinstance(verdict, ScanError)
            and outcome is not None
            and work.tries < len(_RETRY_DELAYS)
            and verdict.message.startswith(("clamd connection lost", "clamd unreachable"))
        ):
            delay = _RETRY_DELAYS[work.tries]
            work.tries += 1
            log.warning("%s: %s; trying again in %.0f s", work.path, verdict.message, delay)
            self.dispatcher.retry_later(work, delay)
            if opened is not None:
                opened.close()
            return
        rules = self.filters.get(work.watch)
        if rules is None:
            # its watch was removed by a reload while clamd had the file: not
            # watched any more, so neither reported nor acted on (a KeyError
            # here ended this thread, and with it all scanning)
            log.info("%s: its watch was removed while it was scanned; left as it is", work.path)
            if opened is not None:
                opened.close()
            self._done.append(work.path)
            return
        rule = decide(verdict, rules.watch.policy)
        if rule != _NOTHING and opened is not None and self._outside(work, opened):
            opened.close()
            verdict, outcome, opened, rule = _OUT_OF_THE_WATCH, None, None, _NOTHING
        if opened is not None and not isinstance(verdict, ScanError):
            self.seen.add(SeenVersions.key_of(work.path, opened.identity))
        self.report(Result(work, verdict, outcome, time.monotonic() - work.since, rule))
        self._done.append(work.path)
        if self.actions is not None and rule != _NOTHING:
            version = outcome.clamd_version if outcome is not None else None
            self.actions.submit(
                ActionRequest(work.path, rules.watch, verdict, rule, version, opened)
            )
        elif opened is not None:
            opened.close()

    def _outside(self, work: Work, opened: OpenedFile) -> bool:
        """The file opened for ``work`` lies out of its watch: asked before any action.

        The open refuses a link only as the path's last part (O_NOFOLLOW). A
        directory below the watch swapped for a link to elsewhere between
        the event and the open leads it out of the tree, and the actions,
        which go by the path and find there the inode they were given,
        would act out there. The kernel's name for the descriptor tells
        where it went (3-4 us, so not asked for the files nothing is done
        to); the watch's own path is resolved again before a refusal, in
        case a link on it was pointed elsewhere since. Without /proc there
        is nothing to compare with, and the file is taken as inside.
        """
        where = descriptor_path(opened.fd)
        if where is None or where.startswith(self._real_root(work.watch, fresh=False)):
            return False
        return not where.startswith(self._real_root(work.watch, fresh=True))

    def _real_root(self, watch: str, *, fresh: bool) -> str:
        root = self._real_roots.get(watch)
        if root is None or fresh:
            real = os.path.realpath(watch)
            root = self._real_roots[watch] = real if real.endswith("/") else real + "/"
        return root

    def _start(self, work: Work) -> None:
        # open already when the lease check found it finished (settle_check's room)
        checked, work.opened = work.opened, None
        rules = self.filters.get(work.watch)
        opened = self._open(work, rules, checked) if rules is not None else None
        if opened is None or rules is None:
            if checked is not None:
                checked.close()
            self._done.append(work.path)
            return
        if isinstance(opened, OpenedFile) and rules.too_large(opened.identity.size):
            verdict = NotScanned(
                NotScannedReason.TOO_LARGE,
                f"{opened.identity.size} bytes, over the watch's max_size ({rules.watch.max_size})",
            )
            self._conclude(work, verdict, None, opened)  # open, so that it can be tagged
            return
        if not isinstance(opened, OpenedFile):
            if isinstance(opened, NotScanned) and opened.reason is NotScannedReason.VANISHED:
                log.debug("%s vanished before it could be scanned", work.path)
                self._done.append(work.path)
            elif isinstance(opened, ShortageError) and work.tries < len(_RETRY_SHORT):
                self._shrink_window(opened)
                delay = _RETRY_SHORT[work.tries]
                work.tries += 1
                log.warning("%s: %s; trying again in %.0f s", work.path, opened.message, delay)
                self.dispatcher.retry_later(work, delay)
            else:
                self._conclude(work, opened, None, None)
            return
        job = ScanJob(opened, self._on_done, context=work.path)
        self._outstanding[job] = work
        self._starting.append(job)  # submitted together at the end of the round

    def _shrink_window(self, shortage: ShortageError) -> None:
        """No descriptor for one more file: no more files than are open now, from now on.

        Daemon.run fits the window to the open-files limit, but what the rest
        of the daemon holds (actions, hooks, clamd's sockets) is a guess: a
        window past what is left kept failing opens for the whole of a burst.
        """
        fits = max(1, len(self._outstanding))
        if fits < self.window:
            log.warning(
                "%s; at most %d file(s) are kept open for their scans from now on, not %d",
                shortage.message, fits, self.window,
            )  # fmt: skip
            self.window = fits

    def _open(
        self, work: Work, rules: WatchFilter, checked: CheckedFile | None
    ) -> OpenedFile | Verdict | None:
        """Open ``work``'s file for its scan (``checked``: as the lease check left it open).

        None when it is not to be scanned at all: excluded, vanished, already
        scanned in this version, unchanged since ``newer_than``, or skipped
        by its owner or size. A ``checked`` file is judged by the fstat its
        check took in this same round, and scanned as it was opened then,
        as any file is once open: a name removed since is not looked up again.
        """
        if rules.excluded(work.path):
            return None
        st = checked.st if checked is not None else _lstat(work.path)
        if st is None:
            log.debug("%s vanished before it could be scanned", work.path)
            return None
        if work.if_changed and SeenVersions.key(work.path, st) in self.seen:
            return None
        if work.newer_than is not None and max(st.st_mtime, st.st_ctime) < work.newer_than:
            return None
        skipped = rules.skipped_by_stat(st)
        if skipped is not None:
            log.debug("%s skipped: %s", work.path, skipped)
            return None
        return checked if checked is not None else open_for_scan(work.path, st)

    # -- stopping -----------------------------------------------------------------------

    def stop(self, deadline: float) -> list[Work]:
        """Stop taking work; wait for what is in the engine until ``deadline``.

        Returns the work that got no verdict (to be saved for the next start).
        """
        self.dispatcher.stop()
        while self._outstanding and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)  # the pipeline thread reports what finishes meanwhile
        self._stop.set()
        self.dispatcher.ready.set()
        self._thread.join()
        unfinished = self.engine.close(timeout=max(1.0, deadline - time.monotonic()))
        left: list[Work] = []
        for job in unfinished:
            job.file.close()
            work = self._outstanding.pop(job, None)
            if work is not None:
                left.append(work)
        left.extend(self._outstanding.values())
        for job in self._outstanding:
            job.file.close()
        self._outstanding.clear()
        return left


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None
