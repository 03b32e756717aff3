"""The dispatcher: one entry per path, rescans after scans, settling, bounds.

Pure and fast: a fake clock drives time and a fake stat function stands in
for the disk. Threads appear only where blocking and waking up is the point,
and there they wait on events with a deadline, never on a sleep.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from clamwatch import dispatch
from clamwatch.dispatch import CLOSED_AFTER_WRITE, Dispatcher, Mode, Rescan, Work
from clamwatch.files import CheckedFile, FileIdentity, open_unwritten
from clamwatch.pipeline import SeenVersions

WATCH = "/srv/up"
# Generous: only reached when the code under test hangs.
DEADLINE_SECONDS = 5.0


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def stat_result(
    size: int,
    mtime_ns: int,
    *,
    ino: int = 1,
    dev: int = 1,
    uid: int = 0,
    atime_ns: int = 0,
    ctime_ns: int = 0,
) -> os.stat_result:
    """A stat result as os.lstat gives it, nanosecond fields included.

    Built from the 10 sequence fields alone, CPython leaves st_mtime_ns (and
    the other *_ns and float time fields past index 9) as None: it does not
    derive them from the integer mtime at index 8. The dispatcher and
    SeenVersions compare st_mtime_ns, so a test built that way would never
    see an mtime change. The named fields are passed explicitly instead.
    """
    return os.stat_result(
        (0o100644, ino, dev, 1, uid, 0, size, atime_ns // 10**9, mtime_ns // 10**9,
         ctime_ns // 10**9),
        {
            "st_atime": atime_ns / 1e9,
            "st_mtime": mtime_ns / 1e9,
            "st_ctime": ctime_ns / 1e9,
            "st_atime_ns": atime_ns,
            "st_mtime_ns": mtime_ns,
            "st_ctime_ns": ctime_ns,
        },
    )  # fmt: skip


class FakeDisk:
    """``stat`` for settle_check: path -> what lstat would return (None: gone)."""

    def __init__(self) -> None:
        self.files: dict[str, os.stat_result | None] = {}
        self.calls: list[str] = []

    def __call__(self, path: str) -> os.stat_result | None:
        self.calls.append(path)
        return self.files.get(path)


class WaitSpy(threading.Condition):
    """A Condition that says when someone started waiting on it.

    Lets a test know a thread is really blocked inside wait_for_room (it has
    released the lock and waits for a notify) before it makes room.
    """

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def disk() -> FakeDisk:
    return FakeDisk()


def make(clock: FakeClock, max_pending: int = 100, settle_time: float = 2.0) -> Dispatcher:
    return Dispatcher(max_pending, settle_time, clock=clock)


def work(
    path: str,
    since: float,
    reason: str = "closed after write",
    *,
    if_changed: bool = False,
    newer_than: float | None = None,
    watch: str = WATCH,
) -> Work:
    return Work(path, watch, since, reason, if_changed=if_changed, newer_than=newer_than)


def paths(batch: list[Work]) -> list[str]:
    return [w.path for w in batch]


def drain_rescans(d: Dispatcher) -> Iterator[Rescan]:
    while (request := d.next_rescan()) is not None:
        yield request


# -- one entry per path ---------------------------------------------------------------


def test_a_newer_event_keeps_one_entry_and_the_older_time(clock: FakeClock) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", since=1.0, reason="moved in"))
    d.due(work("/srv/up/a", since=5.0, reason="closed after write"))
    assert d.depth == 1
    (taken,) = d.take(10)
    assert taken.since == 1.0  # latency counts from the first event
    assert taken.reason == "closed after write"  # the newer explicit event says why
    assert d.take(10) == []


def test_an_explicit_event_overrides_a_walks_if_changed(clock: FakeClock) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0, "rescan", if_changed=True, newer_than=50.0))
    d.due(work("/srv/up/a", 2.0, "closed after write", if_changed=False))
    (taken,) = d.take(10)
    assert taken.if_changed is False
    assert taken.reason == "closed after write"
    assert taken.newer_than is None  # an event is never skipped as "unchanged"
    assert taken.since == 1.0


def test_a_walk_after_an_explicit_event_does_not_weaken_it(clock: FakeClock) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0, "closed after write", if_changed=False))
    d.due(work("/srv/up/a", 2.0, "rescan", if_changed=True, newer_than=50.0))
    (taken,) = d.take(10)
    assert taken.if_changed is False
    assert taken.reason == "closed after write"
    assert taken.newer_than is None
    assert taken.since == 1.0


def test_two_walks_keep_if_changed(clock: FakeClock) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0, "rescan", if_changed=True))
    d.due(work("/srv/up/a", 2.0, "queue full", if_changed=True))
    (taken,) = d.take(10)
    assert taken.if_changed is True
    assert taken.reason == "rescan"


def test_take_returns_oldest_first_up_to_the_limit_and_moves_them_in_flight(
    clock: FakeClock,
) -> None:
    d = make(clock)
    for i, name in enumerate(["a", "b", "c"]):
        d.due(work(f"/srv/up/{name}", since=float(i)))
    d.due(work("/srv/up/a", since=9.0))  # coalesced: keeps a's place in line
    assert paths(d.take(2)) == ["/srv/up/a", "/srv/up/b"]
    assert d.depth == 1  # in flight is no longer waiting
    assert not d.idle
    # an in-flight path is not handed out again, even after a new event
    d.due(work("/srv/up/a", since=10.0))
    assert paths(d.take(10)) == ["/srv/up/c"]
    assert d.take(10) == []
    assert sorted(p for p, _ in d.snapshot().paths) == ["/srv/up/a", "/srv/up/b", "/srv/up/c"]


def test_take_with_nothing_waiting_is_empty(clock: FakeClock) -> None:
    d = make(clock)
    assert d.take(10) == []
    assert d.idle


# -- changed while in flight ----------------------------------------------------------


def test_an_event_during_the_scan_queues_the_path_again_after_done(clock: FakeClock) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0, "rescan", if_changed=True))
    assert paths(d.take(10)) == ["/srv/up/a"]
    d.due(work("/srv/up/a", 2.0, "closed after write"))
    assert d.take(10) == []  # not twice at once
    assert d.depth == 0
    clock.advance(3.0)
    d.done("/srv/up/a")
    (again,) = d.take(10)
    assert again.path == "/srv/up/a"
    assert again.watch == WATCH
    assert again.reason == "changed during scan"
    assert again.if_changed is False
    d.done("/srv/up/a")
    assert d.take(10) == []
    assert d.idle


def test_a_walk_during_the_scan_queues_the_path_again_with_if_changed(clock: FakeClock) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0))
    d.take(10)
    d.due(work("/srv/up/a", 2.0, "rescan", if_changed=True))
    d.done("/srv/up/a")
    (again,) = d.take(10)
    assert again.reason == "changed during scan"
    assert again.if_changed is True


def test_a_walks_settle_during_the_scan_queues_the_path_again_with_if_changed(
    clock: FakeClock,
) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0))
    d.take(10)
    d.settle(work("/srv/up/a", 2.0, "new directory", if_changed=True))
    assert d.settling == 0  # no second entry while in flight
    d.done("/srv/up/a")
    (again,) = d.take(10)
    assert again.reason == "changed during scan"
    assert again.if_changed is True


@pytest.mark.parametrize("walk_first", [True, False])
def test_an_event_and_a_walk_during_the_scan_queue_without_if_changed(
    clock: FakeClock, walk_first: bool
) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0))
    d.take(10)
    walk = work("/srv/up/a", 2.0, "rescan", if_changed=True)
    event = work("/srv/up/a", 3.0, "closed after write")
    for w in (walk, event) if walk_first else (event, walk):
        d.due(w)
    d.done("/srv/up/a")
    (again,) = d.take(10)
    assert again.if_changed is False


def test_a_created_event_during_the_scan_queues_a_version_check(clock: FakeClock) -> None:
    """A create is no sign of new content by itself (watchdog replays creates for a
    directory it starts watching); a file created anew is another inode, and the
    version check (path, device, inode, size, mtime) scans it again."""
    d = make(clock)
    d.due(work("/srv/up/a", 1.0))
    d.take(10)
    d.settle(work("/srv/up/a", 2.0, "created"))
    d.done("/srv/up/a")
    (again,) = d.take(10)
    assert again.if_changed is True


def test_no_event_during_the_scan_queues_nothing(clock: FakeClock) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0))
    d.take(10)
    d.done("/srv/up/a")
    assert d.take(10) == []
    assert d.idle
    assert d.oldest() is None


def test_done_for_an_unknown_path_is_harmless(clock: FakeClock) -> None:
    d = make(clock)
    d.done("/srv/up/never-taken")
    assert d.idle


# -- settling -------------------------------------------------------------------------


def test_a_created_file_is_promoted_once_size_and_mtime_held_still(
    clock: FakeClock, disk: FakeDisk
) -> None:
    d = make(clock, settle_time=2.0)
    created_at = clock.now
    d.settle(work("/srv/up/new", created_at, "created"))
    assert d.settling == 1

    disk.files["/srv/up/new"] = stat_result(10, 1_000_000_000)
    d.settle_check(disk)  # first look: starts the stable period
    clock.advance(1.9)
    d.settle_check(disk)
    assert d.take(10) == []
    assert d.settling == 1

    clock.advance(0.1)  # 2.0 s unchanged
    d.settle_check(disk)
    assert d.settling == 0
    (taken,) = d.take(10)
    assert taken.path == "/srv/up/new"
    assert taken.reason == "created, settled"
    assert taken.since == created_at


def test_the_close_of_a_file_promoted_by_settling_counts_only_if_changed(
    clock: FakeClock, disk: FakeDisk
) -> None:
    """Settled while its writer held it open, scanned; its close later is the same version.

    Whichever comes first, settling or the close: the close after a settled
    scan is a version check (if_changed), not a second scan of the same
    content. The close of a file that was never promoted stays a scan.
    """
    d = make(clock, settle_time=2.0)
    d.settle(work("/srv/up/held", clock.now, "created"))
    disk.files["/srv/up/held"] = stat_result(10, 1_000_000_000)
    d.settle_check(disk)  # the default: a writer still has it open
    clock.advance(2.0)
    d.settle_check(disk)
    (taken,) = d.take(10)
    assert taken.reason == "created, settled"
    d.done(taken.path)
    d.due(work("/srv/up/never-settled", clock.now, CLOSED_AFTER_WRITE))
    (plain,) = d.take(10)
    assert not plain.if_changed

    d.due(work("/srv/up/held", clock.now, CLOSED_AFTER_WRITE))
    (close,) = d.take(10)
    assert close.if_changed  # the pipeline skips it when the version has its verdict
    d.done(close.path)
    d.due(work("/srv/up/held", clock.now, CLOSED_AFTER_WRITE))  # a second close: a new write
    (again,) = d.take(10)
    assert not again.if_changed


def test_files_promoted_by_settling_are_remembered_up_to_a_bound(
    clock: FakeClock, disk: FakeDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "MAX_SETTLED_OPEN", 2)
    d = make(clock, settle_time=2.0)
    names = [f"/srv/up/log{n}" for n in range(3)]
    for name in names:
        d.settle(work(name, clock.now, "created"))
        disk.files[name] = stat_result(10, 1_000_000_000)
    d.settle_check(disk)
    clock.advance(2.0)
    d.settle_check(disk)
    d.done_many(paths(d.take(10)))
    for name in names:
        d.due(work(name, clock.now, CLOSED_AFTER_WRITE))
    closes = {w.path: w.if_changed for w in d.take(10)}
    assert closes == {names[0]: False, names[1]: True, names[2]: True}  # the oldest forgotten


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(stat_result(20, 1_000_000_000), id="size"),
        # the same size, 1 ns later: only st_mtime_ns tells the difference
        pytest.param(stat_result(10, 1_000_000_001), id="mtime"),
    ],
)
def test_a_change_of_size_or_mtime_restarts_the_settle_time(
    clock: FakeClock, disk: FakeDisk, changed: os.stat_result
) -> None:
    d = make(clock, settle_time=2.0)
    d.settle(work("/srv/up/new", clock.now, "created"))
    disk.files["/srv/up/new"] = stat_result(10, 1_000_000_000)
    d.settle_check(disk)
    clock.advance(1.5)
    disk.files["/srv/up/new"] = changed
    d.settle_check(disk)  # still being written: the stable period starts again
    clock.advance(1.5)  # 3.0 s since the first look, 1.5 s since the change
    d.settle_check(disk)
    assert d.take(10) == []
    assert d.settling == 1
    clock.advance(0.5)
    d.settle_check(disk)
    assert paths(d.take(10)) == ["/srv/up/new"]


def test_the_first_look_never_promotes(clock: FakeClock, disk: FakeDisk) -> None:
    d = make(clock, settle_time=2.0)
    d.settle(work("/srv/up/new", clock.now, "created"))
    clock.advance(60.0)  # settle() long ago, but nobody looked at the file yet
    disk.files["/srv/up/new"] = stat_result(10, 1_000_000_000)
    d.settle_check(disk)
    assert d.take(10) == []
    assert d.settling == 1


def test_a_close_before_the_settle_time_promotes_at_once(clock: FakeClock, disk: FakeDisk) -> None:
    d = make(clock, settle_time=2.0)
    d.settle(work("/srv/up/new", clock.now, "created"))
    disk.files["/srv/up/new"] = stat_result(10, 1_000_000_000)
    d.settle_check(disk)
    clock.advance(0.1)
    d.due(work("/srv/up/new", clock.now, "closed after write"))
    assert d.settling == 0
    assert d.depth == 1
    (taken,) = d.take(10)
    assert taken.reason == "closed after write"
    clock.advance(5.0)
    d.settle_check(disk)  # nothing left to promote a second time
    assert d.take(10) == []


def test_a_vanished_file_is_dropped(clock: FakeClock, disk: FakeDisk) -> None:
    d = make(clock)
    d.settle(work("/srv/up/gone", clock.now, "created"))
    disk.files["/srv/up/gone"] = None
    d.settle_check(disk)
    assert d.settling == 0
    assert d.take(10) == []
    assert d.idle
    assert d.snapshot().paths == []


def test_settle_for_a_pending_path_adds_no_second_entry(clock: FakeClock) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0))
    d.settle(work("/srv/up/a", 2.0, "created"))
    assert d.settling == 0
    assert d.depth == 1
    assert paths(d.take(10)) == ["/srv/up/a"]


def test_settle_for_a_settling_path_keeps_the_first(clock: FakeClock, disk: FakeDisk) -> None:
    d = make(clock, settle_time=2.0)
    d.settle(work("/srv/up/a", 1.0, "created"))
    d.settle(work("/srv/up/a", 2.0, "created"))
    assert d.settling == 1
    assert d.depth == 1
    assert d.oldest() == 1.0
    disk.files["/srv/up/a"] = stat_result(10, 1_000_000_000)
    d.settle_check(disk)
    clock.advance(2.0)
    d.settle_check(disk)
    (taken,) = d.take(10)
    assert taken.since == 1.0


def test_settle_for_a_path_in_flight_adds_no_entry(clock: FakeClock, disk: FakeDisk) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0))
    d.take(10)
    d.settle(work("/srv/up/a", 2.0, "created"))
    assert d.settling == 0
    assert d.depth == 0
    d.settle_check(disk)
    assert disk.calls == []  # nothing settles, so nothing is looked at


# -- bounded --------------------------------------------------------------------------


def test_a_full_queue_turns_a_new_path_into_a_rescan_of_its_directory(
    clock: FakeClock,
) -> None:
    d = make(clock, max_pending=3)
    for name in ("a", "b", "c"):
        d.due(work(f"/srv/up/{name}", 1.0))
    d.due(work("/srv/up/sub/d", 2.0))
    assert d.depth == 3
    assert d.degraded == 1
    # settling: the walk may find files still being written beside it
    assert list(drain_rescans(d)) == [Rescan("/srv/up/sub", WATCH, "queue full", Mode.SETTLE)]
    assert "/srv/up/sub/d" not in [p for p, _ in d.snapshot().paths]


def test_a_full_queue_still_merges_events_for_waiting_paths(clock: FakeClock) -> None:
    d = make(clock, max_pending=2)
    d.due(work("/srv/up/a", 1.0, "rescan", if_changed=True))
    d.due(work("/srv/up/b", 1.0))
    d.due(work("/srv/up/a", 2.0))
    assert d.degraded == 0
    assert d.next_rescan() is None
    assert d.take(1)[0].if_changed is False


def test_settling_files_count_towards_the_bound(clock: FakeClock) -> None:
    d = make(clock, max_pending=2)
    d.settle(work("/srv/up/a", 1.0, "created"))
    d.due(work("/srv/up/b", 1.0))
    d.settle(work("/srv/up/sub/c", 2.0, "created"))
    d.due(work("/srv/up/other/d", 2.0))
    assert d.depth == 2
    assert d.degraded == 2
    assert list(drain_rescans(d)) == [
        Rescan("/srv/up/sub", WATCH, "queue full", Mode.SETTLE),
        Rescan("/srv/up/other", WATCH, "queue full", Mode.SETTLE),
    ]


def test_the_pending_count_never_exceeds_the_bound(clock: FakeClock) -> None:
    bound = 5
    d = make(clock, max_pending=bound)
    for i in range(200):
        if i % 3:
            d.due(work(f"/srv/up/d{i % 7}/f{i}", float(i)))
        else:
            d.settle(work(f"/srv/up/d{i % 7}/f{i}", float(i), "created"))
        assert d.depth <= bound
    assert d.depth == bound
    assert d.degraded == 200 - bound
    taken = d.take(1000)
    assert len(taken) <= bound
    assert {r.directory for r in drain_rescans(d)} <= {f"/srv/up/d{i}" for i in range(7)}


def test_a_directory_is_rescanned_once_however_many_of_its_files_overflow(
    clock: FakeClock,
) -> None:
    d = make(clock, max_pending=1)
    d.due(work("/srv/up/first", 1.0))
    for i in range(10):
        d.due(work(f"/srv/up/sub/f{i}", 2.0))
    assert d.degraded == 10
    assert [r.directory for r in drain_rescans(d)] == ["/srv/up/sub"]


def test_a_rescan_below_a_pending_rescan_is_not_added(clock: FakeClock) -> None:
    d = make(clock, max_pending=1)
    d.rescan(Rescan("/srv/up/a", WATCH, "directory moved in"))
    d.due(work("/srv/up/first", 1.0))
    d.due(work("/srv/up/a/b/c/f", 2.0))  # /srv/up/a/b/c is walked with /srv/up/a
    d.rescan(Rescan("/srv/up/a/b", WATCH, "new directory"))
    d.rescan(Rescan("/srv/up/a", WATCH, "new directory"))
    d.rescan(Rescan("/srv/up/ab", WATCH, "new directory"))  # a sibling, not below
    assert d.degraded == 1
    assert [r.directory for r in drain_rescans(d)] == ["/srv/up/a", "/srv/up/ab"]


def test_a_held_rescan_is_saved_but_walked_only_once_let_go(clock: FakeClock) -> None:
    """The walk after inotify overflows waits for them to stop; a stop meanwhile saves it."""
    d = make(clock)
    first = Rescan(WATCH, WATCH, "inotify overflow", Mode.SETTLE)
    d.hold_rescan(first)
    assert d.next_rescan() is None
    assert d.snapshot().rescans == [first]
    assert not d.idle
    d.release_rescan(first)
    assert d.next_rescan() == first
    # held again while that walk runs: walked after it, once let go
    again = Rescan(WATCH, WATCH, "an overflow during the walk", Mode.SETTLE)
    d.hold_rescan(again)
    newer = Rescan(WATCH, WATCH, "an overflow as it is let go", Mode.SETTLE)
    d.hold_rescan(newer)  # the same walk, held anew: letting go of the older keeps it
    d.release_rescan(again)
    assert d.snapshot().rescans == [first, again, newer]
    d.walk_ended(first)
    assert d.next_rescan() == again
    assert d.next_rescan() is None
    d.release_rescan(newer)
    d.walk_ended(again)
    assert list(drain_rescans(d)) == [newer]
    assert d.snapshot().rescans == [newer]  # being walked


def test_too_many_rescans_collapse_into_one_of_the_watch_root(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "MAX_RESCANS", 3)
    d = make(clock, max_pending=1)
    d.rescan(Rescan("/srv/other/x", "/srv/other", "new directory"))
    d.due(work("/srv/up/first", 1.0))
    d.due(work("/srv/up/d0/f", 2.0))
    d.due(work("/srv/up/d1/f", 2.0))
    assert [r.directory for r in d.snapshot().rescans] == [
        "/srv/other/x",
        "/srv/up/d0",
        "/srv/up/d1",
    ]
    d.due(work("/srv/up/d2/f", 2.0))  # the fourth: this watch collapses
    d.due(work("/srv/up/d3/f", 2.0))  # below the root: covered
    assert d.degraded == 4
    assert d.depth == 1
    rescans = list(drain_rescans(d))
    assert rescans == [
        Rescan("/srv/other/x", "/srv/other", "new directory"),  # another watch: kept
        Rescan(WATCH, WATCH, "too many rescans", Mode.SETTLE),
    ]


def test_collapsing_keeps_a_request_for_the_watch_root_as_it_is(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The startup walk of a root must keep its reason when it collapses others.

    The daemon marks a watch as covered only after a walk of its root whose
    reason is "startup scan" or "changed while not running"
    (Daemon._walked); renamed "too many rescans", the walk happens but the
    watch never counts as covered.
    """
    monkeypatch.setattr(dispatch, "MAX_RESCANS", 2)
    d = make(clock)
    d.rescan(Rescan("/srv/up/d0", WATCH, "pending at last stop"))
    d.rescan(Rescan("/srv/up/d1", WATCH, "pending at last stop"))
    startup = Rescan(WATCH, WATCH, "startup scan", if_changed=False)
    d.rescan(startup)
    assert list(drain_rescans(d)) == [startup]


# -- waiting for room -----------------------------------------------------------------


def run_wait_for_room(d: Dispatcher) -> tuple[threading.Thread, list[int], threading.Event]:
    results: list[int] = []
    returned = threading.Event()

    def wait() -> None:
        results.append(d.wait_for_room())
        returned.set()

    thread = threading.Thread(target=wait, name="test-wait-for-room")
    thread.start()
    return thread, results, returned


def test_wait_for_room_returns_at_once_when_there_is_room(clock: FakeClock) -> None:
    d = make(clock, max_pending=2)
    d.due(work("/srv/up/a", 1.0))
    assert d.wait_for_room() == 1  # how many more fit


def test_wait_for_room_blocks_while_full_and_wakes_up_on_take(clock: FakeClock) -> None:
    d = make(clock, max_pending=2)
    spy = WaitSpy()
    d.cond = spy
    d.due(work("/srv/up/a", 1.0))
    d.settle(work("/srv/up/b", 1.0, "created"))
    thread, results, returned = run_wait_for_room(d)
    try:
        assert spy.waiting.wait(DEADLINE_SECONDS), "wait_for_room never waited"
        assert not returned.is_set()  # it waits on the condition, it has not returned
        assert paths(d.take(1)) == ["/srv/up/a"]
        assert returned.wait(DEADLINE_SECONDS), "take() made room but nobody woke up"
        assert results == [1]
    finally:
        d.stop()
        thread.join(DEADLINE_SECONDS)
    assert not thread.is_alive()


def test_wait_for_room_returns_false_after_stop(clock: FakeClock) -> None:
    d = make(clock, max_pending=1)
    spy = WaitSpy()
    d.cond = spy
    d.due(work("/srv/up/a", 1.0))
    thread, results, returned = run_wait_for_room(d)
    try:
        assert spy.waiting.wait(DEADLINE_SECONDS), "wait_for_room never waited"
        assert not returned.is_set()
        d.stop()
        assert returned.wait(DEADLINE_SECONDS), "stop() did not wake wait_for_room"
        assert results == [0]
    finally:
        d.stop()
        thread.join(DEADLINE_SECONDS)
    assert not thread.is_alive()
    assert d.wait_for_room() == 0  # stopped stays stopped, room or not


# -- retries --------------------------------------------------------------------------


def test_retry_later_brings_the_work_back_after_its_delay(clock: FakeClock) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0))
    (taken,) = d.take(10)
    taken.tries = 1
    d.retry_later(taken, 10.0)
    assert d.depth == 1  # waiting again, no longer in flight
    assert not d.idle
    clock.advance(9.9)
    assert d.take(10) == []
    clock.advance(0.1)
    (again,) = d.take(10)
    assert again.path == "/srv/up/a"
    assert again.tries == 1
    assert again.since == 1.0
    d.done("/srv/up/a")
    assert d.idle


def test_retries_come_back_each_after_its_own_delay(clock: FakeClock) -> None:
    d = make(clock)
    d.due(work("/srv/up/a", 1.0))
    d.due(work("/srv/up/b", 1.0))
    a, b = d.take(10)
    d.retry_later(a, 60.0)
    d.retry_later(b, 10.0)
    clock.advance(10.0)
    assert paths(d.take(10)) == ["/srv/up/b"]
    clock.advance(50.0)
    assert paths(d.take(10)) == ["/srv/up/a"]


def test_a_released_retry_for_a_path_in_flight_waits_for_that_scan(clock: FakeClock) -> None:
    """A retry must not hand out a path a second time while it is scanned.

    clamd went away during the scan of a; while a waits for its retry, a new
    close puts it in the queue again and it is taken. When the retry's delay
    ends, a is still in flight: handing it out again means two scans, two
    verdicts (and two actions) for one version.
    """
    d = make(clock)
    d.due(work("/srv/up/a", 1.0))
    (first,) = d.take(10)
    d.retry_later(first, 10.0)
    d.due(work("/srv/up/a", 2.0, "closed after write"))
    assert paths(d.take(10)) == ["/srv/up/a"]  # in flight again
    clock.advance(10.0)
    assert d.take(10) == []  # not while it is in flight
    d.done("/srv/up/a")
    assert len(d.take(10)) <= 1  # after it, at most once more


def test_a_change_before_a_retry_is_covered_by_the_retry(clock: FakeClock) -> None:
    """The retried scan opens the file afresh, so it sees the change that came
    during the failed scan: no third scan "changed during scan" after it, which
    would give the same version a second verdict (if_changed is False)."""
    d = make(clock)
    d.due(work("/srv/up/a", 1.0))
    (first,) = d.take(10)
    d.due(work("/srv/up/a", 2.0, "closed after write"))  # while in flight
    d.retry_later(first, 10.0)
    clock.advance(10.0)
    assert paths(d.take(10)) == ["/srv/up/a"]  # the retry
    d.done("/srv/up/a")
    assert d.take(10) == []
    assert d.idle


# -- status ---------------------------------------------------------------------------


def test_snapshot_and_status_cover_every_kind_of_waiting_work(clock: FakeClock) -> None:
    d = make(clock)
    assert d.idle
    assert d.oldest() is None
    assert d.depth == 0

    d.due(work("/srv/up/flight", 3.0))
    d.due(work("/srv/up/delayed", 4.0))
    flight, delayed = d.take(2)
    d.retry_later(delayed, 30.0)
    d.due(work("/srv/up/pending", 5.0))
    d.settle(work("/srv/up/settling", 6.0, "created"))
    d.rescan(Rescan("/srv/up/dir", WATCH, "directory moved in"))

    snapshot = d.snapshot()
    assert sorted(snapshot.paths) == [
        ("/srv/up/delayed", WATCH),
        ("/srv/up/flight", WATCH),
        ("/srv/up/pending", WATCH),
        ("/srv/up/settling", WATCH),
    ]
    assert snapshot.rescans == [Rescan("/srv/up/dir", WATCH, "directory moved in")]
    assert d.depth == 3  # pending, settling, delayed: not what is in flight
    assert d.settling == 1
    assert d.oldest() == 3.0  # the one in flight
    assert not d.idle

    d.done(flight.path)
    assert d.oldest() == 4.0  # the delayed one
    clock.advance(30.0)
    assert paths(d.take(10)) == ["/srv/up/pending", "/srv/up/delayed"]
    assert d.oldest() == 4.0
    d.done("/srv/up/pending")
    d.done("/srv/up/delayed")
    assert d.oldest() == 6.0  # the settling one
    assert not d.idle
    d.due(work("/srv/up/settling", 7.0))
    d.take(10)
    d.done("/srv/up/settling")
    assert not d.idle  # the rescan is still to walk
    walk = d.next_rescan()
    assert walk == Rescan("/srv/up/dir", WATCH, "directory moved in")
    assert not d.idle  # being walked
    assert d.snapshot().rescans == [walk]
    d.walk_ended(walk)
    assert d.idle
    assert d.snapshot().paths == []
    assert d.snapshot().rescans == []


def test_the_snapshot_is_a_copy(clock: FakeClock) -> None:
    d = make(clock)
    d.rescan(Rescan("/srv/up/dir", WATCH, "new directory"))
    snapshot = d.snapshot()
    snapshot.rescans.clear()
    snapshot.paths.append(("/srv/up/x", WATCH))
    assert d.snapshot().rescans == [Rescan("/srv/up/dir", WATCH, "new directory")]
    assert d.snapshot().paths == []


# -- versions that already have a verdict (pipeline.SeenVersions) ----------------------


BASE = stat_result(10, 1_000_000_000, ino=7, dev=3)


@pytest.mark.parametrize(
    ("path", "other"),
    [
        pytest.param("/srv/up/b", BASE, id="path"),
        pytest.param("/srv/up/a", stat_result(10, 1_000_000_000, ino=8, dev=3), id="inode"),
        pytest.param("/srv/up/a", stat_result(10, 1_000_000_000, ino=7, dev=4), id="device"),
        pytest.param("/srv/up/a", stat_result(11, 1_000_000_000, ino=7, dev=3), id="size"),
        pytest.param("/srv/up/a", stat_result(10, 1_000_000_001, ino=7, dev=3), id="mtime"),
    ],
)
def test_the_version_key_changes_with_path_inode_size_and_mtime(
    path: str, other: os.stat_result
) -> None:
    assert SeenVersions.key(path, other) != SeenVersions.key("/srv/up/a", BASE)


def test_the_version_key_ignores_the_access_time_not_the_change_time() -> None:
    # the scan itself reads the file (atime); the ctime is the kernel's alone,
    # where the mtime an uploader may set back (a tag's ctime is counted as
    # seen by the action runner)
    read = stat_result(10, 1_000_000_000, ino=7, dev=3, atime_ns=5**20)
    assert SeenVersions.key("/srv/up/a", read) == SeenVersions.key("/srv/up/a", BASE)
    changed = stat_result(10, 1_000_000_000, ino=7, dev=3, ctime_ns=7**20)
    assert SeenVersions.key("/srv/up/a", changed) != SeenVersions.key("/srv/up/a", BASE)


def test_the_key_of_a_scanned_descriptor_matches_the_key_of_its_stat() -> None:
    identity = FileIdentity(BASE)
    assert SeenVersions.key_of("/srv/up/a", identity) == SeenVersions.key("/srv/up/a", BASE)


def test_seen_versions_forget_the_oldest_beyond_their_limit() -> None:
    seen = SeenVersions(limit=2)
    a, b, c = (SeenVersions.key(f"/srv/up/{n}", BASE) for n in "abc")
    seen.add(a)
    seen.add(b)
    assert a in seen
    assert b in seen
    seen.add(c)
    assert a not in seen
    assert b in seen
    assert c in seen


def test_seen_versions_forget_in_batches_a_sixteenth_of_their_limit_over_it() -> None:
    seen = SeenVersions(limit=32)
    keys = [SeenVersions.key(f"/srv/up/{n}", BASE) for n in range(35)]
    for key in keys[:34]:
        seen.add(key)
    assert all(key in seen for key in keys[:34])  # up to 32 + 32 // 16 are kept
    seen.add(keys[34])
    assert [key in seen for key in keys] == [False] * 3 + [True] * 32  # back to the 32 newest


def test_seen_versions_count_a_repeated_add_as_new() -> None:
    seen = SeenVersions(limit=2)
    a, b, c = (SeenVersions.key(f"/srv/up/{n}", BASE) for n in "abc")
    seen.add(a)
    seen.add(b)
    seen.add(a)  # seen again: now the newest
    seen.add(c)
    assert a in seen
    assert b not in seen
    assert c in seen


def test_a_late_close_after_a_lease_promotion_counts_only_if_changed() -> None:
    """files.open_unwritten saw the writer gone; its close event, queued meanwhile, comes later."""
    now = [0.0]
    dispatcher = Dispatcher(100, 2.0, clock=lambda: now[0])
    st = os.stat_result((0o100644, 1, 1, 1, 0, 0, 5, 0, 0, 0), {"st_mtime_ns": 7})
    dispatcher.settle(Work("/w/a", "/w", 0.0, "created"))
    dispatcher.settle_check(lambda path: st, lambda path, s: True)
    (taken,) = dispatcher.take(10)
    assert taken.reason == "created, not open for writing"
    dispatcher.due(Work("/w/a", "/w", 0.1, "closed after write"))  # the late close
    dispatcher.done("/w/a")
    (again,) = dispatcher.take(10)
    assert again.if_changed  # scanned only if this is another version
    dispatcher.done("/w/a")
    # much later, a close is a new write as always
    now[0] = 10.0
    dispatcher.settle_check(lambda path: st, lambda path, s: True)
    dispatcher.due(Work("/w/a", "/w", 10.0, "closed after write"))
    (later,) = dispatcher.take(10)
    assert not later.if_changed


def test_lease_promotions_are_remembered_for_their_late_close_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A walk of a big directory promotes thousands at once: the oldest are forgotten."""
    monkeypatch.setattr(dispatch, "MAX_CLOSED_EARLY", 2)
    dispatcher = Dispatcher(100, 2.0, clock=lambda: 0.0)
    st = os.stat_result((0o100644, 1, 1, 1, 0, 0, 5, 0, 0, 0), {"st_mtime_ns": 7})
    names = [f"/w/f{n}" for n in range(3)]
    for name in names:
        dispatcher.settle(Work(name, "/w", 0.0, "created"))
    dispatcher.settle_check(lambda path: st, lambda path, s: True)
    dispatcher.done_many(paths(dispatcher.take(10)))
    for name in names:
        dispatcher.due(Work(name, "/w", 0.1, CLOSED_AFTER_WRITE))
    closes = {w.path: w.if_changed for w in dispatcher.take(10)}
    assert closes == {names[0]: False, names[1]: True, names[2]: True}


def test_a_walked_file_gets_an_early_look_and_a_created_one_waits_for_the_full_check(
    clock: FakeClock, disk: FakeDisk
) -> None:
    """Most files a walk finds are finished; a file's IN_CREATE usually has a writer at work."""
    d = make(clock, settle_time=2.0)
    d.taker_wants_work = True
    created = work("/srv/up/created", clock.now, "created")
    d.arrived([(Mode.SETTLE, created)])
    assert not d.looks_waiting
    d.ready.clear()
    d.settle(work("/srv/up/new-dir/walked", clock.now, "new directory"))
    d.settle(work("/srv/up/new-dir/open", clock.now, "new directory"))
    assert d.looks_waiting
    assert d.ready.is_set()  # the pipeline is woken for the early look
    for path in ("/srv/up/created", "/srv/up/new-dir/walked", "/srv/up/new-dir/open"):
        disk.files[path] = stat_result(10, 1_000_000_000)
    d.settle_check(disk, lambda path, st: not path.endswith("open"), limit=10)
    assert disk.calls == ["/srv/up/new-dir/walked", "/srv/up/new-dir/open"]
    assert not d.looks_waiting
    (taken,) = d.take(10)
    assert taken.reason == "new directory, not open for writing"
    assert d.settling == 2  # the created file, and the walked one still being written
    disk.calls.clear()
    d.settle_check(disk, lambda path, st: False, limit=10)
    assert disk.calls == []  # each walked file gets one early look, no more
    d.settle_check(disk, lambda path, st: False)
    assert sorted(disk.calls) == ["/srv/up/created", "/srv/up/new-dir/open"]


def test_settling_files_are_looked_at_a_slice_at_a_time_fresh_ones_first(
    clock: FakeClock, disk: FakeDisk
) -> None:
    """A burst's walks leave thousands; the pipeline feeds clamd between slices of looks."""
    d = make(clock, settle_time=2.0)
    old = [f"/srv/up/old-{n}" for n in range(5)]  # settling, still being written
    for path in old:
        d.arrived([(Mode.SETTLE, work(path, clock.now, "created"))])
    walked = [f"/srv/up/new-dir/f-{n}" for n in range(7)]
    for path in walked:
        d.settle(work(path, clock.now, "new directory"))
    for path in old + walked:
        disk.files[path] = stat_result(10, 1_000_000_000)
    still_open = lambda path, st: False  # noqa: E731

    d.start_settle_pass()  # the full check: every settling file but the fresh ones
    assert d.passing and d.looks_waiting
    d.settle_check(disk, still_open, limit=4)
    assert disk.calls == walked[:4]  # the early looks come first
    d.settle_check(disk, still_open, limit=4)
    assert disk.calls[4:] == walked[4:] + old[:1]  # then the full check's files
    d.settle_check(disk, still_open, limit=4)
    assert disk.calls[8:] == old[1:]
    assert not d.passing and not d.looks_waiting
    assert d.settling == 12  # nothing was finished: all still settle

    disk.calls.clear()
    d.settle_check(disk, lambda path, st: path in walked[:2])  # no limit: all at once
    assert sorted(disk.calls) == sorted(old + walked)
    assert sorted(w.path for w in d.take(10)) == walked[:2]


def _promote(dispatcher: Dispatcher, path: str) -> None:
    """Settle ``path``, find it unwritten by a lease, scan it, done: its close may come late."""
    st = os.stat_result((0o100644, 1, 1, 1, 0, 0, 5, 0, 0, 0), {"st_mtime_ns": 7})
    dispatcher.settle(Work(path, "/w", dispatcher.clock(), "created"))
    dispatcher.settle_check(lambda path: st, lambda path, s: True)
    (taken,) = dispatcher.take(10)
    assert taken.path == path and taken.reason == "created, not open for writing"
    dispatcher.done(path)


def test_a_late_close_counts_only_if_changed_however_late_until_the_watcher_caught_up() -> None:
    """A loaded daemon once read such a close 2 s late and scanned the file a second time."""
    now = [0.0]
    dispatcher = Dispatcher(100, 2.0, clock=lambda: now[0])
    _promote(dispatcher, "/w/a")
    now[0] = 30.0  # the watcher has not said it read everything queued before the lease
    dispatcher.settle_check(lambda path: None)
    dispatcher.due(Work("/w/a", "/w", 30.0, "closed after write"))
    (late,) = dispatcher.take(10)
    assert late.if_changed


def test_lease_promotions_are_let_go_once_the_watcher_read_past_them() -> None:
    """Every event queued before the watcher's time is in: a close after it is a new write."""
    now = [0.0]
    dispatcher = Dispatcher(100, 2.0, clock=lambda: now[0])
    for path, at in (("/w/a", 0.0), ("/w/b", 1.5)):
        now[0] = at
        _promote(dispatcher, path)
    now[0] = 3.0
    dispatcher.events_read(1.5)  # too soon after either: a close may still be on its way
    assert list(dispatcher._closed_early) == ["/w/a", "/w/b"]
    dispatcher.events_read(3.0)  # a's close would be in (2 s after it), b's may still come
    assert list(dispatcher._closed_early) == ["/w/b"]
    for path in ("/w/a", "/w/b"):
        dispatcher.due(Work(path, "/w", 2.5, "closed after write"))
    if_changed = {work.path: work.if_changed for work in dispatcher.take(10)}
    assert if_changed == {"/w/a": False, "/w/b": True}


def test_lease_promotions_are_let_go_after_a_minute_without_word_from_the_watcher() -> None:
    now = [0.0]
    dispatcher = Dispatcher(100, 2.0, clock=lambda: now[0])
    _promote(dispatcher, "/w/a")
    now[0] = 59.0
    _promote(dispatcher, "/w/b")
    now[0] = 60.5
    dispatcher.settle_check(lambda path: None)
    assert list(dispatcher._closed_early) == ["/w/b"]


def test_only_the_close_itself_ends_the_wait_for_a_late_close() -> None:
    """A walk promoted the file; its IN_CREATE settled it again; the close came after that."""
    now = [0.0]
    dispatcher = Dispatcher(100, 2.0, clock=lambda: now[0])
    st = os.stat_result((0o100644, 1, 1, 1, 0, 0, 5, 0, 0, 0), {"st_mtime_ns": 7})
    _promote(dispatcher, "/w/a")  # the walk's look: no writer, scanned
    dispatcher.arrived([(Mode.SETTLE, Work("/w/a", "/w", 0.0, "created"))])  # late IN_CREATE
    now[0] = 0.1
    dispatcher.settle_check(lambda path: st)  # its size and mtime, noted
    now[0] = 2.5
    dispatcher.settle_check(lambda path: st)  # held still for settle_time
    (settled,) = dispatcher.take(10)
    assert settled.reason == "created, settled" and settled.if_changed
    dispatcher.done("/w/a")
    dispatcher.due(Work("/w/a", "/w", 2.6, CLOSED_AFTER_WRITE))  # the close, late
    (late,) = dispatcher.take(10)
    assert late.if_changed
    dispatcher.done("/w/a")
    dispatcher.due(Work("/w/a", "/w", 2.7, CLOSED_AFTER_WRITE))  # another close: a new write
    (again,) = dispatcher.take(10)
    assert not again.if_changed


class Checked:
    """files.open_unwritten on real files: every descriptor it hands out, kept for the test."""

    def __init__(self) -> None:
        self.handed: dict[str, CheckedFile] = {}

    def __call__(self, path: str, st: os.stat_result) -> CheckedFile | None:
        checked = open_unwritten(path, st)
        if checked is not None:
            self.handed[path] = checked
        return checked


def _finished_files(tmp_path: Path, count: int) -> list[str]:
    paths = [str(tmp_path / f"f-{n}") for n in range(count)]
    for path in paths:
        Path(path).write_bytes(b"finished")
    return paths


def test_the_lease_check_keeps_open_only_what_the_next_take_takes(tmp_path: Path) -> None:
    """A walked file is opened once: the scan takes over the descriptor of its lease check.

    No more are kept than the taker's room beyond what already waits, so every
    kept descriptor leaves with the next take and none piles up in the queue.
    """
    d = Dispatcher(100, 2.0)
    ahead = str(tmp_path / "closed-before")
    d.due(Work(ahead, str(tmp_path), 0.0, CLOSED_AFTER_WRITE))
    walked = _finished_files(tmp_path, 4)
    for path in walked:
        d.settle(Work(path, str(tmp_path), 0.0, "new directory"))
    checked = Checked()
    d.settle_check(os.lstat, checked, limit=10, room=3)  # room for 3; one waits already
    taken = d.take(3)
    assert [w.path for w in taken] == [ahead, *walked[:2]]
    assert taken[0].opened is None
    for w in taken[1:]:
        assert w.opened is checked.handed[w.path] and w.opened.fd >= 0
        assert w.reason == "new directory, not open for writing"
    for path in walked[2:]:
        assert checked.handed[path].fd == -1  # closed again: opened afresh at its turn
    rest = d.take(10)
    assert [w.path for w in rest] == walked[2:]
    assert all(w.opened is None for w in rest)
    for w in taken[1:]:
        assert w.opened is not None
        w.opened.close()


def test_a_kept_descriptor_is_closed_when_its_work_is_dropped(tmp_path: Path) -> None:
    """A newer event, an event during the check, a stop: the descriptor goes, the path stays."""
    d = Dispatcher(100, 2.0)
    watch = str(tmp_path)
    first, second, third = _finished_files(tmp_path, 3)
    checked = Checked()
    for path in (first, second):
        d.settle(Work(path, watch, 0.0, "new directory"))
    d.settle_check(os.lstat, checked, limit=10, room=10)
    assert checked.handed[first].fd >= 0 and checked.handed[second].fd >= 0
    # a newer event for a waiting file: the name may hold another file by now
    d.due(Work(first, watch, 1.0, "moved in"))
    assert checked.handed[first].fd == -1
    taken = d.take(10)
    assert [(w.path, w.opened) for w in taken] == [
        (first, None),
        (second, checked.handed[second]),
    ]
    checked.handed[second].close()  # as the pipeline's scan would
    d.done_many([first, second])

    # its close event came while the lease check looked: the event's work is the one
    def close_comes_meanwhile(path: str, st: os.stat_result) -> CheckedFile | None:
        d.due(Work(path, watch, 2.0, CLOSED_AFTER_WRITE))
        return checked(path, st)

    d.settle(Work(third, watch, 2.0, "new directory"))
    d.settle_check(os.lstat, close_comes_meanwhile, limit=10, room=10)
    assert checked.handed[third].fd == -1
    (closed,) = d.take(10)
    assert (closed.path, closed.reason, closed.opened) == (third, CLOSED_AFTER_WRITE, None)
    d.done(third)

    # a stop closes whatever still waits, and the path is saved for the next start
    d.settle(Work(third, watch, 3.0, "new directory"))
    d.settle_check(os.lstat, checked, limit=10, room=10)
    kept = checked.handed[third]
    assert kept.fd >= 0
    d.stop()
    assert kept.fd == -1
    assert [path for path, _ in d.snapshot().paths] == [third]


def test_the_looks_are_fitted_to_the_room_the_taker_has(tmp_path: Path) -> None:
    """Looks beyond what the next take takes would open files only to close them again.

    A queue that events keep full still lets a few looks through each time,
    so walked files are never held back for good.
    """
    d = Dispatcher(1000, 2.0)
    watch = str(tmp_path)
    for n in range(30):
        d.due(Work(f"{watch}/closed-{n}", watch, 0.0, CLOSED_AFTER_WRITE))
    walked = _finished_files(tmp_path, 40)
    for path in walked:
        d.settle(Work(path, watch, 0.0, "new directory"))
    looked: list[str] = []

    def lstat(path: str) -> os.stat_result:
        looked.append(path)
        return os.lstat(path)

    checked = Checked()
    d.settle_check(lstat, checked, limit=256, room=32)  # 2 fit after the 30 waiting
    assert looked == walked[: dispatch._MIN_LOOKS]
    assert [p for p in looked if checked.handed[p].fd >= 0] == walked[:2]
    taken = d.take(32)
    assert [w.path for w in taken[30:]] == walked[:2]
    assert all(w.opened is not None for w in taken[30:])
    for w in taken:
        if w.opened is not None:
            w.opened.close()
    d.done_many([w.path for w in taken])
    looked.clear()
    d.settle_check(lstat, checked, limit=10, room=1000)  # room enough: the limit counts
    assert looked == walked[dispatch._MIN_LOOKS : dispatch._MIN_LOOKS + 10]
    d.stop()


def test_a_lease_check_that_ends_after_the_stop_keeps_nothing_open(tmp_path: Path) -> None:
    """stop() closed what waited; a look still under way then must not leave a descriptor."""
    d = Dispatcher(100, 2.0)
    (path,) = _finished_files(tmp_path, 1)
    checked = Checked()

    def stopped_meanwhile(path: str, st: os.stat_result) -> CheckedFile | None:
        found = checked(path, st)
        d.stop()
        return found

    d.settle(Work(path, str(tmp_path), 0.0, "new directory"))
    d.settle_check(os.lstat, stopped_meanwhile, limit=10, room=10)
    assert checked.handed[path].fd == -1
    assert [p for p, _ in d.snapshot().paths] == [path]  # still saved for the next start
