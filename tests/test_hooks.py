"""Hooks as an admin writes them and as they go wrong: real processes, real files."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clamwatch.actions import ActionRequest, ActionRunner
from clamwatch.config import WatchConfig
from clamwatch.files import OpenedFile, open_for_scan
from clamwatch.policy import parse_rule
from clamwatch.verdict import Clean, Infected
from helpers import EventRecorder, recording_events, wait_for


@pytest.fixture
def events() -> Iterator[EventRecorder]:
    with recording_events() as recorder:
        yield recorder


def hook_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def submit(runner: ActionRunner, path: Path, watch: WatchConfig) -> None:
    path.write_bytes(b"scanned")
    opened = open_for_scan(str(path))
    assert isinstance(opened, OpenedFile)
    rule = parse_rule(["hook"], for_clean=False)
    runner.submit(ActionRequest(str(path), watch, Infected("Test.Sig"), rule, None, opened))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_hook_past_its_timeout_is_killed_with_its_children(
    tmp_path: Path, events: EventRecorder
) -> None:
    """A shell script's child kept the pipe open after the shell was killed: the
    worker waited for the child (here 60 s), not hook_timeout."""
    pids = tmp_path / "pids"
    script = hook_script(tmp_path, f"sleep 60 &\necho $! > {pids}\nwait\n")
    watch = WatchConfig(tmp_path, "t", hook=(str(script),), hook_timeout=0.5)
    runner = ActionRunner(None, lambda *a: None)
    try:
        submit(runner, tmp_path / "upload", watch)
        wait_for(lambda: bool(events.of("action-failed")), 10, "the hook's timeout event")
        (failed,) = events.of("action-failed")
        assert failed["path"] == str(tmp_path / "upload")
        assert "ran longer than 0.5 s and was killed" in str(failed["error"])
        child = int(pids.read_text())
        wait_for(lambda: not alive(child), 5, "the hook's child killed")
    finally:
        runner.close()


def test_a_stop_kills_running_hooks_and_names_each_file_left(
    tmp_path: Path, events: EventRecorder
) -> None:
    script = hook_script(tmp_path, f"sleep 60 &\necho $! >> {tmp_path / 'pids'}\nwait\n")
    watch = WatchConfig(tmp_path, "t", hook=(str(script),), hook_timeout=120)
    runner = ActionRunner(None, lambda *a: None, hook_workers=1)
    first, queued = tmp_path / "first", tmp_path / "queued"
    submit(runner, first, watch)
    wait_for((tmp_path / "pids").exists, 10, "the first hook started")
    submit(runner, queued, watch)
    started = time.monotonic()
    runner.close()
    assert time.monotonic() - started < 5, "the stop waited for the hook's child"
    failed = {e["path"]: str(e["error"]) for e in events.of("action-failed")}
    assert failed == {
        str(first): f"{script} was killed: clamwatch is stopping",
        str(queued): f"{script} was not run: clamwatch stopped first",
    }
    (child,) = (int(pid) for pid in (tmp_path / "pids").read_text().split())
    wait_for(lambda: not alive(child), 5, "the hook's child killed")


def test_a_hook_that_writes_megabytes_to_stderr_is_not_kept_in_memory(
    tmp_path: Path, events: EventRecorder
) -> None:
    script = hook_script(
        tmp_path, "head -c 300000000 /dev/zero | tr '\\0' x >&2\necho >&2\necho boom >&2\nexit 2\n"
    )
    watch = WatchConfig(tmp_path, "t", hook=(str(script),), hook_timeout=60)
    runner = ActionRunner(None, lambda *a: None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    submit(runner, tmp_path / "upload", watch)
    wait_for(lambda: bool(events.of("action-failed")), 30, "the hook's end")
    runner.close()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    (failed,) = events.of("action-failed")
    assert failed["error"] == f"{script} exited with status 2: boom"
    assert grown < 100_000, f"{grown} KiB more for a hook's 300 MB of stderr"


def test_a_hook_killed_by_a_signal_says_which(tmp_path: Path, events: EventRecorder) -> None:
    script = hook_script(tmp_path, "echo 'out of memory, say' >&2\nkill -TERM $$\n")
    watch = WatchConfig(tmp_path, "t", hook=(str(script),))
    runner = ActionRunner(None, lambda *a: None)
    submit(runner, tmp_path / "upload", watch)
    wait_for(lambda: bool(events.of("action-failed")), 10, "the hook's end")
    runner.close()
    (failed,) = events.of("action-failed")
    assert failed["error"] == f"{script} was killed by signal 15 (SIGTERM): out of memory, say"


def test_a_hook_that_leaves_a_child_running_ends_when_it_exits(
    tmp_path: Path, events: EventRecorder
) -> None:
    """Its child holds the stderr pipe open: the hook's exit is its end all the same."""
    pids = tmp_path / "pids"
    script = hook_script(tmp_path, f"sleep 30 &\necho $! > {pids}\nexit 0\n")
    watch = WatchConfig(tmp_path, "t", hook=(str(script),), hook_timeout=20)
    runner = ActionRunner(None, lambda *a: None)
    try:
        started = time.monotonic()
        submit(runner, tmp_path / "upload", watch)
        wait_for(lambda: bool(events.of("action-done")), 10, "the hook's action-done")
        assert time.monotonic() - started < 10
    finally:
        runner.close()
        os.kill(int(pids.read_text()), signal.SIGKILL)  # left running, as the hook meant
    assert not events.of("action-failed")


def test_the_hook_runs_when_the_file_action_failed_and_hears_why(
    tmp_path: Path, events: EventRecorder
) -> None:
    """on_infected = ["remove", "hook"]: the file could not be removed, which is
    just when the admin's hook must hear of it; it was not run at all."""
    out = tmp_path / "env"
    script = hook_script(
        tmp_path, f'printf "%s|%s" "$CLAMWATCH_ACTION_ERROR" "$CLAMWATCH_PATH" > {out}\n'
    )
    folder = tmp_path / "uploads"
    folder.mkdir()
    path = folder / "upload"
    path.write_bytes(b"scanned")
    # before the scan: made so after it, it would be a file changed since (its ctime)
    subprocess.run(["chattr", "+i", str(path)], check=True)  # not even root may remove it
    try:
        opened = open_for_scan(str(path))
        assert isinstance(opened, OpenedFile)
        watch = WatchConfig(folder, "t", hook=(str(script),))
        runner = ActionRunner(None, lambda *a: None)
        rule = parse_rule(["remove", "hook"], for_clean=False)
        runner.submit(ActionRequest(str(path), watch, Infected("Test.Sig"), rule, None, opened))
        wait_for(lambda: bool(events.of("action-done")), 10, "the hook's run")
        runner.close()
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    (failed,) = events.of("action-failed")
    assert failed["action"] == "remove"
    assert str(failed["error"]).startswith("Operation not permitted")
    assert [e["action"] for e in events.of("action-done")] == ["hook"]
    assert out.read_text() == f"remove failed: {failed['error']}|{path}"
    assert path.exists()


def test_no_hook_for_a_file_replaced_before_its_action(
    tmp_path: Path, events: EventRecorder
) -> None:
    """The new content has its own scan, and its own hook: none for the old one."""
    script = hook_script(tmp_path, "exit 0\n")
    path = tmp_path / "upload"
    path.write_bytes(b"scanned")
    opened = open_for_scan(str(path))
    assert isinstance(opened, OpenedFile)
    path.unlink()
    path.write_bytes(b"another file, not scanned yet")
    watch = WatchConfig(tmp_path, "t", hook=(str(script),))
    runner = ActionRunner(None, lambda *a: None)
    rule = parse_rule(["remove", "hook"], for_clean=False)
    runner.submit(ActionRequest(str(path), watch, Infected("Test.Sig"), rule, None, opened))
    runner.close()
    assert not events.of("action-done") and not events.of("action-failed")
    assert path.read_bytes() == b"another file, not scanned yet"


def test_no_hook_for_a_verdict_on_content_written_over_since(
    tmp_path: Path, events: EventRecorder
) -> None:
    """on_clean = ["hook"] with a hook that publishes the file: content appended
    after the clean scan was published as clean. It has its own scan coming."""
    out = tmp_path / "ran"
    script = hook_script(tmp_path, f"echo ran > {out}\n")
    watch = WatchConfig(tmp_path, "t", hook=(str(script),))
    path = tmp_path / "upload"
    path.write_bytes(b"clean")
    opened = open_for_scan(str(path))
    assert isinstance(opened, OpenedFile)
    with path.open("ab") as writer:
        writer.write(b"; not scanned yet")
    runner = ActionRunner(None, lambda *a: None)
    rule = parse_rule(["hook"], for_clean=True)
    runner.submit(ActionRequest(str(path), watch, Clean(), rule, None, opened))
    runner.close()
    assert not out.exists()
    assert not events.of("action-done") and not events.of("action-failed")


def test_the_hook_runs_for_a_file_gone_since_its_scan(
    tmp_path: Path, events: EventRecorder
) -> None:
    """A detection in a file deleted at once: no new scan will tell of it."""
    out = tmp_path / "ran"
    script = hook_script(tmp_path, f'echo "$CLAMWATCH_VERDICT" > {out}\n')
    watch = WatchConfig(tmp_path, "t", hook=(str(script),))
    path = tmp_path / "upload"
    path.write_bytes(b"infected, say")
    opened = open_for_scan(str(path))
    assert isinstance(opened, OpenedFile)
    path.unlink()
    runner = ActionRunner(None, lambda *a: None)
    rule = parse_rule(["hook"], for_clean=False)
    runner.submit(ActionRequest(str(path), watch, Infected("Test.Sig"), rule, None, opened))
    wait_for(lambda: bool(events.of("action-done")), 10, "the hook's run")
    runner.close()
    assert out.read_text() == "infected\n"


def test_a_failure_tried_again_runs_its_hook_once_per_version_and_error(
    tmp_path: Path, events: EventRecorder
) -> None:
    """A quarantine that stays full is tried again every minute: the hook (a
    mail to the admin) ran each time. It runs again for new content only."""
    log = tmp_path / "hook.log"
    script = hook_script(tmp_path, f'echo "$CLAMWATCH_ACTION_ERROR" >> {log}\n')
    watch = WatchConfig(tmp_path, "t", hook=(str(script),))
    rule = parse_rule(["move", "hook"], for_clean=False)
    upload = tmp_path / "upload"
    upload.write_bytes(b"first")
    runner = ActionRunner(None, lambda *a: None)  # no quarantine: every move fails

    def act() -> None:
        opened = open_for_scan(str(upload))
        assert isinstance(opened, OpenedFile)
        runner.submit(ActionRequest(str(upload), watch, Infected("Test.Sig"), rule, None, opened))
        wait_for(lambda: runner.acting() == [], 10, "the actions' end")

    try:
        act()
        act()  # the retry: the same version, the same failure
        assert log.read_text().splitlines() == ["move failed: no quarantine is configured"]
        upload.write_bytes(b"second, longer")
        act()
        assert len(log.read_text().splitlines()) == 2
        assert len(events.of("action-failed")) == 3  # each failure is still an event
    finally:
        runner.close()
