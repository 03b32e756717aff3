"""The inotify backend, on watchdog's inotify wrapper: kernel events in, dispatcher entries out.

Triggers (style.md, design.md): close after write; the destination of a
move into or within the tree; a file created (it settles, in case no close
is seen); a directory created or moved in (watched, then walked: after
mkdir, writes often land before the new directory's watch exists).
Directory-modified noise is never asked for.

watchdog's InotifyObserver would take three threads and a Python event
object per kernel event to get there, and hold moves back half a second to
pair them. A burst of uploads is tens of thousands of events a second on two
CPUs shared with clamd, so this backend drives watchdog's lower layer
(``watchdog.observers.inotify_c``: the descriptor, its watches and its
parsed events) from one thread of its own, "clamwatch-inotify", which hands
each read of the kernel queue to the dispatcher under one lock. A directory
renamed within the tree is paired by its cookie, as the kernel queues the
two halves together (inotify(7)).

The kernel's IN_Q_OVERFLOW, which watchdog's observer only logs (watchdog
issue #654), comes straight to :meth:`TreeWatcher._lost_events`: every tree
is watched again (directories made meanwhile had no watch) and walked again,
once the overflows have stopped (a burst overflows the queue again each time
the reader has emptied it). Roots are supervised by polling their
identity once a second: a root that does not exist yet is waited for, one
deleted and created again is watched afresh and walked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import struct
import termios
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
    inotify_add_watch,
)

from clamwatch.dispatch import CLOSED_AFTER_WRITE, Dispatcher, Mode, Rescan, Work
from clamwatch.eventkind import EventKind, emit
from clamwatch.files import PATH_TOO_LONG, list_directory
from clamwatch.threadnames import name_this_thread
from clamwatch.watch.filters import WatchFilter

log = logging.getLogger(__name__)

_IN = InotifyConstants
# IN_DELETE_SELF and IN_IGNORED (always reported) tell a root is gone;
# IN_DONT_FOLLOW: a symbolic link is never watched through (inotify(7)).
_ROOT_MASK = Mask(
    _IN.IN_CLOSE_WRITE | _IN.IN_CREATE | _IN.IN_MOVED_FROM | _IN.IN_MOVED_TO | _IN.IN_DELETE_SELF
)
_MASK = Mask(_ROOT_MASK | _IN.IN_DONT_FOLLOW)
# ...but the watch's root, which may be a link (the admin's own path, as
# walks follow it): with IN_DONT_FOLLOW the link itself was watched, and
# no event of the folder it leads to came, not one file scanned.
# A directory moved out of the tree and back in within _MOVE_PAIRING gets
# its old watch back from the kernel, with our callback still on it:
# watchdog's RuntimeWarning about replacing it says nothing an admin can use.
warnings.filterwarnings(
    "ignore", message="Callback with id .* already exists", category=RuntimeWarning
)
_READ_SIZE = 256 * 1024  # bytes per read of the kernel queue: a few thousand events
# In a burst, a reader that reads the moment the queue is readable wakes for
# every few files (1,100-8,400 reads for 10,000 files, measured), and each
# read is then handed on by itself. Reads closer together than _BUSY mean a
# burst: the next one waits _GATHER first (the kernel holds 16,384 events by
# default, seconds' worth). Measured on 10,000 files: 440-1,230 reads, and the
# reader's CPU 0.22-0.9 s -> 0.10-0.27 s. A lone file (reads further apart) is
# read at once. The price: a directory made in a burst is watched up to 2 ms
# later, so more of its files are found by its walk than by their close.
_BUSY = 0.005  # seconds
_GATHER = 0.002  # seconds
# With no event for this long, the reader says so (the queue is empty), so
# that the daemon's saved coverage moves on while nothing happens.
_IDLE_TICK = 0.25  # seconds
_MOVE_PAIRING = 1.0  # seconds a directory's IN_MOVED_FROM waits for its IN_MOVED_TO
_SUPERVISE_EVERY = 1.0  # seconds between checks of the watch roots
_REPORT_UNWATCHED_EVERY = 60.0  # seconds between reminders of directories with no watch
_UNWATCHED_NAMED = 3  # directories with no watch named by the reminder (an admin looks there)
# A burst the reader cannot keep up with overflows the kernel's queue again
# each time it has been read empty: 39 overflows in a 3 s burst into 500
# directories with a queue of 128 (measured), and a walk of every tree for
# each, which lost what the next overflow lost again. The trees are watched
# afresh and walked once no overflow came for _OVERFLOW_QUIET, or
# _OVERFLOW_AT_MOST after the first (a burst that does not end).
_OVERFLOW_QUIET = 1.0  # seconds
_OVERFLOW_AT_MOST = 10.0  # seconds
_RETRY_FAILED = 10.0  # seconds before a watch that failed to arm is tried again


class _Batch:
    """What one read of the kernel queue asks of the dispatcher. Reader thread only."""

    def __init__(self) -> None:
        self.arrived: list[tuple[Mode, Work]] = []
        self.rescans: list[Rescan] = []
        self.overflowed = False


class _TreeWatch:
    """One root's watches (a watchdog WatchCallback): events in, batch entries out."""

    def __init__(self, fd: InotifyFD, rules: WatchFilter, batch: _Batch) -> None:
        self.fd = fd
        self.rules = rules
        self.batch = batch
        self._id = CallbackId(id(self))
        self._lock = threading.Lock()  # the maps: the reader and the supervisor change them
        self._active = False
        self._directory: dict[WatchDescriptor, str] = {}
        self._wd: dict[str, WatchDescriptor] = {}
        # The paths of _wd by their parent's: a directory moved takes the
        # watches below it out of the maps without a look at every other one
        # (1 ms a move with 20,000 directories watched, measured: a storm of
        # 6,000 directory renames kept the reader busy for 6.4 s).
        self._below: dict[str, set[str]] = {}
        # A directory moved away, by its IN_MOVED_FROM's cookie: when, and its
        # watches (by path below it, "" for itself), detached from the maps
        # until its IN_MOVED_TO says where in the tree it went, if anywhere.
        self._moved_from: dict[int, tuple[float, dict[str, WatchDescriptor]]] = {}
        # Directories in the tree that could not be watched (the watch limit,
        # a permission), with why: tried again by the supervisor, and walked
        # once watched; and how many were added since the supervisor looked.
        self._unwatched: dict[str, OSError] = {}
        self._unwatched_new = 0

    # -- arming (supervisor thread) -------------------------------------------------

    def arm(self) -> None:
        """Watch the root and every directory below it; OSError when the root fails."""
        with self._lock:
            self._forget()
            self._active = True
            try:
                self._watch_tree(self.rules.root)
            except OSError:
                self._disarm()
                raise

    def disarm(self) -> None:
        with self._lock:
            self._disarm()

    def _disarm(self) -> None:
        self._active = False
        # OSError: the descriptor is closed already (stopping)
        with contextlib.suppress(OSError):
            self.fd.remove_callbacks([(wd, self._id) for wd in self._watches()])
        self._forget()

    def _watches(self) -> list[WatchDescriptor]:
        """Every watch of this tree: in the maps, and detached by a move."""
        detached = [wd for _, moved in self._moved_from.values() for wd in moved.values()]
        return [*self._directory, *detached]

    def _forget(self) -> None:
        self._directory.clear()
        self._wd.clear()
        self._below.clear()
        self._moved_from.clear()
        self._unwatched.clear()

    def rewatch(self) -> None:
        """After an overflow: watch every directory of the tree, drop the watches of those gone.

        Directories made meanwhile have no watch yet, and the IN_IGNORED of
        those deleted may be lost. The watches in use are asked for again,
        not dropped and made anew: each watch dropped queues an IN_IGNORED,
        and a tree of more directories than the queue holds overflowed it
        again, which asked for this again, for ever (measured).
        """
        with self._lock:
            if not self._active:
                return
            watched: set[WatchDescriptor] = set()
            with contextlib.suppress(OSError):  # the root is gone: the supervisor sees to it
                self._watch_tree(self.rules.root, again=watched)
            stale = [wd for wd in self._directory if wd not in watched]
            for wd in stale:
                self._unmap(wd)
            # the kernel dropped most of them already (EINVAL, which watchdog passes over)
            with contextlib.suppress(OSError):
                self.fd.remove_callbacks([(wd, self._id) for wd in stale])

    def _watch_tree(self, top: str, again: set[WatchDescriptor] | None = None) -> None:
        """Watch ``top`` (OSError if it cannot be) and the directories below it (as they can be).

        A directory watched already is not asked for again (watchdog would
        warn about the callback twice), unless ``again`` is given: then every
        directory is, and its watch added to ``again`` (the same watch, for a
        directory that has one: inotify(7); the warning is filtered). The
        kernel queues a deleted directory's IN_IGNORED before any event of
        one made anew under its name, so the name is free by then
        (inotify(7): the queue is ordered). clamwatch's
        own folders (the state directory, the quarantine) get no watch: nothing
        in them is scanned, and a quarantine's moves would only be events to
        read and drop.
        """
        own = self.rules.own_folder
        if own(top) and top != self.rules.root:
            return
        if again is not None:
            again.add(self._watch_again(top))
        elif top not in self._wd:
            self._watch(top)
        stack: list[tuple[str, tuple[int, int] | None]] = [(top, None)]
        while stack:
            directory, expect = stack.pop()
            try:
                # a link is followed only as the watch's root itself; below
                # top, each folder must be the one its parent listed
                listed = list_directory(
                    directory, follow=directory == self.rules.root, expect=expect
                )
            except OSError:
                continue  # gone, unreadable, or swapped for a link meanwhile
            found = [
                (path, directory_id)
                for path, is_directory, directory_id in listed
                if is_directory and not own(path)
            ]
            for path, directory_id in found:
                if again is not None or path not in self._wd:
                    try:
                        wd = self._watch(path) if again is None else self._watch_again(path)
                    except OSError as exc:
                        self._cannot_watch(path, exc)
                        continue
                    if again is not None:
                        again.add(wd)
                stack.append((path, directory_id))

    def _watch_again(self, path: str) -> WatchDescriptor:
        """``path``'s watch asked for again: the one it has, or a new one (OSError if none)."""
        known = self._wd.get(path)
        if known is not None:
            mask = _ROOT_MASK if path == self.rules.root else _MASK
            # straight to the kernel: watchdog's add_callback would warn that
            # the watch has our callback already, for each directory of the tree
            if inotify_add_watch(self.fd._inotify_fd, os.fsencode(path), mask) == known:
                return known
        return self._watch(path)  # new, or replaced by another directory under its name

    def _watch(self, path: str) -> WatchDescriptor:
        mask = _ROOT_MASK if path == self.rules.root else _MASK
        wd = self.fd.add_callback(os.fsencode(path), mask, self, self._id)
        if wd < 0:  # watchdog passes EACCES over in silence
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        self._unmap(wd)  # watched under another path before (renamed, its events lost)
        self._map(path, wd)
        # The kernel gives a directory moved out and back in its old watch
        # (watchdog warns that our callback on it is replaced: the filter at
        # the top): in use again, it is not for _expire_moves to drop.
        self._forget_detached(wd)
        return wd

    def _map(self, path: str, wd: WatchDescriptor) -> None:
        self._directory[wd] = path
        if path not in self._wd:
            self._below.setdefault(os.path.dirname(path), set()).add(path)
        self._wd[path] = wd

    def _unmap(self, wd: WatchDescriptor) -> None:
        """Take ``wd`` out of the maps; its path too, unless another watch has it by now."""
        path = self._directory.pop(wd, None)
        if path is None or self._wd.get(path) != wd:
            return
        del self._wd[path]
        parent = os.path.dirname(path)
        siblings = self._below[parent]
        siblings.discard(path)
        if not siblings:
            del self._below[parent]

    def _forget_detached(self, wd: WatchDescriptor) -> None:
        for _, detached in self._moved_from.values():
            for below in [b for b, w in detached.items() if w == wd]:
                del detached[below]

    # -- events (reader thread) -----------------------------------------------------

    def on_event(self, event: InotifyEvent) -> None:
        mask = event.mask
        with self._lock:
            directory = self._directory.get(event.wd)
            if directory is None or not self._active:
                return
            path = os.path.join(directory, os.fsdecode(event.name)) if event.name else directory
            if mask & _IN.IN_ISDIR:
                self._directory_event(mask, event.cookie, path)
                return
        if mask & (_IN.IN_CLOSE_WRITE | _IN.IN_MOVED_TO | _IN.IN_CREATE) and self.rules.excluded(
            path
        ):
            return
        watch = self.rules.root
        if mask & _IN.IN_CLOSE_WRITE:
            self.batch.arrived.append(
                (Mode.DUE, Work(path, watch, time.monotonic(), CLOSED_AFTER_WRITE))
            )
        elif mask & _IN.IN_MOVED_TO:
            self.batch.arrived.append((Mode.DUE, Work(path, watch, time.monotonic(), "moved in")))
        elif mask & _IN.IN_CREATE:
            self.batch.arrived.append((Mode.SETTLE, Work(path, watch, time.monotonic(), "created")))

    def _directory_event(self, mask: int, cookie: int, path: str) -> None:
        """A directory created, or moved out, in or within the tree. Holds the lock."""
        watch = self.rules.root
        if mask & _IN.IN_MOVED_FROM:
            now = time.monotonic()
            self._expire_moves(now)
            self._moved_from[cookie] = (now, self._detach(path))
            return
        if mask & _IN.IN_CREATE:
            self._watch_tree_quietly(path)
            if not self.rules.excluded(path):
                # files the watch did see arrive are scanned once: the walk
                # skips versions that already have their verdict
                self.batch.rescans.append(Rescan(path, watch, "new directory", Mode.SETTLE))
        elif mask & _IN.IN_MOVED_TO:
            moved = self._moved_from.pop(cookie, None)
            if moved is not None and moved[1]:
                self._attach(path, moved[1])  # renamed within the tree: its watches work on
            else:
                self._watch_tree_quietly(path)  # from outside the tree
            if not self.rules.excluded(path):
                # its files settle: one renamed along with its writer is not
                # scanned half-written (an interim "clean", then its close)
                self.batch.rescans.append(Rescan(path, watch, "directory moved in", Mode.SETTLE))

    def _watch_tree_quietly(self, path: str) -> None:
        try:
            self._watch_tree(path)
        except OSError as exc:
            self._cannot_watch(path, exc)

    def _cannot_watch(self, path: str, exc: OSError) -> None:
        """A directory of the tree has no watch: remember it, unless it is gone."""
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        if path not in self._unwatched:
            self._unwatched_new += 1
        self._unwatched[path] = exc

    def unwatched(self) -> tuple[int, int, OSError | None, list[str]]:
        """Directories with no watch: how many, how many since the last call, the latest why,
        and the first _UNWATCHED_NAMED of them."""
        with self._lock:
            new, self._unwatched_new = self._unwatched_new, 0
            if not self._unwatched:
                return 0, new, None, []
            # the latest why, without copying what may be thousands of entries
            latest = next(reversed(self._unwatched.values()))
            named = list(itertools.islice(self._unwatched, _UNWATCHED_NAMED))
            return len(self._unwatched), new, latest, named

    def retry_unwatched(self) -> list[str]:
        """Watch the directories that could not be watched; those that now are.

        Stops at the first that still fails for a kernel limit: the others
        would too. One that fails again is not new: it is reported with the
        rest every _REPORT_UNWATCHED_EVERY, not at every try.
        """
        with self._lock:
            if not self._active:
                return []
            watched: list[str] = []
            for path in list(self._unwatched):
                del self._unwatched[path]
                try:
                    self._watch_tree(path)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # else gone
                        self._unwatched[path] = exc
                    if exc.errno in (errno.ENOSPC, errno.EMFILE):
                        break
                    continue
                watched.append(path)
            return watched

    def _detach(self, directory: str) -> dict[str, WatchDescriptor]:
        """Take a directory moved away, and those below it, out of the maps.

        Until its IN_MOVED_TO (if any) the events of its watches are not
        taken for paths in the tree, and a directory made anew under its
        name gets watches of its own.
        """
        detached: dict[str, WatchDescriptor] = {}
        stack = [directory]
        while stack:
            path = stack.pop()
            stack.extend(self._below.get(path, ()))
            wd = self._wd.get(path)
            if wd is not None:
                self._unmap(wd)
                detached[path[len(directory) :]] = wd
        return detached

    def _attach(self, directory: str, detached: dict[str, WatchDescriptor]) -> None:
        for below, wd in detached.items():
            self._map(directory + below, wd)

    def expire_moves(self) -> None:
        with self._lock:
            self._expire_moves(time.monotonic())

    def _expire_moves(self, now: float) -> None:
        """Drop the watches of directories moved out of the tree (no IN_MOVED_TO came)."""
        # in the order they were moved: the expired ones lead (a look at
        # each at every move was quadratic in a storm of moves out)
        moved = self._moved_from.items()
        expired = [
            k for k, _ in itertools.takewhile(lambda m: now - m[1][0] > _MOVE_PAIRING, moved)
        ]
        for cookie in expired:
            _, detached = self._moved_from.pop(cookie)
            # OSError: the descriptor is closed (stopping); the watches the
            # kernel dropped meanwhile left the list in on_watch_deleted
            with contextlib.suppress(OSError):
                self.fd.remove_callbacks([(wd, self._id) for wd in detached.values()])

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        """The kernel dropped a watch (its directory was deleted, IN_IGNORED)."""
        with self._lock:
            self._unmap(wd)
            self._forget_detached(wd)

    def on_queue_overflow(self) -> None:
        """Never called: _InotifyReader.handle_event takes IN_Q_OVERFLOW first."""

    def on_events_lost(self) -> None:
        """Never called, as on_queue_overflow (watchdog 7.1.1 and later call it after that)."""


def worth_handling(events: list[InotifyEvent]) -> list[InotifyEvent]:
    """One read of the kernel queue, less the files' IN_CREATE made moot by a later IN_CLOSE_WRITE.

    In a burst most files are created and closed within one read. Their
    creation would queue them to settle, and their close then makes them due
    anyway (the dispatcher keeps the newer event): leaving the creation out
    halves the events handed on, with the same outcome. A creation after the
    close (the name made again, maybe still open) is kept.
    """
    if not any(e.mask & _IN.IN_CLOSE_WRITE for e in events):
        return events
    kept: list[InotifyEvent] = []
    closed_later: set[tuple[int, bytes]] = set()
    for event in reversed(events):
        key = (event.wd, event.name)
        if event.mask & _IN.IN_CLOSE_WRITE:
            closed_later.add(key)
        elif (event.mask & (_IN.IN_CREATE | _IN.IN_ISDIR)) == _IN.IN_CREATE and key in closed_later:
            continue  # a file's creation, closed later in this read
        kept.append(event)
    kept.reverse()
    return kept


class _InotifyReader(InotifyFD):
    """watchdog's inotify descriptor, read by its thread a queue's worth at a time.

    After each read it hands the events over with ``on_read(drained)``:
    ``drained`` is a time.monotonic() time before which every event the kernel
    queued has now been read, or None when more were waiting (a burst).
    An IN_Q_OVERFLOW in the read calls ``on_overflow()`` first.
    """

    def __init__(
        self, on_read: Callable[[float | None], None], on_overflow: Callable[[], None]
    ) -> None:
        super().__init__()
        self.name = "clamwatch-inotify"
        self._on_read = on_read
        self._on_overflow = on_overflow

    def handle_event(self, event: InotifyEvent) -> None:
        if event.is_queue_overflow:
            # Not to watchdog, which would log a warning for each: a burst
            # overflows the queue dozens of times, and clamwatch's
            # overflow-rescan says it once, with what is done about it.
            self._on_overflow()
            return
        super().handle_event(event)

    def run(self) -> None:
        name_this_thread()
        last_read = 0.0
        while self.should_keep_running():
            now = time.monotonic()
            if now - last_read < _BUSY:
                time.sleep(_GATHER)
            # watchdog's own read, given a timeout (read_events() waits for ever)
            buffer = self._read_event_buffer(_READ_SIZE, int(_IDLE_TICK * 1000))
            if not buffer:  # nothing came, or closed
                # Every event queued before now was read: the daemon's saved
                # coverage, which stops at the last time the queue was seen
                # empty, may move on while nothing happens.
                self._hand_over_read(self._drained())
                continue
            last_read = now
            drained = self._drained()
            events = [
                InotifyEvent(wd, mask, cookie, name)
                for wd, mask, cookie, name in self._parse_event_buffer(buffer)
                # as read_events(): the kernel's IN_Q_OVERFLOW comes with wd -1
                if wd != -1 or mask & InotifyConstants.IN_Q_OVERFLOW
            ]
            for event in worth_handling(events):
                try:
                    self.handle_event(event)
                except Exception:
                    log.exception("inotify event %r could not be handled", event)
            self._hand_over_read(drained)

    def _hand_over_read(self, drained: float | None) -> None:
        try:
            self._on_read(drained)
        except Exception:
            log.exception("inotify events could not be handed over")

    def _drained(self) -> float | None:
        """Now, if the kernel's queue is empty (inotify(7): FIONREAD), else None."""
        now = time.monotonic()
        with self._lock:  # watchdog's: no close meanwhile, whose number could be reused
            if self._closed:
                return None
            try:
                waiting = fcntl.ioctl(self._inotify_fd, termios.FIONREAD, b"\0\0\0\0")
            except OSError:
                return None
        # Empty now: every event queued before `now` has been read, by this read or earlier.
        return now if struct.unpack("i", waiting)[0] == 0 else None


@dataclass(slots=True)
class _Root:
    rules: WatchFilter
    tree: _TreeWatch
    armed: bool = False
    identity: tuple[int, int] | None = None
    announced_waiting: bool = False
    retry_at: float = 0.0
    armed_once: bool = False
    unwatched_report_at: float = 0.0  # when unwatched directories are reported again


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
        self._batch = _Batch()
        self._inotify = _InotifyReader(self._hand_over, self._lost_events)
        self._roots = [self._root(rules) for rules in filters]
        self._lock = threading.Lock()  # _roots: changed by update(), walked by the supervisor
        # The overflows since the last walk they asked for was let go: when
        # the first and the latest came, how many, and the walks held for them.
        self._overflow_lock = threading.Lock()  # the reader sets them, the supervisor takes them
        self._overflow_began: float | None = None
        self._overflow_latest = 0.0
        self._overflows = 0
        self._overflow_walks: list[tuple[_TreeWatch, Rescan]] = []
        self.overflows_read = 0  # IN_Q_OVERFLOW since the start
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._supervise, name="clamwatch-watch-roots", daemon=True
        )

    def _root(self, rules: WatchFilter) -> _Root:
        return _Root(rules, _TreeWatch(self._inotify, rules, self._batch))

    def start(self) -> None:
        """Arm every root that exists now (so READY means watching), then supervise."""
        self._inotify.start()
        with self._lock:
            for root in self._roots:
                self._check(root, time.monotonic())
        self._thread.start()

    @property
    def armed(self) -> int:
        return sum(root.armed for root in self._roots)

    # -- the reader thread ----------------------------------------------------------

    def _hand_over(self, drained: float | None = None) -> None:
        batch = self._batch
        if batch.arrived:
            arrived, batch.arrived = batch.arrived, []
            self.dispatcher.arrived(arrived)
        if batch.rescans:
            rescans, batch.rescans = batch.rescans, []
            self.dispatcher.rescan_many(rescans)
        if batch.overflowed:
            batch.overflowed = False
            self._overflowed()
        if drained is not None:
            # the dispatcher's clock is time.monotonic (the daemon's), as ours
            self.dispatcher.events_read(drained)

    def _lost_events(self) -> None:
        """An IN_Q_OVERFLOW in this read: dealt with once the read is handed over."""
        self._batch.overflowed = True
        self.overflows_read += 1

    def _overflowed(self) -> None:
        """Events were lost: walk every tree once the overflows stop (see _OVERFLOW_QUIET).

        Only noted here: watching a large tree afresh takes the reader long
        enough for the queue to overflow again. The walks are held in the
        dispatcher meanwhile, so a stop saves them.
        """
        now = time.monotonic()
        with self._overflow_lock:
            self._overflow_latest = now
            self._overflows += 1
            if self._overflow_began is not None:
                return  # one walk of each tree for all of them
            self._overflow_began = now
            # SETTLE, as the start's walks: a file its writer still has open
            # waits for its close (or settle_time), not scanned half-written
            self._overflow_walks = [
                (
                    root.tree,
                    Rescan(root.rules.root, root.rules.root, "inotify overflow", Mode.SETTLE),
                )
                for root in self._roots
            ]
            for _, request in self._overflow_walks:
                self.dispatcher.hold_rescan(request)
        emit(
            EventKind.OVERFLOW_RESCAN,
            "the kernel's inotify queue overflowed and events were lost; every watched tree is"
            f" walked again once the overflows stop (after {_OVERFLOW_QUIET:.0f} s without one)"
            " (raise fs.inotify.max_queued_events to make this rarer)",
            logging.WARNING,
        )

    def _walk_after_overflows(self, now: float) -> None:
        """Once the overflows have stopped: watch every tree afresh, then walk it."""
        with self._overflow_lock:
            began = self._overflow_began
            if began is None:
                return
            if now - self._overflow_latest < _OVERFLOW_QUIET and now - began < _OVERFLOW_AT_MOST:
                return
            # an overflow from here on holds walks of its own, to come after these
            walks, self._overflow_walks = self._overflow_walks, []
            count, self._overflows = self._overflows, 0
            self._overflow_began = None
        log.info("walking every watched tree after %d inotify queue overflow(s)", count)
        for tree, request in walks:
            tree.rewatch()
            self.dispatcher.release_rescan(request)

    # -- the supervisor thread ------------------------------------------------------

    def _supervise(self) -> None:
        name_this_thread()
        while not self._stop.wait(_SUPERVISE_EVERY):
            now = time.monotonic()
            with self._lock:
                for root in self._roots:
                    self._check(root, now)
                    root.tree.expire_moves()
                    self._watch_late(root, now)
                self._walk_after_overflows(now)

    def _watch_late(self, root: _Root, now: float) -> None:
        """Say which directories have no watch, try them again, walk those that now have one.

        A directory left unwatched (the kernel's watch limit, a permission)
        is walked when it is made, but what is written into it later would be
        missed: an admin must hear of it, and once the limit is raised its
        watch comes and whatever arrived meanwhile is scanned.
        """
        tree = root.tree
        for directory in tree.retry_unwatched():
            log.info("%s is watched now; walking it for what arrived meanwhile", directory)
            self.dispatcher.rescan(Rescan(directory, root.rules.root, "watched late", Mode.SETTLE))
        count, new, reason, named = tree.unwatched()
        if reason is not None and (new or now >= root.unwatched_report_at):
            root.unwatched_report_at = now + _REPORT_UNWATCHED_EVERY
            which = ", ".join(named) + (", ..." if count > len(named) else "")
            emit(
                EventKind.WATCH_FAILED,
                f"{count} director{'y' if count == 1 else 'ies'} under {root.rules.root} cannot"
                f" be watched ({which}): {_explain(reason)}; files written into them are missed"
                f" until then (tried again every {_SUPERVISE_EVERY:.0f} s, then walked)",
                logging.ERROR,
                watch=root.rules.root,
                unwatched=count,
            )

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
                root.rules = root.tree.rules = rules
                kept.append(root)
            for rules in wanted.values():
                root = self._root(rules)
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
        if identity is not None and identity == root.identity and root.armed:
            return
        if root.armed:
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
            root.tree.arm()
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
        root.armed = True
        root.identity, root.armed_once, root.announced_waiting = identity, True, False
        emit(EventKind.WATCH_ARMED, f"watching {path}", watch=path)
        self.on_armed(root.rules, first)

    def _disarm(self, root: _Root) -> None:
        root.armed, root.identity = False, None
        root.tree.disarm()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            for root in self._roots:
                self._disarm(root)
        self._inotify.stop()
        self._inotify.join()


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
    if exc.errno == errno.ENAMETOOLONG:
        return PATH_TOO_LONG
    return exc.strerror or str(exc)
