"""The pipeline's rounds: a lone verdict at once, a burst in batches, nothing left waiting.

Real files and the real dispatcher; the clamd engine is a fake that the test
drives. The pipeline's periodic fallback wake-up is pushed out to minutes,
so every verdict here must come from a wake-up, never from a timeout.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import cast

import pytest

from clamwatch import pipeline as pipeline_module
from clamwatch.clamd.engine import Engine
from clamwatch.clamd.job import ScanJob, ScanOutcome, Transport
from clamwatch.config import WatchConfig
from clamwatch.dispatch import Dispatcher, Work
from clamwatch.files import OpenedFile, open_for_scan
from clamwatch.pipeline import Pipeline
from clamwatch.policy import Policy, Rule
from clamwatch.verdict import Clean, NotScanned, NotScannedReason, Verdict
from clamwatch.watch.filters import WatchFilter
from helpers import Reports

DEADLINE_SECONDS = 10.0  # only reached when a wake-up is lost


class FakeEngine:
    """Holds submitted jobs; completes them on its own thread when told to (or at once)."""

    def __init__(self, *, at_once: bool) -> None:
        self.at_once = at_once
        self._cond = threading.Condition()
        self._held: list[ScanJob] = []
        self.batches: list[int] = []  # jobs per submit_many call
        self._release = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fake-engine")
        self._thread.start()

    def submit_many(self, jobs: Iterable[ScanJob]) -> None:
        with self._cond:
            before = len(self._held)
            self._held.extend(jobs)
            self.batches.append(len(self._held) - before)
            self._cond.notify_all()

    @property
    def held(self) -> int:
        with self._cond:
            return len(self._held)

    def complete(self, count: int) -> None:
        with self._cond:
            self._release += count
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not (self._held and (self.at_once or self._release > 0)):
                    self._cond.wait()
                if self._closed:
                    return
                job = self._held.pop(0)
                self._release = max(0, self._release - 1)
            # the file stays open, as the real engine leaves it: the pipeline closes it
            job.on_done(job, ScanOutcome(Clean(), Transport.FILDES, "ClamAV test", 1))

    def close(self, timeout: float = 10.0) -> list[ScanJob]:
        with self._cond:
            self._closed = True
            left, self._held = self._held, []
            self._cond.notify_all()
        self._thread.join(timeout)
        return left


@pytest.fixture(autouse=True)
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "_SETTLE_EVERY", 300.0)


Start = Callable[..., tuple[Pipeline, FakeEngine, Reports]]


@pytest.fixture
def start(watched: Path) -> Iterator[Start]:
    started: list[Pipeline] = []

    def run(
        *,
        at_once: bool,
        window: int = 256,
        batch: int = 32,
        due_first: list[str] | None = None,
        policy: Policy | None = None,
    ) -> tuple[Pipeline, FakeEngine, Reports]:
        dispatcher = Dispatcher(max_pending=10_000, settle_time=2.0)
        for path in due_first or []:
            dispatcher.due(Work(path, str(watched), time.monotonic(), "closed after write"))
        engine = FakeEngine(at_once=at_once)
        watch = WatchConfig(path=watched, name="uploads", policy=policy or Policy())
        filters = {str(watched): WatchFilter(watch)}
        reports = Reports()
        pipeline = Pipeline(
            dispatcher, cast(Engine, engine), filters, reports, window=window, batch=batch
        )
        pipeline.start()
        started.append(pipeline)
        return pipeline, engine, reports

    yield run
    for pipeline in started:
        pipeline.stop(time.monotonic() + 1.0)


def wait_for_a_full_window(engine: FakeEngine, window: int) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while engine.held < window:
        assert time.monotonic() < deadline, "the pipeline did not fill its window"
        time.sleep(0.005)


def files(watched: Path, count: int) -> list[str]:
    paths = []
    for number in range(count):
        path = watched / f"f{number:04}"
        path.write_bytes(b"clean %d" % number)
        paths.append(str(path))
    return paths


def due(pipeline: Pipeline, watched: Path, paths: list[str]) -> None:
    for path in paths:
        pipeline.dispatcher.due(Work(path, str(watched), time.monotonic(), "closed after write"))


def test_a_lone_file_is_reported_without_waiting_for_a_batch(start: Start, watched: Path) -> None:
    pipeline, _, reports = start(at_once=True)
    (path,) = files(watched, 1)
    due(pipeline, watched, [path])
    assert reports.wait_for(1) == [path]
    # and again, once the pipeline has gone to sleep in between
    (second,) = [p for p in files(watched, 2) if p != path]
    due(pipeline, watched, [second])
    assert reports.wait_for(2) == [path, second]


def test_files_waiting_together_go_to_the_engine_together(start: Start, watched: Path) -> None:
    """One submit_many per round: the engine's loop is woken once for them, not per file."""
    paths = files(watched, 40)
    _, engine, reports = start(at_once=False, window=16, due_first=paths)
    wait_for_a_full_window(engine, 16)
    assert engine.batches == [16]  # the whole window in one call
    engine.complete(len(paths))
    assert sorted(reports.wait_for(len(paths))) == paths
    assert sum(engine.batches) == len(paths)


def test_a_burst_is_reported_in_full_whatever_the_outcomes_trickle(
    start: Start, watched: Path
) -> None:
    """A full window waits for batches of outcomes; the last, partial ones still wake it."""
    pipeline, engine, reports = start(at_once=False, window=16, batch=4)
    paths = files(watched, 50)
    due(pipeline, watched, paths)
    done = 0
    for chunk in (1, 3, 2, 7, 1, 1, 5, 9, 4, 2, 6, 3, 1, 5):
        deadline = time.monotonic() + DEADLINE_SECONDS
        while engine.held < min(chunk, len(paths) - done):
            assert time.monotonic() < deadline, "the pipeline stopped handing files over"
            time.sleep(0.005)
        engine.complete(chunk)
        done += chunk
    assert done == len(paths)
    assert sorted(reports.wait_for(len(paths))) == paths
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not pipeline.dispatcher.idle:  # every path marked done
        assert time.monotonic() < deadline, "paths left in flight"
        time.sleep(0.005)
    assert pipeline.outstanding == 0
    assert len(reports.results) == len(paths)  # one verdict each


def test_a_watch_removed_while_its_files_are_at_clamd_leaves_the_pipeline_running(
    start: Start, watched: Path
) -> None:
    """A reload that drops a watch whose files clamd has: their replies are let
    go. Their rules were looked up with [], and the KeyError ended the pipeline's
    thread: no verdict ever again, for any watch."""
    pipeline, engine, reports = start(at_once=False)
    due(pipeline, watched, files(watched, 3))
    deadline = time.monotonic() + DEADLINE_SECONDS
    while engine.held < 3:
        assert time.monotonic() < deadline, "the files did not reach the engine"
        time.sleep(0.005)
    rules = pipeline.filters.pop(str(watched))  # as Daemon._reload replaces them in place
    engine.complete(3)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while engine.held:
        assert time.monotonic() < deadline, "the replies were not taken"
        time.sleep(0.005)
    pipeline.filters[str(watched)] = rules  # the watch is back: the pipeline still works
    later = str(watched / "later")
    (watched / "later").write_bytes(b"clean")
    due(pipeline, watched, [later])
    engine.complete(1)
    assert reports.wait_for(1) == [later]


def test_a_file_reached_through_a_linked_directory_is_never_acted_on(
    start: Start, watched: Path, tmp_path: Path
) -> None:
    """A directory below the watch swapped for a link out of it: no action goes there.

    The open's O_NOFOLLOW guards only the last part of the path, so outside/x
    was scanned as uploads/d/x; the actions, which go by the path, would
    have tagged, moved or removed outside/x. Before any action the pipeline
    asks the kernel where the scanned descriptor is. A link that stays
    inside the watch leads to a file of the watch, which is acted on.
    """
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"not under the watch")
    (watched / "d").symlink_to(outside, target_is_directory=True)
    (watched / "real").mkdir()
    (watched / "real" / "y").write_bytes(b"clean")
    (watched / "alias").symlink_to(watched / "real", target_is_directory=True)
    (watched / "z").write_bytes(b"clean")
    tag_clean = Policy(clean=Rule(tag=True))
    pipeline, _, reports = start(at_once=True, policy=tag_clean)
    escaped, aliased = str(watched / "d" / "x"), str(watched / "alias" / "y")
    due(pipeline, watched, [escaped, aliased])
    assert sorted(reports.wait_for(2)) == sorted([escaped, aliased])
    by_path = {result.work.path: result for result in reports.results}
    assert by_path[escaped].verdict == NotScanned(
        NotScannedReason.SYMLINK,
        "a directory on its path is a symbolic link out of the watch, not followed",
    )
    assert by_path[escaped].outcome is None and by_path[escaped].rule.words == ["none"]
    assert by_path[aliased].verdict == Clean() and by_path[aliased].rule == Rule(tag=True)
    # with nothing to do to a clean file (the default policy), nothing is asked
    pipeline, _, reports = start(at_once=True)
    due(pipeline, watched, [escaped])
    assert reports.wait_for(1) == [escaped] and reports.results[0].verdict == Clean()


def test_a_walked_file_found_finished_is_scanned_through_its_lease_check_descriptor(
    start: Start, watched: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file found by a walk is opened once: the lease check's descriptor goes to clamd.

    Files that come by an event are opened for their scan as before.
    """
    opened: list[str] = []

    def counted(path: str, before: os.stat_result | None = None) -> OpenedFile | Verdict:
        opened.append(path)
        return open_for_scan(path, before)

    monkeypatch.setattr(pipeline_module, "open_for_scan", counted)
    pipeline, engine, reports = start(at_once=True)
    walked = files(watched, 5)
    closed = str(watched / "closed")
    Path(closed).write_bytes(b"written and closed")
    for path in walked:
        pipeline.dispatcher.settle(Work(path, str(watched), time.monotonic(), "new directory"))
    due(pipeline, watched, [closed])
    assert sorted(reports.wait_for(6)) == sorted([*walked, closed])
    reasons = {r.work.path: r.work.reason for r in reports.results}
    assert all(reasons[p] == "new directory, not open for writing" for p in walked)
    assert all(isinstance(r.verdict, Clean) for r in reports.results)
    assert opened == [closed]  # the walked ones were not opened a second time
    assert engine.held == 0


def test_a_stop_finishes_the_scans_in_flight_and_leaves_the_rest_waiting(
    start: Start, watched: Path
) -> None:
    """SIGTERM finishes what clamd has, not the whole backlog: the rest is saved.

    With 16 of 100 files in the engine, a stop lets those 16 end and takes
    no more, so a stop with a backlog does not last all of stop_timeout.
    """
    paths = files(watched, 100)
    pipeline, engine, reports = start(at_once=False, window=16, due_first=paths)
    wait_for_a_full_window(engine, 16)
    stopped: list[list[Work]] = []
    stopping = threading.Thread(
        target=lambda: stopped.append(pipeline.stop(time.monotonic() + DEADLINE_SECONDS))
    )
    stopping.start()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not pipeline.dispatcher.stopping:
        assert time.monotonic() < deadline, "stop() did not begin"
        time.sleep(0.005)
    engine.complete(len(paths))  # the 16 in flight end; any taken after the stop would too
    stopping.join(DEADLINE_SECONDS)
    assert not stopping.is_alive()
    assert stopped == [[]]  # nothing was left in the engine
    assert sum(engine.batches) == 16
    assert sorted(reports.wait_for(16)) == sorted(paths[:16])
    saved = [path for path, _ in pipeline.dispatcher.snapshot().paths]
    assert sorted(saved) == sorted(paths[16:])
