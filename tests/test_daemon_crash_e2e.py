"""`clamwatch run` killed (SIGKILL, a crash, the OOM killer) and started again.

No stop saves the state then: the next start has only the last checkpoint
(every 30 s) and what it says is covered. Real inotify on real files, the
real daemon as a process, the real clamd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clamwatch.files import OpenedFile, open_for_scan
from clamwatch.privateclamd import PrivateClamd
from clamwatch.quarantine import QuarantineStore
from clamwatch.quarantine_record import write_record
from clamwatch.state import STATE_FILE
from clamwatch.testsig import EICAR_SIGNATURE
from daemonproc import DaemonProcess, write_config
from helpers import wait_for

CHECKPOINT_WAIT = 45.0  # the daemon checkpoints 30 s after it is ready


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons a test starts itself; stopped (or reaped, if killed) after it."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


def crash_config(
    tmp_path: Path,
    clamd: PrivateClamd,
    watched: Path,
    state: Path,
    watch_options: dict[str, Any] | None = None,
) -> Path:
    """The configuration a test's daemon runs with, before its crash and after."""
    return write_config(
        tmp_path / "clamwatch.toml",
        address=clamd.unix_address,
        watches=[watched],
        state_directory=state,
        daemon={"settle_time": "500ms"},
        watch_options=watch_options,
    )


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
    config = crash_config(
        tmp_path,
        clamd,
        watched,
        state,
        {
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


def test_an_original_left_by_a_crash_after_its_quarantine_copy_is_removed_at_the_rescan(
    clamd: PrivateClamd, tmp_path: Path, watched: Path, eicar: bytes, daemons: list[DaemonProcess]
) -> None:
    """A move into a quarantine on another file system copies the file,
    writes the entry's record, and only then removes the original: a crash in
    between leaves the entry ("moved") and the original. At the next start
    the original is scanned again, and the quarantine found its version
    already held and called it moved, leaving the infected file in the
    upload folder for good. Its name is removed now, and no second entry made."""
    bad = watched / "bad.com"
    bad.write_bytes(eicar)
    quarantine = tmp_path / "state" / "quarantine"
    # what the crash left: the entry, as the daemon's copy makes it, recorded as a move
    store = QuarantineStore(quarantine)
    opened = open_for_scan(str(bad))
    assert isinstance(opened, OpenedFile)
    with contextlib.closing(opened):
        copied = store.quarantine(
            opened,
            signature=EICAR_SIGNATURE,
            clamd_version=None,
            watch=str(watched),
            keep_original=True,
        )
    assert copied is not None
    entry = dataclasses.replace(copied, how="moved")
    write_record(quarantine, entry)
    config = crash_config(tmp_path, clamd, watched, tmp_path / "state")
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    daemon.wait_event("ready")
    daemon.wait_verdicts([bad], timeout=30)
    assert daemon.verdicts()[str(bad)][0]["event"] == "detection"
    daemon.wait_until(
        lambda events: any(e["event"] in ("action-done", "action-failed") for e in events),
        30,
        "the move",
    )
    done = [e for e in daemon.events if e["event"] in ("action-done", "action-failed")]
    assert [(e["event"], e.get("quarantine_id")) for e in done] == [("action-done", entry.id)]
    assert not bad.exists(), "the infected original is still in the upload folder"
    assert [r.id for r in QuarantineStore(quarantine).list()] == [entry.id]


def test_a_crash_during_a_release_to_another_file_system_leaves_no_partial_file(
    clamd: PrivateClamd,
    tmp_path: Path,
    watched: Path,
    tmpfs: Callable[..., None],
    daemons: list[DaemonProcess],
) -> None:
    """A release to another file system copies the file. The copy was made
    under its released name from its first byte: killed during the copy,
    the daemon left a file cut short in release_to, where what lies has
    been scanned and found clean (and the next start released the whole file
    beside it as NAME.1). The copy is named now only once it is whole."""
    released = tmp_path / "released"
    tmpfs(released, "512m")
    config = crash_config(
        tmp_path,
        clamd,
        watched,
        tmp_path / "state",
        {"on_clean": ["release"], "release_to": str(released)},
    )
    content = os.urandom(1 << 20) * 90  # a copy of some 50 ms, under clamd's 100M MaxFileSize
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    daemon.wait_event("ready")
    big = watched / "big.bin"
    big.write_bytes(content)
    deadline = time.monotonic() + 60
    while not os.listdir(released):  # no sleep: the kill must fall inside the copy
        assert time.monotonic() < deadline, "nothing was released"
        assert daemon.process.poll() is None
    kill_hard(daemon)
    sizes = {p.name: p.stat().st_size for p in released.iterdir()}
    assert sizes == {"big.bin": len(content)}, f"left by the crash: {sizes} of {len(content)}"

    again = DaemonProcess(config)
    daemons.append(again)
    again.wait_event("ready")
    if big.exists():  # killed before the original's removal: scanned and released again
        again.wait_verdicts([big], timeout=60)
        wait_for(lambda: not big.exists(), 30, "the release of the original")
    for copy in released.iterdir():
        assert copy.read_bytes() == content, f"{copy.name} is not the file released"


def test_a_release_whose_copy_a_crash_left_whole_is_not_released_twice(
    clamd: PrivateClamd, tmp_path: Path, watched: Path, daemons: list[DaemonProcess]
) -> None:
    """Killed between a release's copy and the original's removal, the daemon
    found the original at its next start and released it again, as NAME.1:
    the file delivered twice. A whole copy under the name is taken for its own."""
    released = tmp_path / "released"
    (released / "sub").mkdir(parents=True)
    (watched / "sub").mkdir()
    original = watched / "sub" / "report.pdf"
    original.write_bytes(b"clean report " * 1000)
    left = released / "sub" / "report.pdf"  # as the crash left it: whole, its mtime kept
    left.write_bytes(original.read_bytes())
    mtime = original.stat().st_mtime_ns
    os.utime(left, ns=(mtime, mtime))
    other = watched / "sub" / "other.pdf"  # the same name taken by other content: a new name
    other.write_bytes(b"another report")
    (released / "sub" / "other.pdf").write_bytes(b"what was there before")
    config = crash_config(
        tmp_path,
        clamd,
        watched,
        tmp_path / "state",
        {"on_clean": ["release"], "release_to": str(released)},
    )
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    daemon.wait_event("ready")
    daemon.wait_until(
        lambda evs: len([e for e in evs if e["event"] == "action-done"]) == 2, 30, "two releases"
    )
    assert not original.exists() and not other.exists()
    done = {
        e["path"]: e["released_to"]
        for e in daemon.events
        if e["event"] == "action-done" and e.get("action") == "release"
    }
    assert done == {str(original): str(left), str(other): str(released / "sub" / "other.pdf.1")}
    assert sorted(os.listdir(released / "sub")) == ["other.pdf", "other.pdf.1", "report.pdf"]
