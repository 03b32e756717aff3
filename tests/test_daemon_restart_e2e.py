"""`clamwatch run` stopped and started again: what the state file carries over.

Real inotify on real files, the real daemon as a process, the real clamd;
the fake clamd only where a scan must never be answered (a stall).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from clamwatch.daemon import _SLACK
from clamwatch.privateclamd import PrivateClamd
from clamwatch.state import STATE_FILE, load_state
from clamwatch.testsig import EICAR_SIGNATURE
from daemonproc import DaemonProcess, StartDaemon, only_once, write_config
from fakeclamd import FakeClamd, Faults

DAY = 86_400.0

# A stop_timeout the stalled scans run into, and what the daemon may take on
# top of it: Pipeline.stop gives the engine at least 1 s more to close its
# sessions, then the state is saved. The rest is for a busy 2-CPU machine;
# the default stop_timeout (20 s) would not fit under the sum.
STALL_STOP_TIMEOUT = 4.0
STOP_MARGIN = 6.0


def wait_for_the_clock(until: float) -> None:
    """Block until time.time() has passed ``until`` (a wall-clock time)."""
    while (left := until - time.time()) > 0:
        time.sleep(min(left, 0.1))


def older_than_the_slack(paths: list[Path]) -> None:
    """Block until every path's last change is more than the daemon's slack ago.

    A stop saves "covered up to now", and the next start walks what changed
    since that time minus _SLACK (timestamp granularity). A file changed
    within the slack before the stop is rightly scanned again after it; the
    tests that say "not scanned again" wait this out first.
    """
    newest = max(max(p.stat().st_mtime, p.stat().st_ctime) for p in paths)
    wait_for_the_clock(newest + _SLACK + 0.5)


def inotify_watches(pid: int) -> int:
    """How many inotify watches the process holds (fdinfo lists one line per watch)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                count += sum(line.startswith("inotify wd:") for line in info)
    return count


def wait_until_not_watching(daemon: DaemonProcess, timeout: float) -> None:
    """Block until the daemon's watcher has let go of every watch (it is stopping)."""
    deadline = time.monotonic() + timeout
    while inotify_watches(daemon.process.pid) > 0:
        assert daemon.process.poll() is None, "the daemon exited before its watches were seen gone"
        assert time.monotonic() < deadline, f"still watching {timeout} s after SIGTERM"
        time.sleep(0.01)


def test_changed_startup_scan_scans_only_what_changed_while_stopped(
    start_daemon: StartDaemon, watched: Path, tmp_path: Path, eicar: bytes
) -> None:
    """A later start with startup_scan = "changed" (a state file exists): files
    untouched while clamwatch was stopped are not scanned again; a file
    modified, a file written, and an old file moved in from outside (its
    mtime is a day old, only its ctime says it arrived) are, once each."""
    kept = [watched / f"kept-{n}.txt" for n in range(5)]
    for path in kept:
        path.write_text(f"clean and never changed {path.name}\n")
    modified = watched / "modified.txt"
    modified.write_text("clean for now\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    old = outside / "moved-in.com"
    old.write_bytes(eicar)
    os.utime(old, (time.time() - DAY, time.time() - DAY))
    state_file = tmp_path / "state" / STATE_FILE
    assert not state_file.exists()

    first = start_daemon(startup_scan="changed")  # no state yet: everything
    first.wait_verdicts([*kept, modified], timeout=60)
    older_than_the_slack([*kept, modified])
    assert first.stop() == 0
    before = load_state(tmp_path / "state")
    assert str(watched) in before.covered_at
    assert (before.pending, before.rescans) == ([], [])

    # while clamwatch is not running
    modified.write_bytes(eicar)
    new = watched / "new.txt"
    new.write_text("written while stopped\n")
    moved = watched / "moved-in.com"
    os.rename(old, moved)
    assert moved.stat().st_mtime < before.covered_at[str(watched)] - DAY / 2

    again = start_daemon(startup_scan="changed")
    changed = [modified, new, moved]
    again.wait_verdicts(changed, timeout=60)
    # Every file the walk found was handed over with these three, in one
    # batch (one directory), and looked at in the same round: a stop now
    # saves nothing, so the kept files were judged unchanged, not postponed.
    assert again.stop() == 0
    (stopped,) = [e for e in again.events if e["event"] == "stopped"]
    assert stopped["pending"] == 0, stopped
    assert set(again.verdicts()) == {str(p) for p in changed}, "unchanged files scanned again"
    found = only_once(again, changed)
    assert found[str(modified)]["event"] == "detection"
    assert found[str(new)]["event"] == "clean"
    assert found[str(moved)]["event"] == "detection"
    assert found[str(moved)]["signature"] == EICAR_SIGNATURE
    for event in found.values():
        assert event["reason"].startswith("changed while not running"), event
    after = load_state(tmp_path / "state")
    assert after.covered_at[str(watched)] > before.covered_at[str(watched)]


def test_changed_startup_scan_scans_an_old_directory_moved_in_while_stopped(
    start_daemon: StartDaemon, watched: Path, tmp_path: Path, eicar: bytes
) -> None:
    """`mv /elsewhere/dir /srv/uploads/` while stopped: rename(2) gives the
    directory a new ctime, not the files in it, whose times are all from
    before the last stop. An admin expects them scanned at the next start."""
    outside = tmp_path / "outside" / "dir"
    outside.mkdir(parents=True)
    (outside / "old.com").write_bytes(eicar)
    os.utime(outside / "old.com", (time.time() - DAY, time.time() - DAY))
    first = start_daemon(startup_scan="changed")
    marker = watched / "marker.txt"
    marker.write_text("the first run is scanning\n")
    first.wait_verdicts([marker], timeout=60)
    older_than_the_slack([outside / "old.com"])
    assert first.stop() == 0

    moved = watched / "dir"
    os.rename(outside, moved)
    # written after the move, beside the old file: the walk lists both in
    # one directory, so once this one has its verdict the old one was judged
    fresh = moved / "fresh.txt"
    fresh.write_text("written while stopped\n")
    again = start_daemon(startup_scan="changed")
    again.wait_verdicts([fresh], timeout=60)
    assert again.stop() == 0
    verdicts = again.verdicts()
    assert str(moved / "old.com") in verdicts, "the old file in the moved-in directory was skipped"
    assert verdicts[str(moved / "old.com")][0]["event"] == "detection"


def test_sigint_mid_burst_then_restart_misses_nothing(
    start_daemon: StartDaemon, watched: Path, eicar: bytes
) -> None:
    """Ctrl-C in a terminal: SIGINT stops the daemon as SIGTERM does (exit 0,
    one "stopped" event, no traceback), and the next start scans the rest.

    The burst goes on across the stop: a third of it is written before the
    signal, a third from the moment it is sent (while the daemon stops), and
    a third after the daemon has exited.
    """
    daemon = start_daemon()
    paths = [watched / f"f{n:05}" for n in range(3000)]
    signalled, exited = threading.Event(), threading.Event()

    def write() -> None:
        for number, path in enumerate(paths):
            if number == 1000:
                signalled.wait(120)
            elif number == 2000:
                exited.wait(120)
            path.write_bytes(eicar if number % 100 == 0 else b"clean %d" % number)

    writer = threading.Thread(target=write, name="burst-writer")
    writer.start()
    try:
        daemon.wait_until(
            lambda events: sum(e["event"] in ("clean", "detection") for e in events) >= 200,
            60,
            "200 verdicts",
        )
        daemon.signal(signal.SIGINT)
        signalled.set()
        assert daemon.process.wait(60) == 0
    finally:
        signalled.set()
        exited.set()
        writer.join()
    assert daemon.stop() == 0  # collects the rest of its output
    kinds = [e["event"] for e in daemon.events]
    assert kinds.count("stopping") == 1
    assert kinds.count("stopped") == 1
    assert not any("Traceback" in line for line in daemon.other_lines), daemon.other_lines
    first_run = daemon.verdicts()

    again = start_daemon()
    again.wait_until(
        lambda events: (
            {str(p) for p in paths}
            <= set(first_run)
            | {e.get("path") for e in events if e["event"] in ("clean", "detection")}
        ),
        120,
        "every file scanned across both runs",
    )
    second_run = again.verdicts()
    infected = {
        p
        for run in (first_run, second_run)
        for p, evs in run.items()
        if evs[0]["event"] == "detection"
    }
    assert infected == {str(p) for p in paths[::100]}


def stalled_stop(
    start_daemon: StartDaemon, fake: FakeClamd, files: dict[Path, bytes]
) -> tuple[DaemonProcess, float]:
    """Start a daemon on ``fake``, write ``files``, wait until the daemon has
    sent each of them to be scanned, and send it SIGTERM.

    The files are older than the slack by then, so the next start's walk
    passes them over: only the state's list of pending files brings them back.
    Returns the daemon and the time.monotonic() of the SIGTERM.
    """
    # the fake takes an hour over every scan, the EICAR check's too
    daemon = start_daemon(
        address=fake.unix_address,
        clamd_options={"eicar_check": False},
        stop_timeout=f"{STALL_STOP_TIMEOUT}s",
    )
    for path, content in files.items():
        path.write_bytes(content)
    fake.wait_until(lambda: fake.scans_pending >= len(files), timeout=60)
    older_than_the_slack(list(files))
    assert daemon.verdicts() == {}
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    return daemon, sent


def wait_for_exit(daemon: DaemonProcess, sent: float) -> tuple[int, float]:
    """The exit status, and the seconds from the SIGTERM (sent at ``sent``) to the exit."""
    limit = STALL_STOP_TIMEOUT + STOP_MARGIN
    try:
        code = daemon.process.wait(max(0.0, sent + limit - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {limit} s after SIGTERM (stop_timeout {STALL_STOP_TIMEOUT} s)")
    elapsed = time.monotonic() - sent
    assert daemon.stop() == code  # collects the rest of its output
    return code, elapsed


def test_scans_that_outlast_stop_timeout_are_saved_and_scanned_at_the_next_start(
    start_daemon: StartDaemon, watched: Path, tmp_path: Path, eicar: bytes
) -> None:
    """clamd takes the requests and never answers. SIGTERM: the daemon waits
    stop_timeout for them, no longer, exits 0 having reported none of them
    (least of all clean), and saves them; the next start, on the real
    clamd, gives each its true verdict, once."""
    files = [watched / "bad.com", watched / "good-1.txt", watched / "good-2.txt"]
    contents = dict(zip(files, [eicar, b"clean one\n", b"clean two\n"], strict=True))
    with FakeClamd(Faults(scan_delay=3600.0)) as fake:
        stalled, sent = stalled_stop(start_daemon, fake, contents)
        code, elapsed = wait_for_exit(stalled, sent)
    assert code == 0
    assert STALL_STOP_TIMEOUT <= elapsed <= STALL_STOP_TIMEOUT + STOP_MARGIN, elapsed
    assert stalled.verdicts() == {}, "an unanswered scan was reported"
    (stopped,) = [e for e in stalled.events if e["event"] == "stopped"]
    assert stopped["pending"] >= len(files), stopped
    saved = load_state(tmp_path / "state")
    assert {str(p) for p in files} <= {path for path, _ in saved.pending}

    again = start_daemon()  # the real clamd
    again.wait_verdicts(files, timeout=60)
    found = only_once(again, files)
    assert found[str(files[0])]["event"] == "detection"
    assert found[str(files[0])]["signature"] == EICAR_SIGNATURE
    assert found[str(files[1])]["event"] == "clean"
    assert found[str(files[2])]["event"] == "clean"
    assert {e["reason"] for e in found.values()} == {"pending at last stop"}


def test_a_file_written_while_the_daemon_drains_is_scanned_at_the_next_start(
    start_daemon: StartDaemon, watched: Path, tmp_path: Path
) -> None:
    """After SIGTERM the watcher stops at once, but the drain lasts up to
    stop_timeout: a file written in between is seen by no watcher. The
    coverage saved must end when the watcher stopped, not when the state was
    written, so that the next start's walk finds that file."""
    busy = watched / "busy.txt"
    with FakeClamd(Faults(scan_delay=3600.0)) as fake:
        stalled, sent = stalled_stop(start_daemon, fake, {busy: b"keeps the drain waiting\n"})
        wait_until_not_watching(stalled, timeout=STALL_STOP_TIMEOUT)
        unseen = watched / "written-while-draining.txt"
        unseen.write_text("nobody watches now\n")
        assert stalled.process.poll() is None, "the drain ended before the file was written"
        code, _ = wait_for_exit(stalled, sent)
    assert code == 0
    saved = load_state(tmp_path / "state")
    assert str(watched) in saved.covered_at  # so the next start walks what changed since
    assert str(unseen) not in {path for path, _ in saved.pending}

    again = start_daemon()
    again.wait_verdicts([busy, unseen], timeout=60)
    found = only_once(again, [busy, unseen])
    assert found[str(busy)]["reason"] == "pending at last stop"
    assert found[str(unseen)]["event"] == "clean"
    assert found[str(unseen)]["reason"].startswith("changed while not running")


def test_a_watch_removed_by_a_reload_is_not_covered_while_it_is_out(
    start_daemon: StartDaemon, tmp_path: Path, clamd: PrivateClamd, eicar: bytes
) -> None:
    """Removed by a reload, a watch's coverage went on advancing: a file written
    there meanwhile was older than it, and the start that brought the watch
    back, walking what changed since, skipped it. Never scanned."""
    kept, removed = tmp_path / "kept", tmp_path / "removed"
    kept.mkdir()
    removed.mkdir()
    daemon = start_daemon(watches=[kept, removed])
    daemon.wait_until(
        lambda evs: sum(e["event"] == "watch-armed" for e in evs) == 2, 30, "both armed"
    )
    write_config(
        daemon.config, address=clamd.unix_address, watches=[kept],
        state_directory=tmp_path / "state", daemon={"settle_time": "500ms"},
    )  # fmt: skip
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_event("config-reloaded")
    unseen = removed / "written-while-out.com"
    unseen.write_bytes(eicar)
    # not a wait for something to happen: the walk reaches _SLACK back before
    # the coverage saved, and the file must lie before that for the bug to show
    time.sleep(_SLACK + 0.5)
    assert daemon.stop() == 0
    again = start_daemon(watches=[kept, removed])  # "changed" walks from the coverage
    again.wait_verdicts([unseen], timeout=30)
    assert only_once(again, [unseen])[str(unseen)]["event"] == "detection"


def test_an_unreadable_state_file_stops_the_start_and_is_kept(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A state file cut short (a full disk, a torn copy): the daemon refuses to
    start, names the file and what to do, and leaves it as it was, since
    starting afresh over it would forget the files it still lists."""
    state = tmp_path / "state"
    state.mkdir()
    torn = b'{"version": 1, "covered_at": {}, "pending": [["/srv/uploads/a'
    (state / STATE_FILE).write_bytes(torn)
    daemon = start_daemon(wait_ready=False)
    # 2, which systemd does not restart on: with 1 it restarted every 5 s
    assert daemon.process.wait(30) == 2
    daemon.stop()  # collects the rest of its output
    assert not any(e["event"] == "ready" for e in daemon.events)
    expected = f"clamwatch: {state / STATE_FILE}: unreadable"
    assert any(line.startswith(expected) for line in daemon.other_lines), daemon.other_lines
    assert any("move it aside to start afresh" in line for line in daemon.other_lines)
    assert (state / STATE_FILE).read_bytes() == torn


def test_a_second_daemon_on_the_same_state_directory_is_refused(
    start_daemon: StartDaemon, watched: Path, tmp_path: Path, eicar: bytes
) -> None:
    """Both would save their own pending list over the other's: the second one stops
    at once with the first one's pid, and the first goes on scanning."""
    first = start_daemon()
    second = start_daemon(wait_ready=False)
    assert second.process.wait(30) == 1
    second.stop()  # collects the rest of its output
    expected = (
        f"clamwatch: {tmp_path / 'state'} is in use by another clamwatch (pid {first.process.pid})"
    )
    assert any(line.startswith(expected) for line in second.other_lines), second.other_lines
    late = watched / "after-the-refusal.com"
    late.write_bytes(eicar)
    first.wait_verdicts([late], timeout=30)
    assert first.verdicts()[str(late)][0]["event"] == "detection"


def test_a_state_directory_that_cannot_be_locked_does_not_stop_the_scanning(
    start_daemon: StartDaemon, watched: Path, tmp_path: Path, eicar: bytes
) -> None:
    """A read-only state directory (a bind mount here): no lock file can be made.
    The daemon says so and scans on, as it does when the state cannot be saved."""
    state = tmp_path / "state"
    (state / "quarantine").mkdir(mode=0o700, parents=True)  # where start_daemon puts it
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True, timeout=30)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True, timeout=30)
        daemon = start_daemon()
        bad = watched / "bad.com"
        bad.write_bytes(eicar)
        daemon.wait_verdicts([bad], timeout=30)
        assert daemon.verdicts()[str(bad)][0]["event"] == "detection"
        assert daemon.stop() == 1  # what was still to do could not be saved either
    finally:
        subprocess.run(["umount", str(state)], check=True, timeout=30)
    errors = [e["message"] for e in daemon.events if e["level"] == "error"]
    expected = f"cannot lock the state directory {state}: Read-only file system; running"
    assert any(m.startswith(expected) for m in errors), errors


def test_a_quarantine_that_cannot_be_made_stops_the_start_with_a_clear_error(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A file stands where the quarantine should be: exit 1 naming it, no traceback."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "quarantine").write_text("in the way")
    daemon = start_daemon(wait_ready=False)
    assert daemon.process.wait(30) == 1
    daemon.stop()  # collects the rest of its output
    expected = f"clamwatch: quarantine directory {state / 'quarantine'} is not a directory"
    assert expected in daemon.other_lines, daemon.other_lines
    assert not any("Traceback" in line for line in daemon.other_lines), daemon.other_lines
