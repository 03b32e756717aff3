"""Helpers shared by tests that talk to a real clamd."""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from clamwatch.clamd.engine import Engine
from clamwatch.clamd.job import ScanJob, ScanOutcome
from clamwatch.files import OpenedFile, open_for_scan
from clamwatch.pipeline import Result
from clamwatch.privateclamd import PrivateClamd

CLAMDSCAN_BINARY = Path("/usr/bin/clamdscan")
DAY_NS = 86_400 * 10**9


class RecordingHandler(logging.Handler):
    """Keeps every record it is handed, for a test to look at."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class EventRecorder(RecordingHandler):
    """The events (clamwatch.eventkind.emit) a test's code sent, by kind."""

    def of(self, kind: str) -> list[dict[str, object]]:
        found = []
        for record in list(self.records):  # a copy: actions' threads append meanwhile
            event = getattr(record, "event", None)
            if event is not None and event.value == kind:
                found.append({"message": record.getMessage(), **getattr(record, "fields", {})})
        return found


@contextlib.contextmanager
def recording_events() -> Iterator[EventRecorder]:
    """Record every event sent meanwhile (the "clamwatch.events" logger)."""
    handler = EventRecorder()
    logger = logging.getLogger("clamwatch.events")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


class ClamdFactory(Protocol):
    """Starts a PrivateClamd; takes PrivateClamd's keyword arguments."""

    def __call__(
        self,
        *,
        max_threads: int = ...,
        tcp: bool = ...,
        stream_max_length: str | None = ...,
        read_timeout: int | None = ...,
        command_read_timeout: int | None = ...,
        max_queue: int | None = ...,
        extra: Mapping[str, str] | None = ...,
    ) -> PrivateClamd: ...


def run_clamdscan(clamd: PrivateClamd, *args: str) -> subprocess.CompletedProcess[str]:
    """Run clamdscan against ``clamd`` over its unix socket.

    clamdscan exits 0 when all is clean, 1 when something was found and 2 on
    errors, so the caller checks returncode; this helper never raises on it.
    """
    if not CLAMDSCAN_BINARY.exists():
        pytest.skip(f"{CLAMDSCAN_BINARY} is missing (Debian package clamdscan): run ./dev setup")
    config = clamd.write_clamdscan_config()
    return subprocess.run(
        [str(CLAMDSCAN_BINARY), f"--config-file={config}", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def clamd_command(address: str, command: bytes, *, timeout: float = 10.0) -> bytes:
    """Send one command outside a session and read until clamd closes.

    ``address`` is ``unix:///path`` or ``tcp://host:port`` as PrivateClamd
    gives them. Written on raw sockets so harness tests do not depend on the
    clamd engine under test.
    """
    if address.startswith("unix://"):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = address.removeprefix("unix://")
    elif address.startswith("tcp://"):
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    else:
        raise ValueError(f"unsupported address {address!r}")
    with conn:
        conn.settimeout(timeout)
        conn.connect(target)
        conn.sendall(command)
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
        return reply


def make_tree(root: Path, count: int, eicar: bytes, *, every: int = 100) -> set[Path]:
    """``count`` small files in subfolders of ``root``; every ``every``-th holds EICAR.

    Returns the paths of the infected ones.
    """
    infected: set[Path] = set()
    for number in range(count):
        folder = root / f"d{number // 100:03}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"f{number:05}.bin"
        if number % every == 0:
            path.write_bytes(eicar + b"\n" + bytes(number % 251 for _ in range(number % 700)))
            infected.add(path)
        else:
            path.write_bytes(b"clean %d " % number * (1 + number % 40))
    return infected


def scan_files(
    engine: Engine, paths: list[Path], *, timeout: float = 120.0
) -> dict[Path, ScanOutcome]:
    """Open and submit every path, then wait (with a deadline) for all outcomes.

    An inline engine is turned here, on the caller's thread, as
    ``clamwatch scan`` turns it.
    """
    done: queue.SimpleQueue[tuple[ScanJob, ScanOutcome]] = queue.SimpleQueue()
    outcomes: dict[Path, ScanOutcome] = {}
    submitted = 0
    for path in paths:
        opened = open_for_scan(str(path))
        assert isinstance(opened, OpenedFile), f"{path}: {opened}"
        engine.submit(ScanJob(opened, lambda j, o: done.put((j, o)), context=path))
        submitted += 1
    deadline = time.monotonic() + timeout
    while len(outcomes) < submitted:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(outcomes)} of {submitted} outcomes within {timeout} s"
        if engine.inline and done.empty():
            engine.step(min(left, 0.1))
            continue
        try:
            job, outcome = done.get(timeout=left)
        except queue.Empty:
            continue
        job.file.close()
        assert isinstance(job.context, Path)
        assert job.context not in outcomes, f"two outcomes for {job.context}"
        outcomes[job.context] = outcome
    return outcomes


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.01)


def age_access_time(path: Path) -> int:
    """Give ``path`` an access time that any read updates under relatime; return it.

    Older than its mtime (relatime updates such an atime at the next read)
    and more than a day old (which relatime updates anyway).
    """
    now = os.stat(path).st_mtime_ns
    atime = now - 2 * DAY_NS
    os.utime(path, ns=(atime, now - DAY_NS))
    return atime


class Reports:
    """A pipeline's report callback that keeps its results; tests wait on it with a deadline."""

    def __init__(self, deadline: float = 10.0) -> None:
        self.deadline = deadline  # seconds; only reached when a wake-up or a retry is lost
        self._cond = threading.Condition()
        self.results: list[Result] = []

    def __call__(self, result: Result) -> None:
        with self._cond:
            self.results.append(result)
            self._cond.notify_all()

    def wait_for(self, count: int) -> list[str]:
        """The paths of the first ``count`` results, once there are that many."""
        deadline = time.monotonic() + self.deadline
        with self._cond:
            while len(self.results) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.results)} of {count} verdicts after {self.deadline} s"
                self._cond.wait(left)
            return [r.work.path for r in self.results]


def without_dac_override(command: list[str]) -> list[str]:
    """``command`` as root, but without the capabilities that let root use any file.

    Connecting to a Unix socket is then denied as it is for any other user
    who lacks write permission on it, with no second user account (and no
    checkout readable by one) needed.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root, to run clamwatch with capabilities dropped")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]


def deny_root(socket_path: Path) -> str:
    """Make ``socket_path`` nobody's alone; return its owner:group as the message names it."""
    os.chown(socket_path, 65534, 65534)
    os.chmod(socket_path, 0o600)
    return f"{pwd.getpwuid(65534).pw_name}:{grp.getgrgid(65534).gr_name}"


def fill_inodes(directory: Path) -> list[Path]:
    """Empty files in ``directory`` until its file system has no inode left.

    Once the clamd that uses it as its TemporaryDirectory has removed its
    own files: it may still be at it after a reply has come, and what it
    frees then would leave more inodes than the test counts on.
    """
    wait_for(
        lambda: all(entry.startswith("fill-") for entry in os.listdir(directory)),
        30,
        f"clamd to remove its temporary files from {directory}",
    )
    made: list[Path] = []
    while True:
        path = directory / f"fill-{len(made)}"
        try:
            path.touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return made
        made.append(path)
