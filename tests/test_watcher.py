"""The inotify backend on its own: real kernel events into a real dispatcher.

Each test waits for what it expects with a deadline; where something must
not happen, a later event that must happen is awaited first (the kernel's
queue is ordered, so by then the first would have come).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, Mask, WatchDescriptor

from clamwatch.config import WatchConfig
from clamwatch.dispatch import Dispatcher, Mode, Rescan, Work
from clamwatch.eventkind import EventKind
from clamwatch.watch import watchdog_backend
from clamwatch.watch.filters import WatchFilter
from clamwatch.watch.watchdog_backend import TreeWatcher, worth_handling

DEADLINE_SECONDS = 10.0


class Seen:
    """What the dispatcher was handed, taken out as it comes."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.works: list[Work] = []
        self.rescans: list[Rescan] = []

    def _poll(self) -> None:
        self.works += self.dispatcher.take(1000)
        self.dispatcher.done_many([w.path for w in self.works])
        while (request := self.dispatcher.next_rescan()) is not None:
            self.rescans.append(request)

    def wait(self, what: str, found: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            self._poll()
            if found():
                return
            assert time.monotonic() < deadline, f"no {what}; seen {self.reasons()}"
            time.sleep(0.01)

    def work(self, path: Path, reason: str) -> Work:
        self.wait(f"{reason} for {path}", lambda: (str(path), reason) in self.reasons())
        return next(w for w in self.works if (w.path, w.reason) == (str(path), reason))

    def rescan(self, path: Path, reason: str) -> Rescan:
        self.wait(
            f"rescan ({reason}) of {path}",
            lambda: any((r.directory, r.reason) == (str(path), reason) for r in self.rescans),
        )
        return next(r for r in self.rescans if (r.directory, r.reason) == (str(path), reason))

    def reasons(self) -> list[tuple[str, str]]:
        return [(w.path, w.reason) for w in self.works]


@pytest.fixture
def start(watched: Path) -> Iterator[Callable[..., tuple[TreeWatcher, Seen]]]:
    started: list[TreeWatcher] = []

    def run(**watch: object) -> tuple[TreeWatcher, Seen]:
        dispatcher = Dispatcher(max_pending=10_000, settle_time=2.0)
        rules = WatchFilter(WatchConfig(path=watched, name="uploads", **watch))  # type: ignore[arg-type]
        watcher = TreeWatcher([rules], dispatcher, lambda rules, first: None)
        started.append(watcher)
        watcher.start()
        assert watcher.armed == 1
        return watcher, Seen(dispatcher)

    yield run
    for watcher in started:
        watcher.stop()


def test_close_after_write_and_created_files(
    start: Callable[..., tuple[TreeWatcher, Seen]], watched: Path
) -> None:
    _, seen = start()
    path = watched / "upload.bin"
    with path.open("wb") as handle:
        handle.write(b"half")
        seen.wait("a settling entry", lambda: seen.dispatcher.settling == 1)
    work = seen.work(path, "closed after write")
    assert work.watch == str(watched)
    assert seen.dispatcher.settling == 0  # the close replaced the created entry


def test_new_directories_are_watched_and_walked(
    start: Callable[..., tuple[TreeWatcher, Seen]], watched: Path
) -> None:
    _, seen = start()
    deep = watched / "a" / "b" / "c"
    deep.mkdir(parents=True)  # b and c exist before a's watch can
    request = seen.rescan(watched / "a", "new directory")
    assert request.mode is Mode.SETTLE
    # c gets its watch from a's walk or from its own IN_CREATE, whichever
    # comes first: write until a close shows up (files written before
    # that are the walk's to find)
    deadline = time.monotonic() + DEADLINE_SECONDS
    number = 0
    while not any(path.startswith(f"{deep}/late") for path, _ in seen.reasons()):
        assert time.monotonic() < deadline, "c was never watched"
        (deep / f"late{number}").write_bytes(b"x")
        number += 1
        seen.wait("anything", lambda: True)
    assert {reason for path, reason in seen.reasons()} == {"closed after write"}


def test_a_directory_renamed_within_the_tree_keeps_its_watches(
    start: Callable[..., tuple[TreeWatcher, Seen]], watched: Path
) -> None:
    _, seen = start()
    old = watched / "old"
    old.mkdir()
    seen.rescan(old, "new directory")  # asked for once old is watched
    (old / "sub").mkdir()
    seen.rescan(old / "sub", "new directory")
    (old / "sub" / "probe").write_bytes(b"x")
    seen.work(old / "sub" / "probe", "closed after write")
    new = watched / "new"
    old.rename(new)
    seen.rescan(new, "directory moved in")
    (new / "sub" / "after").write_bytes(b"x")
    seen.work(new / "sub" / "after", "closed after write")
    assert not any(path.startswith(str(old) + "/sub/after") for path, _ in seen.reasons())


class WholeLooks(dict[str, WatchDescriptor]):
    """A tree's watches by path, counting each look at all of them."""

    looks = 0

    def __iter__(self) -> Iterator[str]:
        self.looks += 1
        return super().__iter__()

    def keys(self) -> Any:
        self.looks += 1
        return super().keys()

    def items(self) -> Any:
        self.looks += 1
        return super().items()

    def values(self) -> Any:
        self.looks += 1
        return super().values()


def test_a_directory_renamed_takes_its_watches_along_without_a_look_at_all_the_others(
    start: Callable[..., tuple[TreeWatcher, Seen]], watched: Path
) -> None:
    """A rename looked at every watch of the tree to find those below the directory:
    1 ms a rename with 20,000 directories watched, and a storm of 6,000 renames kept
    the reader from the kernel's queue for 6.4 s (measured)."""
    watcher, seen = start()
    (watched / "a" / "b" / "c").mkdir(parents=True)
    (watched / "x" / "y").mkdir(parents=True)
    seen.rescan(watched / "x", "new directory")
    (watched / "a" / "b" / "c" / "probe").write_bytes(b"x")
    seen.work(watched / "a" / "b" / "c" / "probe", "closed after write")  # c is watched
    (tree,) = [root.tree for root in watcher._roots]
    with tree._lock:
        tree._wd = counted = WholeLooks(tree._wd)
    (watched / "a").rename(watched / "x" / "a")
    (watched / "x").rename(watched / "z")
    seen.rescan(watched / "z", "directory moved in")
    (watched / "z" / "a" / "b" / "c" / "after").write_bytes(b"x")
    seen.work(watched / "z" / "a" / "b" / "c" / "after", "closed after write")
    assert counted.looks == 0


def test_a_directory_moved_out_and_made_again_under_its_name_is_watched(
    start: Callable[..., tuple[TreeWatcher, Seen]],
    watched: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The watches of a directory moved out of the tree go with it: a new one
    made under the old name gets its own, and the old one's events are not
    taken for the new one's."""
    watcher, seen = start()
    name = watched / "incoming"
    name.mkdir()
    seen.rescan(name, "new directory")  # asked for once it is watched
    (name / "probe").write_bytes(b"x")
    seen.work(name / "probe", "closed after write")
    away = tmp_path / "away"
    name.rename(away)
    name.mkdir()
    seen.wait(
        "a second walk of the new directory",
        lambda: sum(r.directory == str(name) for r in seen.rescans) == 2,
    )
    (away / "gone").write_bytes(b"x")  # in the old directory, out of the tree now
    (name / "after").write_bytes(b"x")
    seen.work(name / "after", "closed after write")
    assert (str(name / "gone"), "closed after write") not in seen.reasons()
    # the moved-out directory's watch is dropped once no IN_MOVED_TO can pair with it
    seen.wait("the moved-out directory's watch dropped", lambda: watches(watcher) == 2)
    assert not [r for r in caplog.records if r.name.startswith("watchdog")]


@pytest.mark.filterwarnings("ignore:Callback with id")  # as the backend's own filter does
def test_a_directory_moved_out_and_straight_back_keeps_a_working_watch(
    start: Callable[..., tuple[TreeWatcher, Seen]],
    watched: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watcher, seen = start()
    name = watched / "incoming"
    name.mkdir()
    seen.rescan(name, "new directory")
    name.rename(tmp_path / "away")
    (tmp_path / "away").rename(name)  # the kernel gives it its old watch back
    seen.rescan(name, "directory moved in")
    # the moved-out entry expires now, not in a second
    monkeypatch.setattr(watchdog_backend, "_MOVE_PAIRING", 0.0)
    for root in watcher._roots:
        root.tree.expire_moves()
    (name / "after").write_bytes(b"x")
    seen.work(name / "after", "closed after write")
    assert watches(watcher) == 2


def watches(watcher: TreeWatcher) -> int:
    """The kernel's count of this watcher's inotify watches (proc(5): fdinfo)."""
    fdinfo = Path(f"/proc/self/fdinfo/{watcher._inotify._inotify_fd}").read_text()
    return sum(line.startswith("inotify wd:") for line in fdinfo.splitlines())


def test_a_directory_the_watch_limit_leaves_out_is_reported_and_watched_once_it_can_be(
    start: Callable[..., tuple[TreeWatcher, Seen]],
    watched: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """inotify_add_watch fails with ENOSPC for one new directory (as at the kernel's
    fs.inotify.max_user_watches): it is still walked, the admin is told what to raise,
    and once a watch can be had it gets one and is walked again."""
    watcher, seen = start()
    inotify = watcher._inotify
    add_callback = inotify.add_callback
    limited = watched / "limited"

    def at_the_limit(path: bytes, *args: Any) -> WatchDescriptor:
        if path == os.fsencode(limited):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return add_callback(path, *args)

    monkeypatch.setattr(inotify, "add_callback", at_the_limit)
    with caplog.at_level(logging.WARNING, logger="clamwatch.events"):
        limited.mkdir()
        seen.rescan(limited, "new directory")  # what it holds now is scanned anyway
        seen.wait("the watch limit reported", lambda: failures(caplog) != [])
    (message,) = failures(caplog)
    assert message.startswith(f"1 directory under {watched} cannot be watched ({limited}): ")
    assert "fs.inotify.max_user_watches" in message
    monkeypatch.setattr(inotify, "add_callback", add_callback)  # the limit is raised
    request = seen.rescan(limited, "watched late")
    assert request.mode is Mode.SETTLE
    (limited / "after").write_bytes(b"x")
    seen.work(limited / "after", "closed after write")


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    failed = EventKind.WATCH_FAILED
    return [r.getMessage() for r in caplog.records if getattr(r, "event", None) is failed]


def test_a_file_moved_in_from_outside(
    start: Callable[..., tuple[TreeWatcher, Seen]], watched: Path, tmp_path: Path
) -> None:
    _, seen = start()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    outside.rename(watched / "inside.bin")
    seen.work(watched / "inside.bin", "moved in")


def test_excluded_files_are_never_handed_over(
    start: Callable[..., tuple[TreeWatcher, Seen]], watched: Path
) -> None:
    _, seen = start(exclude=("*.part",))
    (watched / "a.part").write_bytes(b"x")
    (watched / "b").write_bytes(b"x")
    seen.work(watched / "b", "closed after write")
    assert all(not path.endswith(".part") for path, _ in seen.reasons())


def test_an_overflow_walks_the_tree_and_watches_it_afresh(
    start: Callable[..., tuple[TreeWatcher, Seen]],
    watched: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    watcher, seen = start()
    (watched / "sub").mkdir()
    seen.rescan(watched / "sub", "new directory")
    # what the kernel queues when events were dropped (inotify(7): wd -1)
    overflow = InotifyEvent(WatchDescriptor(-1), Mask(InotifyConstants.IN_Q_OVERFLOW), 0, b"")
    with caplog.at_level(logging.WARNING, logger="clamwatch.events"):
        watcher._inotify.handle_event(overflow)
        watcher._hand_over()  # as the reader thread does after each read
    kinds = [getattr(r, "event", None) for r in caplog.records]
    assert any(kind is not None and kind.value == "overflow-rescan" for kind in kinds)
    # its files settle, as at the start: one still being written is not
    # scanned half-written (an interim "clean", then the detection at its close)
    assert seen.rescan(watched, "inotify overflow").mode is Mode.SETTLE
    (watched / "sub" / "after").write_bytes(b"x")
    seen.work(watched / "sub" / "after", "closed after write")


_MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


def with_short_queue(events: int, make: Callable[[], TreeWatcher]) -> TreeWatcher:
    """``make()`` with the kernel's inotify queue ``events`` long.

    The kernel reads fs.inotify.max_queued_events when an inotify instance is
    made (inotify(7)): it is lowered only for that instant, and restored.
    """
    before = _MAX_QUEUED.read_text()
    _MAX_QUEUED.write_text(f"{events}\n")
    try:
        return make()
    finally:
        _MAX_QUEUED.write_text(before)


def test_a_burst_that_overflows_the_queue_again_and_again_walks_each_tree_once(
    watched: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A queue of 16 events and a burst of 3,000 files: the kernel's queue overflows
    each time the reader has emptied it. One overflow-rescan for the burst, one
    walk of the tree once the overflows stop, not one of each for every overflow;
    and watching the tree afresh (31 directories, more than the queue holds) does
    not overflow it again."""
    dispatcher = Dispatcher(max_pending=100_000, settle_time=2.0)
    rules = WatchFilter(WatchConfig(path=watched, name="uploads"))
    watcher = with_short_queue(
        16, lambda: TreeWatcher([rules], dispatcher, lambda rules, first: None)
    )
    seen = Seen(dispatcher)
    directories = [watched / f"d{n}" for n in range(30)]
    for directory in directories:
        directory.mkdir()
    watcher.start()
    try:
        with caplog.at_level(logging.WARNING):
            for number in range(3000):
                (directories[number % 30] / f"f{number}").write_bytes(b"x")
            seen.rescan(watched, "inotify overflow")
            # the queue is ordered: once this close is read, so is every overflow of the burst
            (watched / "probe").write_bytes(b"x")
            seen.work(watched / "probe", "closed after write")
    finally:
        watcher.stop()
    overflows = watcher.overflows_read
    assert overflows >= 2, "the burst did not overflow the queue again and again"
    kinds = [getattr(r, "event", None) for r in caplog.records]
    assert kinds.count(EventKind.OVERFLOW_RESCAN) == 1, f"{overflows} overflows"
    # and not watchdog's warning for each of them
    assert not [r for r in caplog.records if r.name.startswith("watchdog")]
    walks = [r for r in seen.rescans if r.reason == "inotify overflow"]
    assert len(walks) == 1, f"{len(walks)} walks for {overflows} overflows"
    assert dispatcher.snapshot().rescans == walks  # none held back any more


def test_stop_leaves_no_watches_and_no_threads(watched: Path) -> None:
    dispatcher = Dispatcher(max_pending=100, settle_time=2.0)
    rules = WatchFilter(WatchConfig(path=watched, name="uploads"))
    watcher = TreeWatcher([rules], dispatcher, lambda rules, first: None)
    watcher.start()
    fd_count = len(os.listdir("/proc/self/fd"))
    watcher.stop()
    assert watcher.armed == 0
    assert len(os.listdir("/proc/self/fd")) < fd_count  # the inotify descriptor is closed


def test_a_files_creation_is_left_out_when_its_close_is_in_the_same_read() -> None:
    flag = InotifyConstants

    def event(wd: int, mask: int, name: bytes) -> InotifyEvent:
        return InotifyEvent(WatchDescriptor(wd), Mask(mask), 0, name)

    created_and_closed = event(1, flag.IN_CREATE, b"a")
    created_only = event(1, flag.IN_CREATE, b"b")
    same_name_elsewhere = event(2, flag.IN_CREATE, b"a")  # another directory's "a"
    directory = event(1, flag.IN_CREATE | flag.IN_ISDIR, b"c")
    closes = [event(1, flag.IN_CLOSE_WRITE, b"a"), event(1, flag.IN_CLOSE_WRITE, b"c")]
    made_again = event(1, flag.IN_CREATE, b"a")  # after its close: maybe still open
    read = [created_and_closed, created_only, same_name_elsewhere, directory, *closes, made_again]
    assert worth_handling(read) == [
        created_only, same_name_elsewhere, directory, *closes, made_again,
    ]  # fmt: skip
    no_closes = [created_and_closed, created_only, directory]
    assert worth_handling(no_closes) == no_closes


def test_the_reader_says_when_it_has_read_every_queued_event(
    start: Callable[..., tuple[TreeWatcher, Seen]], watched: Path
) -> None:
    """What lets the dispatcher forget a lease promotion: no close for it can come any more."""
    _, seen = start()
    before = time.monotonic()
    (watched / "a").write_bytes(b"x")
    seen.work(watched / "a", "closed after write")
    # the read that brought the close emptied the queue, after `before`
    seen.wait("word that the queue was read", lambda: seen.dispatcher._events_read_until > before)
    assert seen.dispatcher._events_read_until <= time.monotonic()


def test_an_idle_reader_still_says_the_queue_is_read(
    start: Callable[..., tuple[TreeWatcher, Seen]],
) -> None:
    """With nothing happening the daemon's saved coverage must still move on:
    it stops at the last time the reader found the kernel's queue empty."""
    _, seen = start()
    for _ in range(2):
        now = time.monotonic()
        seen.wait(
            "word that the queue was read",
            lambda now=now: seen.dispatcher._events_read_until > now,  # type: ignore[misc]
        )


def test_events_left_in_the_queue_are_not_said_to_be_read(watched: Path) -> None:
    """A reader held up (here in its hand-over) leaves a close in the kernel's
    queue: the dispatcher must not hear that the queue was read past it."""
    release = threading.Event()
    holding = threading.Event()

    class Held(Dispatcher):
        def arrived(self, batch: list[tuple[Mode, Work]]) -> None:
            holding.set()
            release.wait(DEADLINE_SECONDS)
            super().arrived(batch)

    dispatcher = Held(max_pending=10_000, settle_time=2.0)
    rules = WatchFilter(WatchConfig(path=watched, name="uploads"))
    watcher = TreeWatcher([rules], dispatcher, lambda rules, first: None)
    watcher.start()
    try:
        (watched / "first").write_bytes(b"x")
        assert holding.wait(DEADLINE_SECONDS), "the reader handed nothing over"
        written = time.monotonic()
        (watched / "second").write_bytes(b"x")  # queued, unread while the reader is held
        time.sleep(0.6)  # two idle ticks' worth: a reader that is not held would say so
        until = dispatcher.events_read_until
        assert until is None or until < written
        release.set()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while (dispatcher.events_read_until or 0.0) <= written:
            assert time.monotonic() < deadline, "the queue was never said to be read"
            time.sleep(0.01)
    finally:
        release.set()
        watcher.stop()
