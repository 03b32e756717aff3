"""The daemon short of descriptors, of inodes, of its quarantine: it says so and loses nothing."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clamwatch.privateclamd import PrivateClamd
from daemonproc import DaemonProcess, StartDaemon, only_once, write_config
from helpers import fill_inodes

Start = Callable[..., DaemonProcess]


@pytest.fixture
def start(start_daemon: StartDaemon) -> Start:
    """`clamwatch run` on ``watched`` with a [quarantine] section and watch options of
    the test's choosing."""

    def run(quarantine: dict[str, Any], **watch_options: Any) -> DaemonProcess:
        return start_daemon(quarantine=quarantine, watch_options=watch_options)

    return run


def test_files_that_find_no_descriptor_free_are_scanned_once_there_is_one(
    start_daemon: StartDaemon, watched: Path
) -> None:
    """Hard limit 20: the window the daemon keeps open (16 at least) does not fit
    beside its own dozen descriptors, and opens fail with EMFILE in a burst.

    Each such file was a scan error at once, and never scanned again (it had
    not changed); now the window shrinks to what fits, and the file is opened
    again a moment later: every file gets its one clean verdict.
    """
    daemon = start_daemon(prefix=("prlimit", "--nofile=20:20", "--"), wait_ready=False)
    daemon.wait_event("ready", timeout=30)
    paths = [watched / f"f{number:03}.txt" for number in range(300)]
    for path in paths:
        path.write_text(f"clean file {path.name}\n")
    daemon.wait_verdicts(paths, timeout=120)
    verdicts = only_once(daemon, paths)
    wrong = [v for v in verdicts.values() if v["verdict"] != "clean"]
    assert not wrong, wrong[:3]
    shrunk = [e["message"] for e in daemon.events if "kept open for their scans" in e["message"]]
    assert shrunk and "Too many open files" in shrunk[0], shrunk
    assert daemon.stop() == 0


def test_a_quarantine_that_cannot_be_listed_costs_no_state(
    start: Start, watched: Path, tmp_path: Path
) -> None:
    """With a retention setting, each checkpoint lists the quarantine. Gone (or
    unreadable for want of descriptors), that list ended the daemon with a
    traceback, at its stop before the state was saved. Now it is an error naming
    the quarantine, and the state is saved as usual."""
    quarantine = tmp_path / "quarantine"
    daemon = start({"directory": str(quarantine), "max_age": "30d"})
    shutil.rmtree(quarantine)
    (watched / "a.txt").write_text("hello")
    daemon.wait_verdicts([watched / "a.txt"], timeout=30)
    assert daemon.stop() == 0
    errors = [e["message"] for e in daemon.events if e["level"] == "error"]
    assert f"quarantine retention not applied: cannot read {quarantine}" in "\n".join(errors)
    assert [e for e in daemon.events if e["event"] == "stopped"] != [], daemon.other_lines[-5:]
    assert (tmp_path / "state" / "state.json").exists()


def test_a_reload_that_needs_a_quarantine_no_inode_is_left_for_is_refused(  # noqa: PLR0917 - fixtures
    start: Start,
    clamd: PrivateClamd,
    watched: Path,
    tmp_path: Path,
    tmpfs: Callable[..., None],
    eicar: bytes,
) -> None:
    """A reload that brings the first "move" makes the quarantine folder then. On a
    file system out of inodes it cannot be made: that ended the daemon (a
    traceback out of SIGHUP's handling). Now the reload is refused naming the
    folder and why, as a start would be, and the running configuration scans on."""
    disk = tmp_path / "disk"
    tmpfs(disk, "1m", 16)
    quarantine = disk / "quarantine"
    daemon = start({"directory": str(quarantine)}, on_infected=["none"])
    fill_inodes(disk)
    write_config(
        daemon.config,
        address=clamd.unix_address,
        watches=[watched],
        state_directory=tmp_path / "state",
        daemon={"settle_time": "500ms"},
        quarantine={"directory": str(quarantine)},
        watch_options={"on_infected": ["move"]},
    )
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_event("config-rejected")
    assert rejected["error"] == (
        f"cannot create quarantine directory {quarantine}: No space left on device"
    )
    bad = watched / "bad.com"
    bad.write_bytes(eicar)
    daemon.wait_verdicts([bad], timeout=30)
    assert daemon.verdicts()[str(bad)][0]["verdict"] == "infected"
    assert bad.exists()  # "none", as the running configuration says
    assert daemon.stop() == 0
