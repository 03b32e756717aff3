"""`clamwatch run` end to end: real inotify on real files, the real clamd."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clamwatch.daemon import _SLACK
from clamwatch.privateclamd import PrivateClamd
from clamwatch.testsig import EICAR_SIGNATURE
from daemonproc import DaemonProcess, StartDaemon, only_once, write_config
from helpers import ClamdFactory, age_access_time


def test_eicar_written_into_a_watched_tree_is_reported(
    start_daemon: StartDaemon, watched: Path, eicar: bytes
) -> None:
    # no startup walk: one that lists bad.com after its close but before
    # that close's event would find it first, as "startup scan"
    daemon = start_daemon(startup_scan="none")
    bad, good = watched / "bad.com", watched / "good.txt"
    bad.write_bytes(eicar)
    good.write_text("hello")
    daemon.wait_verdicts([bad, good], timeout=30)
    found = only_once(daemon, [bad, good])
    assert found[str(bad)]["event"] == "detection"
    assert found[str(bad)]["signature"] == EICAR_SIGNATURE
    assert found[str(bad)]["reason"] == "closed after write"
    assert found[str(bad)]["transport"] == "fildes"
    assert 0 <= found[str(bad)]["latency_ms"] < 5000
    assert found[str(good)]["event"] == "clean"


def test_each_daemon_thread_has_its_name_in_the_kernel(
    start_daemon: StartDaemon, watched: Path, eicar: bytes
) -> None:
    """What `top -H` shows: cw-dispatch, cw-clamd, ... rather than "python3" for all."""
    daemon = start_daemon()
    bad = watched / "bad.com"
    bad.write_bytes(eicar)  # its move to the quarantine starts an action thread
    daemon.wait_event("action-done", timeout=30)
    expected = {"cw-dispatch", "cw-clamd", "cw-inotify", "cw-walk", "cw-watch-roots", "cw-action_0"}
    tasks = Path(f"/proc/{daemon.process.pid}/task")
    names: set[str] = set()
    deadline = time.monotonic() + 10
    while not expected <= names and time.monotonic() < deadline:
        names = set()
        for task in tasks.iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                names.add((task / "comm").read_text().rstrip("\n"))
        time.sleep(0.05)
    assert expected <= names, f"missing {sorted(expected - names)} in {sorted(names)}"


def test_cp_r_of_a_tree(
    start_daemon: StartDaemon, watched: Path, tmp_path: Path, eicar: bytes
) -> None:
    daemon = start_daemon()
    source = tmp_path / "source"
    files = []
    for number in range(60):
        path = source / f"d{number % 6}" / f"sub{number % 2}" / f"f{number}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(eicar if number % 10 == 0 else b"clean %d" % number)
        files.append(path)
    subprocess.run(["cp", "-r", str(source), str(watched / "copy")], check=True)
    copies = [watched / "copy" / p.relative_to(source) for p in files]
    daemon.wait_verdicts(copies, timeout=60)
    found = only_once(daemon, copies)
    infected = {p for p, e in found.items() if e["event"] == "detection"}
    assert infected == {str(watched / "copy" / p.relative_to(source)) for p in files[::10]}


def test_mv_from_outside_and_rsync_style_rename(
    start_daemon: StartDaemon, watched: Path, tmp_path: Path, eicar: bytes
) -> None:
    # no startup walk: one still under way could find moved.bin before its
    # IN_MOVED_TO is read, and the verdict's reason would be "startup scan"
    daemon = start_daemon(startup_scan="none")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(eicar)
    moved = watched / "moved.bin"
    os.rename(outside, moved)
    # rsync: write a hidden temporary name, then rename it to the final name
    temporary = watched / ".final.txt.Xa9c2Q"
    temporary.write_bytes(eicar)
    final = watched / "final.txt"
    os.rename(temporary, final)
    daemon.wait_verdicts([moved, final], timeout=30)
    verdicts = daemon.verdicts()
    assert verdicts[str(moved)][0]["reason"] == "moved in"
    assert verdicts[str(moved)][0]["event"] == "detection"
    assert [e["event"] for e in verdicts[str(final)]] == ["detection"]


def test_200_new_directories_with_3_files_each(start_daemon: StartDaemon, watched: Path) -> None:
    """Writes land in a new directory before its watch exists: the walk finds them."""
    daemon = start_daemon()
    paths: list[Path] = []

    def writer(first: int) -> None:
        for number in range(first, 200, 4):
            directory = watched / f"dir{number:03}"
            directory.mkdir()
            for name in ("a", "b", "c"):
                (directory / name).write_bytes(b"file %d %s" % (number, name.encode()))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    paths = [watched / f"dir{n:03}" / name for n in range(200) for name in "abc"]
    daemon.wait_verdicts(paths, timeout=90)
    found = only_once(daemon, paths)
    assert {e["event"] for e in found.values()} == {"clean"}


def test_overflow_while_stopped_every_file_still_gets_a_verdict(
    start_daemon: StartDaemon, watched: Path
) -> None:
    """SIGSTOP the daemon while 20,000 files are written: the kernel queue overflows.

    The files go into directories that are already watched (a probe file in
    each got its verdict), so each write queues kernel events: three per
    file, far over the default fs.inotify.max_queued_events of 16,384.
    """
    daemon = start_daemon()
    directories = [watched / f"batch{n:02}" for n in range(20)]
    probes = []
    for directory in directories:
        directory.mkdir()
        (directory / "probe").write_bytes(b"probe")
        probes.append(directory / "probe")
    daemon.wait_verdicts(probes, timeout=60)
    daemon.signal(signal.SIGSTOP)
    paths = []
    try:
        for number in range(20_000):
            path = directories[number // 1000] / f"f{number:05}"
            path.write_bytes(b"%d" % number)
            paths.append(path)
    finally:
        daemon.signal(signal.SIGCONT)
    daemon.wait_verdicts(paths, timeout=300)
    assert any(e["event"] == "overflow-rescan" for e in daemon.events)
    verdicts = daemon.verdicts()
    assert all(verdicts[str(p)][0]["event"] == "clean" for p in paths)
    duplicates = sum(len(verdicts[str(p)]) - 1 for p in paths)
    assert duplicates == 0, f"{duplicates} duplicate verdicts"


def test_clamd_stopped_for_10_s_mid_burst(
    clamd_factory: ClamdFactory,
    start_daemon: StartDaemon,
    watched: Path,
    eicar: bytes,
) -> None:
    server = clamd_factory(max_threads=2)
    daemon = start_daemon(address=server.unix_address)
    paths = [watched / f"f{n:04}" for n in range(600)]
    for number, path in enumerate(paths[:200]):
        path.write_bytes(eicar if number % 7 == 0 else b"clean %d" % number)
    daemon.wait_verdicts(paths[:50], timeout=60)
    server.kill()
    for number, path in enumerate(paths[200:], 200):
        path.write_bytes(eicar if number % 7 == 0 else b"clean %d" % number)
    # clamd down for 10 s is the condition under test, not a wait for an event
    time.sleep(10)
    server.restart()
    daemon.wait_verdicts(paths, timeout=120)
    found = only_once(daemon, paths)
    for number, path in enumerate(paths):
        assert found[str(path)]["event"] == ("detection" if number % 7 == 0 else "clean"), path


def test_sigterm_mid_burst_then_restart_misses_nothing(
    start_daemon: StartDaemon, watched: Path, eicar: bytes
) -> None:
    daemon = start_daemon()
    paths = [watched / f"f{n:05}" for n in range(3000)]
    for number, path in enumerate(paths):
        path.write_bytes(eicar if number % 100 == 0 else b"clean %d" % number)
    daemon.wait_until(
        lambda events: sum(e["event"] in ("clean", "detection") for e in events) >= 200,
        60,
        "200 verdicts",
    )
    assert daemon.stop() == 0
    stopped = [e for e in daemon.events if e["event"] == "stopped"]
    assert len(stopped) == 1
    first_run = daemon.verdicts()
    # written while clamwatch is not running: the next start must find it
    late = watched / "written-while-stopped"
    late.write_bytes(eicar)
    again = start_daemon()
    again.wait_until(
        lambda events: (
            {str(p) for p in [*paths, late]}
            <= set(first_run)
            | {e.get("path") for e in events if e["event"] in ("clean", "detection")}
        ),
        120,
        "every file scanned across both runs",
    )
    second_run = again.verdicts()
    assert second_run[str(late)][0]["event"] == "detection"
    infected = {
        p
        for run in (first_run, second_run)
        for p, evs in run.items()
        if evs[0]["event"] == "detection"
    }
    assert infected == {str(p) for p in paths[::100]} | {str(late)}


def test_watch_root_created_late_and_recreated(
    start_daemon: StartDaemon, tmp_path: Path, eicar: bytes
) -> None:
    root = tmp_path / "later"
    daemon = start_daemon(watches=[root])
    waiting = daemon.wait_event("watch-waiting")
    assert "does not exist yet" in waiting["message"]
    root.mkdir()
    daemon.wait_until(
        lambda evs: any(e["event"] == "watch-armed" for e in evs), 15, "the root to be armed"
    )
    first = root / "one"
    first.write_bytes(eicar)
    daemon.wait_verdicts([first], timeout=30)
    shutil.rmtree(root)
    daemon.wait_until(
        lambda evs: any("was removed" in e["message"] for e in evs), 15, "the root removal"
    )
    root.mkdir()
    daemon.wait_until(
        lambda evs: sum(e["event"] == "watch-armed" for e in evs) >= 2, 15, "re-arming"
    )
    second = root / "two"
    second.write_bytes(eicar)
    daemon.wait_verdicts([second], timeout=30)


def test_a_root_that_appears_after_the_start_is_walked_even_with_startup_scan_none(
    start_daemon: StartDaemon, tmp_path: Path, eicar: bytes
) -> None:
    """A root is looked for once a second until it exists: a file written into it
    before its watch is armed has no event. "none" skips what was there at the
    start, not that: the root is walked for what is newer than the start."""
    moved_in = tmp_path / "prepared"
    moved_in.mkdir()
    old = moved_in / "there-before-the-start.com"
    old.write_bytes(eicar)
    # older than the start by more than the slack "none" allows for it
    while time.time() < old.stat().st_ctime + _SLACK + 0.1:
        time.sleep(0.05)
    root = tmp_path / "later"
    daemon = start_daemon(watches=[root], startup_scan="none")
    daemon.wait_event("watch-waiting")
    moved_in.rename(root)
    early = root / "written-before-the-watch.com"
    early.write_bytes(eicar)  # well inside the second before the root is looked for again
    assert not any(e["event"] == "watch-armed" for e in daemon.events)
    daemon.wait_verdicts([early], timeout=30)
    marker = root / "marker.txt"
    marker.write_text("written once the root is watched\n")
    daemon.wait_verdicts([marker], timeout=30)
    found = only_once(daemon, [early, marker])
    assert found[str(early)]["event"] == "detection"
    assert found[str(early)]["reason"].startswith("watch armed after the start")
    assert str(root / old.name) not in daemon.verdicts()


def test_files_wait_for_a_late_clamd(
    clamd_factory: ClamdFactory, start_daemon: StartDaemon, watched: Path, eicar: bytes
) -> None:
    """Not ready until clamd answers; files written meanwhile wait, then are scanned."""
    server = clamd_factory()
    server.stop()
    daemon = start_daemon(address=server.unix_address, wait_ready=False)
    daemon.wait_event("clamd-lost")
    daemon.wait_event("watch-armed")
    bad = watched / "bad"
    bad.write_bytes(eicar)
    assert not daemon.verdicts()  # waiting, not reported
    assert not any(e["event"] == "ready" for e in daemon.events)
    server.restart()
    daemon.wait_event("ready", timeout=30)
    daemon.wait_verdicts([bad], timeout=60)
    assert daemon.verdicts()[str(bad)][0]["event"] == "detection"
    back = daemon.wait_event("clamd-back")
    assert "answers again" in back["message"]


def test_bad_config_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[daemon]\nmax_pendnig = 10\n[[watch]]\npath = "/srv"\n')
    result = subprocess.run(
        [sys.executable, "-m", "clamwatch", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"{config}: [daemon] unknown key 'max_pendnig'" in result.stderr


def test_watching_and_the_startup_scan_leave_access_times_alone(
    start_daemon: StartDaemon, watched: Path
) -> None:
    """The daemon lists every folder of a tree when it starts watching it and
    in the startup scan, and reads every file: tmpwatch goes by the access
    times of both, and a scan is not a use of them. (Clean files: a detection
    would move one away.)"""
    (watched / "sub" / "deeper").mkdir(parents=True)
    files = [watched / "sub" / "a.txt", watched / "sub" / "deeper" / "b.txt"]
    for path in files:
        path.write_bytes(b"clean " + path.name.encode())
    # deepest first: aging a folder's child changes the folder's own times
    paths = [*files, watched / "sub" / "deeper", watched / "sub", watched]
    atimes = {path: age_access_time(path) for path in paths}
    daemon = start_daemon(startup_scan="all")
    daemon.wait_verdicts([str(path) for path in files], timeout=30)
    daemon.stop()
    assert {path: os.stat(path).st_atime_ns for path in paths} == atimes
    # an ordinary listing does update a folder's access time here
    os.listdir(watched)
    assert os.stat(watched).st_atime_ns != atimes[watched]


@pytest.mark.parametrize("mode", ["all", "none", "changed"])
def test_startup_scan_modes(
    start_daemon: StartDaemon, watched: Path, eicar: bytes, mode: str
) -> None:
    """Files already there at the first start: scanned with all and changed, not with none."""
    before = watched / "already-there"
    before.write_bytes(eicar)
    daemon = start_daemon(startup_scan=mode)
    after = watched / "written-after-start"
    after.write_bytes(eicar)
    daemon.wait_verdicts([after], timeout=30)
    if mode == "none":
        daemon.stop()
        assert str(before) not in daemon.verdicts()
    else:
        daemon.wait_verdicts([before], timeout=30)
        assert daemon.verdicts()[str(before)][0]["event"] == "detection"


def test_startup_scan_waits_for_a_file_still_being_written(
    start_daemon: StartDaemon, watched: Path, eicar: bytes
) -> None:
    """A file half-written when the daemon starts is scanned once, at its close."""
    done = watched / "done.txt"
    done.write_text("complete before the start")
    growing = watched / "growing.com"
    with growing.open("wb") as writer:
        writer.write(eicar[:10])  # a clean prefix; the rest comes after the start
        writer.flush()
        # a settle time far longer than the test: only the close may end the wait
        daemon = start_daemon(startup_scan="all", settle_time="120s")
        # the startup walk found both; the finished one is scanned at once
        daemon.wait_verdicts([done], timeout=30)
        assert str(growing) not in daemon.verdicts(), "scanned while still open for writing"
        writer.write(eicar[10:])
    daemon.wait_verdicts([growing], timeout=30)
    found = only_once(daemon, [done, growing])
    assert found[str(growing)]["event"] == "detection"
    assert found[str(growing)]["reason"] == "closed after write"


def test_exclusions_sizes_and_uids(
    start_daemon: StartDaemon, tmp_path: Path, watched: Path, clamd: PrivateClamd, eicar: bytes
) -> None:
    config = tmp_path / "rules.toml"
    config.write_text(
        f'[clamd]\naddress = "{clamd.unix_address}"\n'
        f'[daemon]\nstate_directory = "{tmp_path / "state"}"\nsettle_time = "500ms"\n'
        f'[quarantine]\ndirectory = "{tmp_path / "quarantine"}"\n'
        f'[[watch]]\npath = "{watched}"\nexclude = ["*.part", "cache/*"]\n'
        f'exclude_regex = ["/private/"]\nmin_size = 10\nmax_size = "1K"\nskip_uids = [4242]\n'
    )
    daemon = DaemonProcess(config)
    try:
        daemon.wait_event("ready")
        (watched / "cache").mkdir()
        (watched / "private").mkdir()
        skipped = [
            watched / "upload.part",
            watched / "cache" / "blob",
            watched / "private" / "secret",
            watched / "tiny",
        ]
        for path in skipped:
            path.write_bytes(eicar if path.name != "tiny" else b"123")
        # owned by a skipped uid from the moment it appears: made outside, moved in
        outside = tmp_path / "owned-by-4242"
        outside.write_bytes(eicar)
        os.chown(outside, 4242, 4242)
        os.rename(outside, watched / "owned-by-4242")
        skipped.append(watched / "owned-by-4242")
        big = watched / "big"
        big.write_bytes(eicar + b"x" * 2048)
        marker = watched / "marker"
        marker.write_bytes(eicar)
        daemon.wait_verdicts([big, marker], timeout=30)
    finally:
        daemon.stop()
    verdicts = daemon.verdicts()
    assert verdicts[str(big)][0]["event"] == "not-scanned"
    assert verdicts[str(big)][0]["not_scanned"] == "too-large"
    assert verdicts[str(marker)][0]["event"] == "detection"
    assert not {str(p) for p in skipped} & set(verdicts)


def test_state_directory_inside_a_watch_is_never_scanned(
    tmp_path: Path, watched: Path, clamd: PrivateClamd, eicar: bytes
) -> None:
    state = watched / ".clamwatch-state"
    config = write_config(
        tmp_path / "c.toml", address=clamd.unix_address, watches=[watched], state_directory=state
    )
    with DaemonProcess(config) as daemon:
        daemon.wait_event("ready")
        state.mkdir(exist_ok=True)
        (state / "planted").write_bytes(eicar)
        marker = watched / "marker"
        marker.write_bytes(eicar)
        daemon.wait_verdicts([marker], timeout=30)
        assert str(state / "planted") not in daemon.verdicts()


def test_demo_runs_the_daemon_on_a_private_clamd(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clamwatch", "demo", "--workdir", str(tmp_path), "--for", "6s"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found = f"{tmp_path}/uploads/docs/eicar-test-file.com: {EICAR_SIGNATURE} FOUND"
    assert found in result.stderr
    assert result.stderr.count(": OK\n") == 22
    assert "clamwatch stopped: 23 scanned, 1 infected" in result.stderr
    # quarantined in the demo's own folder: it went to the real service's before
    (record,) = (tmp_path / "quarantine").glob("*.json")
    original = json.loads(record.read_text())["original_path"]
    assert original == f"{tmp_path}/uploads/docs/eicar-test-file.com"


def test_a_state_that_cannot_be_saved_is_an_error_not_a_crash(
    start_daemon: StartDaemon, watched: Path, tmp_path: Path
) -> None:
    """SIGTERM with the state folder unwritable (here a file stands where it was, as
    a full disk would refuse it too): the daemon says so, names the folder, and
    exits 1 instead of 0, having scanned as usual until then."""
    daemon = start_daemon()
    state = tmp_path / "state"
    shutil.rmtree(state)
    state.write_text("in the way")
    (watched / "a.txt").write_text("hello")
    daemon.wait_verdicts([watched / "a.txt"], timeout=30)
    assert daemon.stop() == 1
    errors = [e["message"] for e in daemon.events if e["level"] == "error"]
    assert any(f"cannot save the state under {state}" in m for m in errors), errors
    # not "stopped", whose catalog entry says all was saved and nothing is to do
    assert [e for e in daemon.events if e["event"] == "stopped"] == []
    (stopped,) = [e for e in daemon.events if e["event"] == "stopped-unsaved"]
    assert "could NOT be saved" in stopped["message"]


def open_files_limit(soft: int, hard: int) -> tuple[str, ...]:
    """A start_daemon prefix: the daemon under these limits on open descriptors."""
    return ("prlimit", f"--nofile={soft}:{hard}", "--")


def test_the_daemon_raises_its_open_files_limit_to_the_hard_one(
    start_daemon: StartDaemon,
) -> None:
    """Each file waiting for its verdict holds a descriptor: started with systemd's
    usual soft limit far below the hard one, the daemon takes the hard one."""
    daemon = start_daemon(prefix=open_files_limit(256, 4096), wait_ready=False)
    daemon.wait_event("ready", timeout=30)
    limits = Path(f"/proc/{daemon.process.pid}/limits").read_text()
    (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert line.split()[3:5] == ["4096", "4096"], line


def test_a_low_open_files_limit_shrinks_the_window_not_the_verdicts(
    start_daemon: StartDaemon, watched: Path
) -> None:
    """Hard limit 256: the window of files opened ahead (1,024) shrinks to 64.

    Without that, a burst would open files until open(2) failed with EMFILE,
    and those files would get "Too many open files" errors instead of verdicts.
    """
    daemon = start_daemon(prefix=open_files_limit(256, 256), wait_ready=False)
    daemon.wait_event("ready", timeout=30)
    paths = []
    for number in range(1500):
        path = watched / f"f{number:04}.txt"
        path.write_text(f"clean file {number}\n")
        paths.append(path)
    daemon.wait_verdicts(paths, timeout=120)
    verdicts = daemon.verdicts()
    wrong = [e for path in paths for e in verdicts[str(path)] if e["verdict"] != "clean"]
    assert not wrong, wrong[:3]


def test_a_file_larger_than_clamd_scans_is_not_scanned_and_tagged_not_clean(
    start_daemon: StartDaemon, clamd_factory: ClamdFactory, watched: Path, eicar: bytes
) -> None:
    """clamd's MaxFileSize 1M, read from its clamd.conf: a 2 MB upload that starts
    with EICAR is a not-scanned event naming the limit (clamd would answer OK
    without scanning it), never clean; a small EICAR file beside it is found."""
    server = clamd_factory(extra={"MaxFileSize": "1M"})
    daemon = start_daemon(
        address=server.unix_address, clamd_options={"clamd_conf": str(server.conf_path)}
    )
    big = watched / "big.iso"
    big.write_bytes(eicar + b"x" * (2 << 20))
    small = watched / "small.com"
    small.write_bytes(eicar)
    daemon.wait_verdicts([big, small], timeout=30)
    found = only_once(daemon, [big, small])
    assert found[str(big)]["event"] == "not-scanned"
    assert found[str(big)]["not_scanned"] == "too-large"
    assert (
        f"larger than the 1048576 bytes clamd scans (MaxFileSize in {server.conf_path})"
        in (found[str(big)]["message"])
    )
    assert found[str(small)]["event"] == "detection"
    assert big.exists()  # not-scanned is tagged, not moved (on_not_scanned's default)


def test_a_limit_lowered_with_a_restart_of_clamd_is_followed(
    start_daemon: StartDaemon, clamd_factory: ClamdFactory, watched: Path, eicar: bytes
) -> None:
    """clamd restarted with MaxFileSize lowered from 4M to 1M in its clamd.conf: a
    2 MB upload that starts with EICAR, found before, is now not scanned (clamd
    would answer OK without scanning it), never clean."""
    server = clamd_factory(extra={"MaxFileSize": "4M"})
    daemon = start_daemon(
        address=server.unix_address, clamd_options={"clamd_conf": str(server.conf_path)}
    )
    before = watched / "before.iso"
    before.write_bytes(eicar + b"x" * (2 << 20))
    daemon.wait_verdicts([before], timeout=30)
    assert only_once(daemon, [before])[str(before)]["event"] == "detection"
    server.settings["MaxFileSize"] = "1M"
    server.restart()
    after = watched / "after.iso"
    after.write_bytes(eicar + b"x" * (2 << 20))
    daemon.wait_verdicts([after], timeout=60)
    found = only_once(daemon, [after])[str(after)]
    assert found["event"] == "not-scanned" and found["not_scanned"] == "too-large"
    assert (
        f"larger than the 1048576 bytes clamd scans (MaxFileSize in {server.conf_path})"
        in (found["message"])
    )


def test_a_reload_with_a_drop_in_that_is_not_utf8_is_refused_and_scanning_goes_on(
    start_daemon: StartDaemon, watched: Path, eicar: bytes
) -> None:
    """A Latin-1 byte in a drop-in was a UnicodeDecodeError, which no reload
    expected: the SIGHUP ended the daemon with a traceback."""
    daemon = start_daemon(startup_scan="none")
    dropins = daemon.config.with_suffix(".d")
    dropins.mkdir()
    (dropins / "10-more.toml").write_bytes(b"# caf\xe9 uploads\n[[watch]]\npath = '/srv/x'\n")
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_event("config-rejected")
    assert rejected["error"] == (
        f"{dropins / '10-more.toml'}: line 1: byte 0xe9 is not UTF-8"
        " (TOML files are UTF-8; was it saved as Latin-1?)"
    )
    bad = watched / "bad.com"
    bad.write_bytes(eicar)
    daemon.wait_verdicts([bad])
    assert daemon.verdicts()[str(bad)][0]["event"] == "detection"
    assert daemon.stop() == 0


def test_a_reload_names_each_setting_left_for_the_next_restart(
    start_daemon: StartDaemon, watched: Path, eicar: bytes
) -> None:
    """The event said "changes to [daemon] take effect at the next restart",
    not which of its settings, nor in a field to filter on. A drop-in changes
    them here, and the watch's rules, which do change at once."""
    daemon = start_daemon(startup_scan="none", watch_options={"on_infected": ["copy"]})
    dropins = daemon.config.with_suffix(".d")
    dropins.mkdir()
    (dropins / "10-tune.toml").write_text(
        "[clamd]\nsessions = 3\n[daemon]\nsettle_time = '1s'\nmax_pending = 10\n"
    )
    config = daemon.config.read_text()
    daemon.config.write_text(config.replace('on_infected = ["copy"]', 'on_infected = ["none"]'))
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_event("config-reloaded")
    ignored = "[clamd] sessions, [daemon] max_pending, [daemon] settle_time"
    assert reloaded["restart_needed"] == ignored
    assert reloaded["message"].endswith(f"; not applied until the next restart: {ignored}")
    bad = watched / "bad.com"
    bad.write_bytes(eicar)
    daemon.wait_verdicts([bad])
    assert daemon.verdicts()[str(bad)][0]["action"] == "none"
    assert daemon.stop() == 0


def test_a_reload_may_not_add_a_watch_in_the_quarantine_still_in_use(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A reload was checked against the folders the new file names, but the
    running daemon keeps its quarantine until a restart: a watch added where
    that quarantine is passed, and was never scanned (clamwatch leaves its
    own folders out)."""
    in_use = tmp_path / "quarantine"
    daemon = start_daemon(startup_scan="none", quarantine={"directory": str(in_use)})
    (in_use / "inbox").mkdir(parents=True, exist_ok=True)
    moved = tmp_path / "elsewhere"
    config = daemon.config.read_text()
    config = config.replace(str(in_use), str(moved))
    config += f'[[watch]]\npath = "{in_use / "inbox"}"\n'
    daemon.config.write_text(config)
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_event("config-rejected")
    assert (
        f"watch '{in_use / 'inbox'}' is or lies inside [quarantine] directory"
        in (rejected["error"])
    ), rejected["error"]
    assert daemon.stop() == 0
