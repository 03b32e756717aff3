"""The dispatcher: the only place where work waits.

Producers (the watcher's thread, the tree walker) say a path *may* have new
content; the scanning pipeline takes work out. In between:

- one entry per path: a newer event for a path that waits is merged into the
  older one, which keeps its time (latency counts from the first event that
  made the file due: its close, or the end of its settling);
- a path whose scan is in flight is marked dirty and scanned again after, so
  a file modified during its scan still gets a verdict for its last version;
- files seen only as "created" settle until their size and mtime stop
  changing (or their close arrives);
- bounded: when ``max_pending`` entries wait, a further path becomes "walk its
  directory again later" (a set of directories, itself bounded by collapsing
  into the watch root), so a burst never grows memory without bound and
  nothing is dropped silently.

Every method is thread-safe; none blocks except :meth:`wait_for_room` and
:meth:`wait_for_rescan`, which only the walker calls. The pipeline sleeps on
:attr:`Dispatcher.ready`.

Waking a thread costs a futex call and a context switch, on two CPUs shared
with clamd and the writers: producers wake the pipeline only when it has
cleared ``ready`` (it is about to sleep), and wake the walker only when it
waits for room or for a rescan. A burst then moves in batches, not a
wake-up per file.
"""

from __future__ import annotations

import collections
import enum
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from clamwatch.files import CheckedFile

# A file found closed (files.open_unwritten) may still have the event of that
# close to come; when it comes it is the same version. The event can be
# queued after the lease is granted: the closing writer drops its write
# access and queues IN_CLOSE_WRITE as two steps, and a probe fell in between
# once in about a thousand closes (Linux 6.18, measured). So a promotion is
# remembered until the watcher has handed over every event queued up to
# _LATE_CLOSE after it (Dispatcher.events_read), which also waits for a
# reader that lags behind a burst. A fixed two seconds was used before, and
# a loaded daemon read such a close later than that and scanned the file
# twice. Without word from the watcher (none running, or a queue that never
# empties) a promotion is let go after _LATE_CLOSE_CAP: a close after that
# is a new write, as any close is.
_LATE_CLOSE = 2.0
_LATE_CLOSE_CAP = 60.0

_K = TypeVar("_K")
_T = TypeVar("_T")

#: The reason the watcher gives a file's IN_CLOSE_WRITE.
CLOSED_AFTER_WRITE = "closed after write"

# Files promoted by settling while a writer still had them open, whose close
# is still to come: at most this many are remembered (the oldest go first),
# for files a writer keeps open for good (a log). One forgotten is scanned
# again at its close, as before.
MAX_SETTLED_OPEN = 4096
# Lease promotions remembered for their late close (above), at most. Walks
# of big directories promote files by the thousand, and with no new events
# the watcher does not say that they have all been read (events_read), so
# they would stay for _LATE_CLOSE_CAP. The oldest go first: a late close
# comes within seconds, and one forgotten only costs a second scan of the
# same version.
MAX_CLOSED_EARLY = 16_384

# Looks at settling files per settle_check while the taker has no room for
# them (see its ``room``): slow, but never stopped by a queue that stays full.
_MIN_LOOKS = 16

# Directories waiting to be walked again before they collapse into a rescan
# of their whole watch: each costs a path string, the walk costs more.
MAX_RESCANS = 4096


class Mode(enum.Enum):
    DUE = "due"  # scan as soon as there is room
    SETTLE = "settle"  # scan once size and mtime are stable (or at close)


@dataclass(slots=True)
class Work:
    path: str
    watch: str  # the watch's root, as configured
    since: float  # monotonic time of the first event for this version
    reason: str  # close, moved, created, rescan, startup, ...
    if_changed: bool = False  # skip when this version already has its verdict
    newer_than: float | None = None  # startup: skip files unchanged since (epoch s)
    tries: int = 0  # scans that ended in a transport error, or opens short of a descriptor
    # the file as the lease check left it open (settle_check's ``room``), for
    # the scan to take over; whoever drops this Work closes it (_drop_held)
    opened: CheckedFile | None = None


@dataclass(frozen=True, slots=True)
class Rescan:
    directory: str
    watch: str
    reason: str
    mode: Mode = Mode.DUE
    if_changed: bool = True
    newer_than: float | None = None


@dataclass(slots=True)
class _Settling:
    work: Work
    size: int = -1
    mtime_ns: int = -1
    stable_since: float = 0.0


@dataclass(slots=True)
class Snapshot:
    """What is still to do, for the state file at stop."""

    paths: list[tuple[str, str]] = field(default_factory=list)  # (path, watch)
    rescans: list[Rescan] = field(default_factory=list)


class Dispatcher:
    def __init__(
        self, max_pending: int, settle_time: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_pending = max_pending
        self.settle_time = settle_time
        self.clock = clock
        self.cond = threading.Condition()  # guards everything below; the walker waits on it
        # set when there may be work for the pipeline: it clears it before it
        # looks, and sleeps on it when it found nothing (see _wake_taker)
        self.ready = threading.Event()
        # False while the pipeline cannot take more (its window is full): new
        # work then waits without waking it; a finished scan wakes it instead
        self.taker_wants_work = True
        self._room_waiters = 0  # threads inside wait_for_room
        self._pending: dict[str, Work] = {}
        self._settling: dict[str, _Settling] = {}
        # found by a walk since the last check: looked at in the next round
        # (most are finished), not a whole settle period later (an ordered set)
        self._fresh: dict[str, None] = {}
        # the settling files the current full check has yet to look at
        self._pass: collections.deque[str] = collections.deque()
        self._in_flight: dict[str, Work] = {}
        # in flight and to be looked at again after: path -> if_changed (False
        # when an event said the content changed, True when only a walk saw it)
        self._dirty: dict[str, bool] = {}
        self._rescans: dict[str, Rescan] = {}
        # promoted because no writer had them open: path -> when. Their close
        # event may still be queued in the kernel; when it comes it is the
        # same version, so it only counts if the content changed.
        self._closed_early: dict[str, float] = {}
        # promoted by settling while a writer had them open (an ordered set):
        # their close, when it comes, counts only if the content changed
        self._settled_open: dict[str, None] = {}
        # every inotify event queued before this (self.clock() time) has been
        # handed over: see events_read
        self._events_read_until = float("-inf")
        self._delayed: list[tuple[float, Work]] = []
        self.degraded = 0  # paths turned into directory rescans because we were full
        # rescans next_rescan gave out and not yet walked: in the state saved
        # (snapshot) until walk_ended, so a stop or crash meanwhile loses none
        self._walking: dict[str, Rescan] = {}
        # rescans their producer holds back until it lets them go (the walk
        # after inotify overflows waits for them to stop): saved like the rest
        self._held: dict[str, Rescan] = {}
        self.stopping = False

    # -- producers --------------------------------------------------------------------

    def _full(self) -> bool:
        return len(self._pending) + len(self._settling) >= self.max_pending

    def due(self, work: Work) -> None:
        """``work.path`` may have new content: scan it as soon as there is room."""
        with self.cond:
            self._due(work)

    def arrived(self, batch: list[tuple[Mode, Work]]) -> None:
        """:meth:`due` (Mode.DUE) or :meth:`settle` (Mode.SETTLE) for each, in order.

        The watcher hands over what one read of the kernel's queue brought,
        under one lock.
        """
        with self.cond:
            for mode, work in batch:
                if mode is Mode.DUE:
                    self._due(work)
                else:
                    self._settle(work)

    def _wake_taker(self) -> None:
        # Event.set takes a lock and notifies; skip it while already set (the
        # pipeline has not looked yet, so it will find this work anyway).
        if self.taker_wants_work and not self.ready.is_set():
            self.ready.set()

    def _wake_walker(self) -> None:
        """There is room again, or a rescan: wake the walker if it waits for either."""
        self.cond.notify_all()

    def _made_room(self) -> None:
        if self._room_waiters:
            self.cond.notify_all()

    def _due(self, work: Work) -> None:
        path = work.path
        if path in self._closed_early:
            # Scanned since its last writer closed it: anything but a new
            # version is skipped. Only the close event itself ends that (a
            # settled or walked look at the file meanwhile once took it away,
            # and the late close then made a second verdict, measured).
            if not work.if_changed:
                work = replace(work, if_changed=True)
            if work.reason == CLOSED_AFTER_WRITE:
                del self._closed_early[path]
                self._settled_open.pop(path, None)
        elif path in self._settled_open and work.reason == CLOSED_AFTER_WRITE:
            # Its scan came settle_time after its last change, so a write
            # since would show in its size or mtime; the same version is
            # skipped, whichever came first (settling or the close) counts.
            del self._settled_open[path]
            if not work.if_changed:
                work = replace(work, if_changed=True)
        self._settling.pop(path, None)
        if path in self._in_flight:
            _drop_held(work)
            self._mark_dirty(path, work.if_changed)
            return
        old = self._pending.get(path)
        if old is not None:
            _drop_held(work)
            # a newer event: the name may hold another file by now, opened afresh
            _drop_held(old)
            old.if_changed = old.if_changed and work.if_changed
            old.reason = work.reason if not work.if_changed else old.reason
            if work.newer_than is None:
                old.newer_than = None
            return
        if self._full():
            self._turn_away(work)
            return
        self._pending[path] = work
        self._wake_taker()

    def _turn_away(self, work: Work) -> None:
        """No room for ``work``: remember its directory, to be walked when there is.

        The walk finds the directory's other files too, some of them maybe
        still being written: they settle, as in any walk (a lease tells the
        finished ones at once), so none is scanned half-written and then again
        at its close.
        """
        _drop_held(work)
        self.degraded += 1
        self._rescan(
            Rescan(os.path.dirname(work.path) or "/", work.watch, "queue full", Mode.SETTLE)
        )

    def _mark_dirty(self, path: str, if_changed: bool) -> None:
        self._dirty[path] = self._dirty.get(path, True) and if_changed

    def settle(self, work: Work) -> None:
        """A walk found ``work.path``: scan it once it stops changing, or at its close.

        It gets an early look in the pipeline's next round: most files a
        walk finds are finished. (A file's IN_CREATE, which :meth:`arrived`
        settles, waits for the next full check: its writer is usually still
        at it, and its close event is on the way.)
        """
        with self.cond:
            self._settle(work, fresh=True)

    def _settle(self, work: Work, fresh: bool = False) -> None:
        path = work.path
        if path in self._in_flight:
            # A create (often a walk's replay for a directory just watched)
            # is no sign of new content by itself: a file created anew is
            # another inode, which the version check tells apart.
            self._mark_dirty(path, True)
        elif path not in self._pending and path not in self._settling:
            if self._full():
                self._turn_away(work)
            else:
                self._settling[path] = _Settling(work, stable_since=self.clock())
                if fresh:
                    self._fresh[path] = None
                    self._wake_taker()

    def rescan(self, request: Rescan) -> None:
        """Walk ``request.directory`` again (later, in the walker's thread)."""
        with self.cond:
            self._rescan(request)

    def rescan_many(self, requests: Iterable[Rescan]) -> None:
        """:meth:`rescan` for each: the walker, if it waits, is woken once for all."""
        with self.cond:
            for request in requests:
                self._rescan(request)

    def _rescan(self, request: Rescan) -> None:
        if any(parent in self._rescans for parent in _parents(request.directory)):
            return  # that directory, or one above it, will be walked anyway
        if len(self._rescans) >= MAX_RESCANS:
            # collapse everything of this watch into one walk of its root
            for key in [k for k, r in self._rescans.items() if r.watch == request.watch]:
                del self._rescans[key]
            if request.directory != request.watch:
                request = replace(request, directory=request.watch, reason="too many rescans")
        self._rescans[request.directory] = request
        self._wake_walker()

    def hold_rescan(self, request: Rescan) -> None:
        """Keep ``request``, not walked until :meth:`release_rescan` lets it go.

        It is in the :meth:`snapshot` meanwhile, so a stop (or a crash after
        a checkpoint) before then loses no walk. A newer request held for the
        same directory replaces it.
        """
        with self.cond:
            self._held[request.directory] = request

    def release_rescan(self, request: Rescan) -> None:
        """Walk ``request``, held by :meth:`hold_rescan`, as any :meth:`rescan`.

        A newer request held for its directory since stays held.
        """
        with self.cond:
            if self._held.get(request.directory) is request:
                del self._held[request.directory]
            self._rescan(request)

    def retry_later(self, work: Work, delay: float) -> None:
        with self.cond:
            self._in_flight.pop(work.path, None)
            if self._dirty.pop(work.path, True) is False:
                work.if_changed = False  # changed during the failed scan: the retry covers it
            self._delayed.append((self.clock() + delay, work))

    def wait_for_room(self, given_up: threading.Event | None = None) -> int:
        """Block until there is room for one more entry; how many fit now (0 when
        stopping, or once ``given_up`` is set: the walker's stop, which comes
        before the dispatcher's, and would wait for it for ever with no room)."""
        with self.cond:
            self._room_waiters += 1
            try:
                while self._full() and not self.stopping:
                    if given_up is not None and given_up.is_set():
                        return 0
                    self.cond.wait(0.5)
            finally:
                self._room_waiters -= 1
            if self.stopping:
                return 0
            return self.max_pending - len(self._pending) - len(self._settling)

    def walked(self, works: list[Work], mode: Mode) -> None:
        """What a walk found, under one lock: :meth:`settle` or :meth:`due` for each.

        Give no more than :meth:`wait_for_room` said fit; the pipeline, if it
        waits, is woken once.
        """
        with self.cond:
            if mode is Mode.SETTLE:
                for work in works:
                    self._settle(work, fresh=True)
            else:
                for work in works:
                    self._due(work)

    def wait_for_rescan(self, timeout: float) -> None:
        """Block until a rescan waits, the dispatcher stops, or ``timeout`` passes."""
        with self.cond:
            if not self._rescans and not self.stopping:
                self.cond.wait(timeout)

    # -- the pipeline -----------------------------------------------------------------

    def take(self, limit: int) -> list[Work]:
        """Up to ``limit`` entries, oldest first; they count as in flight until done().

        None once stopping: what waits then is saved for the next start
        (snapshot), and only the scans in flight are finished.
        """
        batch: list[Work] = []
        with self.cond:
            if self.stopping:
                return batch
            self._release_delayed()
            # one iterator for the batch: each next(iter(dict)) would walk
            # again over the slots the pops before it left empty
            for path in list(itertools.islice(self._pending, limit)):
                work = self._pending.pop(path)
                self._in_flight[path] = work
                batch.append(work)
            if batch:
                self._made_room()
        return batch

    def _release_delayed(self) -> None:
        if not self._delayed:
            return
        now = self.clock()
        ready = [w for t, w in self._delayed if t <= now]
        self._delayed = [(t, w) for t, w in self._delayed if t > now]
        for work in ready:
            if work.path in self._in_flight:
                # scanned again meanwhile: look again after that scan instead
                self._mark_dirty(work.path, work.if_changed)
            else:
                self._pending.setdefault(work.path, work)

    def done(self, path: str) -> None:
        """The scan of ``path`` ended; scan again if it changed meanwhile."""
        self.done_many([path])

    def done_many(self, paths: list[str]) -> None:
        """:meth:`done` for several paths, under one lock."""
        if not paths:
            return
        with self.cond:
            now = self.clock()
            for path in paths:
                work = self._in_flight.pop(path, None)
                if_changed = self._dirty.pop(path, None)
                if if_changed is not None and work is not None:
                    self._due(Work(path, work.watch, now, "changed during scan", if_changed))

    def next_rescan(self) -> Rescan | None:
        """The next directory to walk; the walker calls :meth:`walk_ended` once it has."""
        with self.cond:
            if not self._rescans:
                return None
            key = next(iter(self._rescans))
            request = self._walking[key] = self._rescans.pop(key)
            return request

    def walk_ended(self, request: Rescan) -> None:
        """The walk of ``request``, from :meth:`next_rescan`, is over (done, or stopped)."""
        with self.cond:
            self._walking.pop(request.directory, None)

    @property
    def passing(self) -> bool:
        """A full check started by :meth:`start_settle_pass` has files left to look at."""
        return bool(self._pass)

    @property
    def looks_waiting(self) -> bool:
        """:meth:`settle_check` has files to look at: fresh ones, or a full check's."""
        return bool(self._fresh or self._pass)

    def start_settle_pass(self) -> None:
        """Start a full check: every settling file is looked at by the next settle_checks.

        The files a walk just found are left out: they get their early look
        (as fresh ones) first anyway.
        """
        with self.cond:
            fresh = self._fresh
            self._pass = collections.deque(p for p in self._settling if p not in fresh)

    def settle_check(
        self,
        stat: Callable[[str], os.stat_result | None],
        unwritten: Callable[[str, os.stat_result], CheckedFile | bool | None] = (
            lambda path, st: False
        ),
        *,
        limit: int | None = None,
        room: int | None = None,
    ) -> None:
        """Promote created files whose size and mtime held still for settle_time.

        ``unwritten(path, st)`` may say sooner that no process has the file
        open for writing (so it is finished); it is then promoted at once.
        When it says so with the file open (files.open_unwritten), the
        promoted Work may keep it for the scan, which then opens nothing.

        With no ``limit``, every settling file is looked at, at once. With
        ``limit``, at most that many: first the ones walks found since they
        were last looked at (each gets one early look, most are finished;
        those still being written wait for the full checks), then the rest
        of the full check that :meth:`start_settle_pass` began. A look costs
        a stat and a lease, so the thousands of files a burst's walks find
        are looked at a slice per round of the pipeline, which feeds clamd
        in between.

        ``room``: how many entries the taker's next take() takes. The slice
        is then fitted to what that leaves after the entries already
        pending (never under _MIN_LOOKS, or ``limit`` if smaller, so that a
        queue that events keep full does not stop the looks for good), and
        the files found finished within it keep their descriptors: they are
        the ones taken next (FIFO; later work queues behind them). Any other
        descriptor is closed here, and the file opened again at its turn.
        """
        with self.cond:
            keep = 0
            if room is not None:
                keep = room - len(self._pending)
                fitted = max(keep, _MIN_LOOKS)
                limit = fitted if limit is None else min(limit, fitted)
            settling = self._settling
            if limit is None:
                entries = list(settling.values())
                self._fresh = {}
                self._pass.clear()
            else:
                fresh = self._fresh
                taken = list(itertools.islice(fresh, limit))
                for path in taken:
                    del fresh[path]
                left = self._pass
                while left and len(taken) < limit:
                    taken.append(left.popleft())
                entries = [settling[p] for p in taken if p in settling]
        now = self.clock()
        promote: list[Work] = []  # held still for settle_time
        closed: list[Work] = []  # no writer has them open any more
        gone: list[str] = []
        for entry in entries:
            st = stat(entry.work.path)
            if st is None:
                gone.append(entry.work.path)
            elif found := unwritten(entry.work.path, st):
                if isinstance(found, CheckedFile):
                    if keep > 0:
                        keep -= 1
                        entry.work.opened = found
                    else:
                        found.close()
                closed.append(entry.work)
            elif (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
                entry.size, entry.mtime_ns, entry.stable_since = st.st_size, st.st_mtime_ns, now
            elif now - entry.stable_since >= self.settle_time:
                promote.append(entry.work)
        probed = self.clock()  # every close the leases saw happened before this
        with self.cond:
            for path in gone:
                self._settling.pop(path, None)
            if gone:
                self._made_room()
            # the Work of a settling entry is the entry's alone: it moves on as it is
            for work in promote:
                if self._settling.get(work.path) is not None:
                    work.reason = f"{work.reason}, settled"
                    self._due(work)
                    self._settled_open.pop(work.path, None)
                    self._settled_open[work.path] = None
            trim_oldest(self._settled_open, MAX_SETTLED_OPEN)
            for work in closed:
                if self.stopping:  # stop() closed what waited: nothing is taken any more
                    _drop_held(work)
                if self._settling.get(work.path) is not None:
                    work.reason = f"{work.reason}, not open for writing"
                    self._due(work)
                    # last in the order of times, which _forget_closed_early relies on
                    self._closed_early.pop(work.path, None)
                    self._closed_early[work.path] = probed
                else:  # made due by an event meanwhile, or gone
                    _drop_held(work)
            self._forget_closed_early(now)
            trim_oldest(self._closed_early, MAX_CLOSED_EARLY)

    def events_read(self, until: float) -> None:
        """The watcher has handed over every event queued before ``until`` (self.clock() time).

        A close seen by a lease _LATE_CLOSE before then will not come late any more.
        """
        with self.cond:
            self._events_read_until = max(self._events_read_until, until)
            self._forget_closed_early(self.clock())

    @property
    def events_read_until(self) -> float | None:
        """The self.clock() time before which the watcher has handed over every
        event the kernel queued; None before it first found the queue empty."""
        with self.cond:
            until = self._events_read_until
        return None if until == float("-inf") else until

    def _forget_closed_early(self, now: float) -> None:
        # _closed_early is in the order of its times: the ones to forget lead
        forget = max(self._events_read_until - _LATE_CLOSE, now - _LATE_CLOSE_CAP)
        early = self._closed_early
        done = itertools.takewhile(lambda item: item[1] < forget, early.items())
        for path in [path for path, _ in done]:
            del early[path]

    # -- status -----------------------------------------------------------------------

    @property
    def depth(self) -> int:
        with self.cond:
            return len(self._pending) + len(self._settling) + len(self._delayed)

    @property
    def backlog(self) -> tuple[int, bool]:
        """Paths turned into rescans for want of room so far, and whether any of that is left.

        Left: the queue is full, or a directory waits to be walked or is being
        walked (which rescan holds such paths is not kept, so any counts).
        """
        with self.cond:
            return self.degraded, self._full() or bool(self._rescans or self._walking)

    @property
    def settling(self) -> int:
        with self.cond:
            return len(self._settling)

    @property
    def idle(self) -> bool:
        """Nothing waits, settles, walks or is in flight."""
        with self.cond:
            return not (
                self._pending
                or self._settling
                or self._in_flight
                or self._rescans
                or self._walking
                or self._held
                or self._delayed
            )

    def oldest(self) -> float | None:
        """The monotonic time of the oldest work not yet done, for the coverage checkpoint."""
        with self.cond:
            times = [w.since for w in self._pending.values()]
            times += [s.work.since for s in self._settling.values()]
            times += [w.since for w in self._in_flight.values()]
            times += [w.since for _, w in self._delayed]
            return min(times) if times else None

    def snapshot(self) -> Snapshot:
        with self.cond:
            works = [
                *self._pending.values(),
                *(s.work for s in self._settling.values()),
                *self._in_flight.values(),
                *(w for _, w in self._delayed),
            ]
            rescans = [*self._walking.values(), *self._rescans.values(), *self._held.values()]
            return Snapshot([(w.path, w.watch) for w in works], rescans)

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            for work in self._pending.values():
                _drop_held(work)
            self.cond.notify_all()
        self.ready.set()


def trim_oldest(entries: dict[_K, _T], limit: int) -> None:
    """Keep the newest ``limit`` of ``entries`` (kept in the order they came).

    Trimmed a sixteenth beyond the limit at a time and in one pass: evicting
    one at a time, next(iter(dict)) walks over every slot the evictions
    before it left empty.
    """
    if len(entries) > limit + limit // 16:
        for stale in list(itertools.islice(entries, len(entries) - limit)):
            del entries[stale]


def _drop_held(work: Work) -> None:
    """Close the file a Work kept from its lease check: it is opened again if scanned."""
    if work.opened is not None:
        work.opened.close()
        work.opened = None


def _parents(directory: str) -> list[str]:
    """``directory`` and every directory above it."""
    found = [directory]
    while True:
        parent = os.path.dirname(directory)
        if parent == directory:
            return found
        found.append(parent)
        directory = parent
