"""Fixtures shared by every test: a private real clamd, EICAR, leak checks.

tests/ is not a package: pytest puts this folder on sys.path, so test
modules import their helpers as ``from helpers import ...``.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clamwatch import testsig
from clamwatch.privateclamd import CLAMD_BINARY, PrivateClamd
from daemonproc import DaemonProcess, StartDaemon, write_config
from helpers import ClamdFactory

# How long a test's threads get to finish after it returned: long enough
# for a stopped event loop to notice, short enough to fail fast.
_THREAD_DEADLINE_SECONDS = 5.0

# Set by ./dev test and CI: there a skipped test means a missing part of
# the environment, and that must fail the run instead of hiding.
_FAIL_ON_SKIP = "CLAMWATCH_FAIL_ON_SKIP"


def _require_clamd() -> None:
    if not CLAMD_BINARY.exists():
        pytest.skip(f"{CLAMD_BINARY} is missing (Debian package clamav-daemon): run ./dev setup")


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateClamd]:
    """One real clamd for the whole session: MaxThreads 4, TCP on.

    Shared by many tests: never stop, kill or reconfigure it; use
    clamd_factory for that.
    """
    _require_clamd()
    server = PrivateClamd(tmp_path_factory.mktemp("clamd"), max_threads=4, tcp=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def clamd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdFactory]:
    """Start clamds with custom settings; all are stopped after the test."""
    _require_clamd()
    started: list[PrivateClamd] = []

    def start(**kwargs: Any) -> PrivateClamd:
        server = PrivateClamd(tmp_path_factory.mktemp("clamd"), **kwargs)
        # Registered before start() so a half-started one is stopped too.
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., None]]:
    """Mount a tmpfs of a given size and inode count (a disk that fills up on demand).

    Unmounted after the test.
    """
    mounted: list[Path] = []

    def mount(where: Path, size: str, inodes: int | None = None) -> None:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        where.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (f",nr_inodes={inodes}" if inodes is not None else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
        mounted.append(where)

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    """An empty upload folder for a daemon to watch."""
    root = tmp_path / "uploads"
    root.mkdir()
    return root


@pytest.fixture
def eicar() -> bytes:
    return testsig.eicar_bytes()


@pytest.fixture
def start_daemon(tmp_path: Path, clamd: PrivateClamd, watched: Path) -> Iterator[StartDaemon]:
    """Start `clamwatch run` on ``watched``; stopped (SIGTERM) at the end of the test."""
    started: list[DaemonProcess] = []

    def start(
        *,
        address: str | None = None,
        watches: list[Path] | None = None,
        wait_ready: bool = True,
        prefix: tuple[str, ...] = (),
        clamd_options: dict[str, Any] | None = None,
        quarantine: dict[str, Any] | None = None,
        watch_options: dict[str, Any] | None = None,
        **daemon: Any,
    ) -> DaemonProcess:
        daemon.setdefault("settle_time", "500ms")
        watch_list = watches or [watched]
        config = write_config(
            tmp_path / f"clamwatch-{len(started)}.toml",
            address=address or clamd.unix_address,
            watches=watch_list,
            state_directory=tmp_path / "state",
            daemon=daemon,
            clamd=clamd_options,
            quarantine=quarantine,
            watch_options=watch_options,
        )
        proc = DaemonProcess(config, prefix=prefix)  # prefix: a command to run it under
        started.append(proc)
        if wait_ready:
            proc.wait_event("ready", timeout=30)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Every test must end with the threads it started with (as watchdog's
    ``_no_thread_leaks``): a leaked event loop or worker would otherwise
    keep running into later tests and make them flaky."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + _THREAD_DEADLINE_SECONDS
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(sorted(t.name for t in leaked))
            pytest.fail(
                f"threads still running {_THREAD_DEADLINE_SECONDS} s after the test: {names}",
                pytrace=False,
            )
        leaked[0].join(timeout=0.05)


class _SkipGuard:
    """Fails the run when any test (or module) was skipped.

    Registered only when CLAMWATCH_FAIL_ON_SKIP=1 (./dev test, CI): there a
    skip means a missing part of the environment, which must not pass as
    green. On a developer machine without clamd, skips stay allowed.
    """

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        # xfail results are "skipped" reports too; they are expected, not missing.
        if report.skipped and not hasattr(report, "wasxfail"):
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            self.skipped.append(f"{report.nodeid}: {reason}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # Only turn a green run red; keep any worse status pytest chose.
        if self.skipped and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.skipped:
            terminalreporter.section(f"{_FAIL_ON_SKIP}=1: skipped tests fail the run", red=True)
            for line in self.skipped:
                terminalreporter.line(line, red=True)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(_FAIL_ON_SKIP) == "1":
        config.pluginmanager.register(_SkipGuard(), "clamwatch-skip-guard")
