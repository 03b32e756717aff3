"""`clamwatch run` killed (SIGKILL, a crash, the OOM killer) and started again.

No stop saves the state then: the next start has only the last checkpoint
(every 30 s) and what it says is covered. Real inotify on real files, the
real daemon as a process, the real clamd.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clamwatch.privateclamd import PrivateClamd
from clamwatch.state import STATE_FILE
from daemonproc import DaemonProcess, write_config

CHECKPOINT_WAIT = 45.0  # the daemon checkpoints 30 s after it is ready


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons a test starts itself; stopped (or reaped, if killed) after it."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def kill_hard(daemon: DaemonProcess) -> None:
    daemon.process.kill()
    daemon.process.wait(30)


def test_a_hook_still_running_at_a_checkpoint_is_not_lost_with_a_crash(
    clamd: PrivateClamd, tmp_path: Path, watched: Path, eicar: bytes, daemons: list[DaemonProcess]
) -> None:
    """The verdict is reported and the dispatcher is done with the file before
    its actions run (in their own pool; a hook takes seconds). A checkpoint
    then saved coverage past the file and did not list it, so a crash before
    the hook ran lost it for good: the next start skipped the file as covered,
    and the hook (the one that says "infected upload") never ran. It is listed
    now, and scanned and acted on again after the crash."""
    runs = tmp_path / "hook-runs"
    runs.mkdir()
    hook = tmp_path / "hook"
    # the first run hangs (as a hook does that waits on a slow service), the next ones end
    hook.write_text(
        '#!/bin/sh\nn=$(ls "$1" | wc -l)\necho $$ > "$1/run-$n"\n[ "$n" -gt 0 ] || exec sleep 600\n'
    )
    hook.chmod(0o755)
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "clamwatch.toml",
        address=clamd.unix_address,
        watches=[watched],
        state_directory=state,
        daemon={"settle_time": "500ms"},
        watch_options={
            "on_infected": ["hook"],
            "hook": [str(hook), str(runs)],
            "hook_timeout": "10m",
        },
    )
    first = DaemonProcess(config)
    daemons.append(first)
    first.wait_event("ready")
    bad = watched / "bad.com"
    bad.write_bytes(eicar)
    first.wait_verdicts([bad], timeout=30)
    started = runs / "run-0"
    wait_for(lambda: started.is_file() and started.read_text().endswith("\n"), 30, "the hook")
    hanging = int(started.read_text())
    try:
        wait_for((state / STATE_FILE).is_file, CHECKPOINT_WAIT, "a checkpoint")
        kill_hard(first)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hanging, signal.SIGKILL)
    assert not (runs / "run-1").exists()

    second = DaemonProcess(config)
    daemons.append(second)
    second.wait_event("ready")
    second.wait_verdicts([bad], timeout=30)
    assert second.verdicts()[str(bad)][0]["event"] == "detection"
    wait_for((runs / "run-1").is_file, 30, "the hook to run again")
