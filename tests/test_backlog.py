"""The queue-full and queue-caught-up events: once per episode, each at its moment.

A real dispatcher, driven by hand: files due beyond ``max_pending`` become
rescans of their directories, which a walk then gives out and ends. Then
the real daemon with a small ``max_pending``, real inotify and the real clamd.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from clamwatch.backlog import BacklogReport
from clamwatch.dispatch import Dispatcher, Rescan, Work
from clamwatch.eventkind import EventKind
from daemonproc import StartDaemon, only_once
from helpers import ClamdFactory

WATCH = "/srv/up"


def events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    kinds = (EventKind.QUEUE_FULL, EventKind.QUEUE_CAUGHT_UP)
    return [r for r in caplog.records if getattr(r, "event", None) in kinds]


@pytest.fixture
def caught(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="clamwatch.events"):
        yield caplog


def due(dispatcher: Dispatcher, *paths: str) -> None:
    for path in paths:
        dispatcher.due(Work(path, WATCH, 0.0, "closed after write"))


def test_a_full_queue_is_reported_once_and_its_catching_up_once(
    caught: pytest.LogCaptureFixture,
) -> None:
    dispatcher = Dispatcher(max_pending=2, settle_time=2.0)
    report = BacklogReport(dispatcher)
    due(dispatcher, f"{WATCH}/a", f"{WATCH}/b")
    report.check()
    assert events(caught) == []  # at the limit, nothing turned away yet

    due(dispatcher, f"{WATCH}/x/c", f"{WATCH}/y/d")
    report.check()
    report.check()  # still full: no second warning
    (full,) = events(caught)
    assert full.event == EventKind.QUEUE_FULL  # type: ignore[attr-defined]
    assert full.levelno == logging.WARNING
    assert full.fields == {"max_pending": 2}  # type: ignore[attr-defined]
    assert "2 files wait to be scanned (max_pending)" in full.getMessage()
    assert report.full

    dispatcher.done_many([w.path for w in dispatcher.take(10)])
    report.check()  # room, but both directories are still to walk
    first = dispatcher.next_rescan()
    second = dispatcher.next_rescan()
    assert first is not None and second is not None
    dispatcher.walk_ended(first)
    report.check()  # the second walk is under way
    assert len(events(caught)) == 1

    due(dispatcher, f"{WATCH}/y/d")  # the walk hands its file over
    dispatcher.walk_ended(second)
    dispatcher.done_many([w.path for w in dispatcher.take(10)])
    report.check()
    report.check()
    full, caught_up = events(caught)
    assert caught_up.event == EventKind.QUEUE_CAUGHT_UP  # type: ignore[attr-defined]
    assert caught_up.levelno == logging.INFO
    assert caught_up.fields["turned_away"] == 2  # type: ignore[attr-defined]
    assert not report.full


def test_files_turned_away_while_it_catches_up_keep_the_episode_open(
    caught: pytest.LogCaptureFixture,
) -> None:
    dispatcher = Dispatcher(max_pending=1, settle_time=2.0)
    report = BacklogReport(dispatcher)
    due(dispatcher, f"{WATCH}/a", f"{WATCH}/b/c")
    report.check()
    dispatcher.done_many([w.path for w in dispatcher.take(10)])
    request = dispatcher.next_rescan()
    assert request is not None
    dispatcher.walk_ended(request)
    due(dispatcher, f"{WATCH}/d", f"{WATCH}/e/f")  # full again before the next look
    report.check()
    assert [r.event for r in events(caught)] == [EventKind.QUEUE_FULL]  # type: ignore[attr-defined]
    dispatcher.done_many([w.path for w in dispatcher.take(10)])
    request = dispatcher.next_rescan()
    assert request is not None
    dispatcher.walk_ended(request)
    report.check()
    assert [r.event for r in events(caught)] == [  # type: ignore[attr-defined]
        EventKind.QUEUE_FULL,
        EventKind.QUEUE_CAUGHT_UP,
    ]
    assert events(caught)[1].fields["turned_away"] == 2  # type: ignore[attr-defined]


def test_a_walk_under_way_is_in_the_snapshot_until_it_ends() -> None:
    """A stop or a checkpoint in the middle of a walk saves that directory for the next start."""
    dispatcher = Dispatcher(max_pending=10, settle_time=2.0)
    request = Rescan(f"{WATCH}/new", WATCH, "directory moved in")
    dispatcher.rescan(request)
    given = dispatcher.next_rescan()
    assert given == request
    assert dispatcher.snapshot().rescans == [request]
    assert dispatcher.backlog == (0, True)
    dispatcher.walk_ended(request)
    assert dispatcher.snapshot().rescans == []
    assert dispatcher.backlog == (0, False)


def test_a_small_max_pending_reports_the_full_queue_and_loses_no_file(
    clamd_factory: ClamdFactory, start_daemon: StartDaemon, watched: Path, eicar: bytes
) -> None:
    """The real daemon, with room for 20 files and clamd stopped while 400 arrive.

    Most of them find the queue full and are kept only by their directories;
    once clamd is back, each still gets exactly one verdict, the right one,
    and the admin hears of it twice in all: queue-full, then queue-caught-up.
    """
    server = clamd_factory()
    daemon = start_daemon(address=server.unix_address, max_pending=20)
    server.kill()
    daemon.wait_event("clamd-lost")
    paths = []
    for folder in range(8):
        (watched / f"d{folder}").mkdir()
        for number in range(50):
            path = watched / f"d{folder}" / f"f{number:03}"
            path.write_bytes(eicar if number % 25 == 0 else b"clean %d %d" % (folder, number))
            paths.append(path)
    full = daemon.wait_event("queue-full")
    assert full["max_pending"] == 20
    server.restart()
    daemon.wait_verdicts(paths, timeout=120)
    caught_up = daemon.wait_event("queue-caught-up")
    found = only_once(daemon, paths)
    for path in paths:
        expected = "detection" if int(path.name[1:]) % 25 == 0 else "clean"
        assert found[str(path)]["event"] == expected, path
    kinds = [e["event"] for e in daemon.events]
    assert kinds.count("queue-full") == 1
    assert kinds.count("queue-caught-up") == 1
    # arrivals, not files: a file is turned away by its close, and may be
    # again by the walk of its directory while the queue is still full
    assert caught_up["turned_away"] > 0
