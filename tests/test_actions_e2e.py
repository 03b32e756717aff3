"""Policies and actions end to end: the daemon, real files, the real clamd."""

from __future__ import annotations

import itertools
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from clamwatch.testsig import EICAR_SIGNATURE
from daemonproc import DaemonProcess, StartDaemon

Start = Callable[..., DaemonProcess]


@pytest.fixture
def quarantine_dir(tmp_path: Path) -> Path:
    return tmp_path / "quarantine"


@pytest.fixture
def start(start_daemon: StartDaemon, quarantine_dir: Path) -> Start:
    def run(quarantine: dict[str, Any] | None = None, **watch_options: Any) -> DaemonProcess:
        return start_daemon(
            quarantine={"directory": str(quarantine_dir), **(quarantine or {})},
            watch_options=watch_options,
        )

    return run


def actions(daemon: DaemonProcess, path: Path, kind: str = "action-done") -> list[dict[str, Any]]:
    return [e for e in daemon.events if e["event"] == kind and e.get("path") == str(path)]


def wait_action(
    daemon: DaemonProcess, path: Path, action: str, kind: str = "action-done"
) -> dict[str, Any]:
    daemon.wait_until(
        lambda evs: any(
            e["event"] == kind and e.get("path") == str(path) and e.get("action") == action
            for e in evs
        ),
        30,
        f"{kind} {action} for {path}",
    )
    return next(e for e in actions(daemon, path, kind) if e["action"] == action)


def records(quarantine_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(quarantine_dir.glob("*.json"))]


def test_infected_is_moved_to_quarantine_by_default(
    start: Start, watched: Path, quarantine_dir: Path, eicar: bytes
) -> None:
    daemon = start()
    bad, good = watched / "bad.exe", watched / "good.txt"
    good.write_text("fine")
    bad.write_bytes(eicar)
    done = wait_action(daemon, bad, "move")
    daemon.wait_verdicts([good])
    assert not bad.exists() and good.exists()
    (record,) = records(quarantine_dir)
    assert record["id"] == done["quarantine_id"]
    assert record["signature"] == EICAR_SIGNATURE
    assert record["original_path"] == str(bad)
    data = quarantine_dir / record["id"]
    assert data.read_bytes() == eicar
    assert stat.S_IMODE(data.stat().st_mode) == 0o600
    assert stat.S_IMODE(quarantine_dir.stat().st_mode) == 0o700
    verdict = daemon.verdicts()[str(bad)][0]
    assert verdict["action"] == "move"


def test_copy_remove_and_tag(
    start: Start, watched: Path, quarantine_dir: Path, eicar: bytes
) -> None:
    daemon = start(on_infected=["copy", "tag"], on_clean=["tag"])
    bad, good = watched / "bad", watched / "good"
    bad.write_bytes(eicar)
    good.write_text("fine")
    wait_action(daemon, bad, "copy")
    wait_action(daemon, good, "tag")
    wait_action(daemon, bad, "tag")
    assert bad.read_bytes() == eicar  # copied, not moved
    assert len(records(quarantine_dir)) == 1
    assert os.getxattr(bad, "user.clamwatch.verdict") == b"infected"
    assert os.getxattr(bad, "user.clamwatch.signature") == EICAR_SIGNATURE.encode()
    assert os.getxattr(good, "user.clamwatch.verdict") == b"clean"
    assert os.getxattr(good, "user.clamwatch.database").startswith(b"ClamAV ")
    assert os.getxattr(good, "user.clamwatch.scanned_at").endswith(b"Z")


def test_log_clean_false_leaves_out_only_the_clean_verdicts(
    start: Start, watched: Path, eicar: bytes
) -> None:
    """Clean files are still scanned (their tags say so) and counted, with no clean event;
    the detection and every action are still logged. A clean event would come before its
    action's, so none can turn up later."""
    daemon = start(on_clean=["tag"], log_clean=False)
    good = [watched / f"good{number}.txt" for number in range(3)]
    for path in good:
        path.write_text("fine")
    bad = watched / "bad.exe"
    bad.write_bytes(eicar)
    wait_action(daemon, bad, "move")
    for path in good:
        assert wait_action(daemon, path, "tag")["verdict"] == "clean"
        assert os.getxattr(path, "user.clamwatch.verdict") == b"clean"
    verdicts = daemon.verdicts()
    assert [e["event"] for e in verdicts[str(bad)]] == ["detection"]
    assert not [p for p in good if str(p) in verdicts]
    assert daemon.stop() == 0
    stopped = next(e for e in daemon.events if e["event"] == "stopped")
    assert stopped["message"].startswith("clamwatch stopped: 4 scanned, 1 infected")


def test_remove(start: Start, watched: Path, quarantine_dir: Path, eicar: bytes) -> None:
    daemon = start(on_infected=["remove"])
    bad = watched / "bad"
    bad.write_bytes(eicar)
    wait_action(daemon, bad, "remove")
    assert not bad.exists()
    assert records(quarantine_dir) == []


def test_release_clean_files_keeping_their_path(
    start: Start, watched: Path, tmp_path: Path, quarantine_dir: Path, eicar: bytes
) -> None:
    released = tmp_path / "released"
    daemon = start(on_clean=["release"], release_to=str(released))
    (watched / "sub").mkdir()
    good, bad = watched / "sub" / "good.pdf", watched / "sub" / "bad.pdf"
    good.write_text("fine")
    bad.write_bytes(eicar)
    done = wait_action(daemon, good, "release")
    wait_action(daemon, bad, "move")
    assert done["released_to"] == str(released / "sub" / "good.pdf")
    assert (released / "sub" / "good.pdf").read_text() == "fine"
    assert not good.exists() and not bad.exists()
    assert not (released / "sub" / "bad.pdf").exists()


def test_a_file_still_open_for_writing_is_not_released(
    start: Start, watched: Path, tmp_path: Path, quarantine_dir: Path, eicar: bytes
) -> None:
    """Scanned once it held still for settle_time (its writer paused), it was
    released at once, and its writer went on writing EICAR into the released
    file, which no scan ever saw. Now it waits for its writer."""
    released = tmp_path / "released"
    daemon = start(on_clean=["release"], release_to=str(released))
    upload = watched / "upload.com"
    with open(upload, "wb") as writer:
        writer.write(eicar[:20])
        writer.flush()
        daemon.wait_until(
            lambda evs: any(
                e["event"] == "action-failed" and e.get("path") == str(upload) for e in evs
            ),
            30,
            "the release put off",
        )
        writer.write(eicar[20:])
    wait_action(daemon, upload, "move")  # to the quarantine, at its close
    assert not released.exists() or os.listdir(released) == []
    (deferred,) = [e for e in actions(daemon, upload, "action-failed") if e["action"] == "release"]
    assert deferred["error"] == "still open for writing"
    assert [r["original_path"] for r in records(quarantine_dir)] == [str(upload)]


def test_a_file_held_open_is_looked_at_less_and_less_often_and_said_once(
    start: Start, watched: Path, tmp_path: Path
) -> None:
    """Held open by its writer (a slow upload, or an uploader on purpose), a
    file was scanned, and an action-failed event sent, every 5 s for as long."""
    released = tmp_path / "released"
    daemon = start(on_clean=["release"], release_to=str(released))
    upload = watched / "slow.txt"
    with open(upload, "wb") as writer:
        writer.write(b"the first part, then a pause")
        writer.flush()
        # scanned at settle_time, then again 5 and 10 s after: three verdicts
        daemon.wait_until(
            lambda evs: len(daemon.verdicts().get(str(upload), [])) >= 3, 40, "three looks"
        )
        looked = daemon.verdicts()[str(upload)]
        times = [datetime.fromisoformat(e["time"]).timestamp() for e in looked]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps[1] > gaps[0] * 1.5, gaps  # 5 s, then 10 s
        failed = actions(daemon, upload, "action-failed")
        assert [e["error"] for e in failed] == ["still open for writing"]
    done = wait_action(daemon, upload, "release")  # at its close
    assert done["released_to"] == str(released / "slow.txt")


def test_a_file_with_other_hard_links_is_not_released(
    start: Start, watched: Path, tmp_path: Path
) -> None:
    """Released, it could still be changed through its other name, unscanned."""
    released = tmp_path / "released"
    daemon = start(on_clean=["release"], release_to=str(released))
    outside = tmp_path / "outside.txt"
    outside.write_text("clean for now")
    linked = watched / "linked.txt"
    os.link(outside, linked)
    failed = wait_action(daemon, linked, "release", "action-failed")
    assert failed["error"] == (
        "it has 2 hard links, through which it could be changed after its scan; not released"
    )
    assert linked.exists() and not (released / "linked.txt").exists()


def test_the_names_clamwatch_gives_files_it_removes_are_not_scanned(
    tmpfs: Callable[[Path, str], None], start: Start, watched: Path, tmp_path: Path
) -> None:
    """A release to another file system copies, then removes the original by
    renaming it to .clamwatch-HEX-NAME first: the watch scanned that name
    while it lasted (22 extra verdicts for 200 files, each then "replaced
    before it could be released")."""
    released = tmp_path / "released"
    tmpfs(released, "16m")
    daemon = start(on_clean=["release"], release_to=str(released))
    files = [watched / f"f{number:03}" for number in range(200)]
    for path in files:
        path.write_text(f"clean {path.name}")
    daemon.wait_until(
        lambda evs: len([e for e in evs if e["event"] == "action-done"]) == 200,
        60,
        "every file released",
    )
    assert sorted(os.listdir(released)) == [path.name for path in files]
    # a last file, after the rest: the events of every rename came before its verdict
    marker = watched / "marker"
    marker.write_text("clean")
    wait_action(daemon, marker, "release")
    named = {e["path"] for e in daemon.events if "path" in e}
    assert [path for path in named if ".clamwatch-" in path] == []


def test_one_version_announced_many_times_gives_one_quarantine_entry(
    start: Start, watched: Path, quarantine_dir: Path, eicar: bytes
) -> None:
    daemon = start(on_infected=["copy"])
    bad = watched / "bad"
    bad.write_bytes(eicar)
    for _ in range(10):  # opened for writing and closed: a close-write event each time
        with open(bad, "r+b"):
            pass
    wait_action(daemon, bad, "copy")
    marker = watched / "marker"
    marker.write_bytes(eicar)
    wait_action(daemon, marker, "copy")
    assert len([r for r in records(quarantine_dir) if r["original_path"] == str(bad)]) == 1


def test_quarantine_on_another_file_system(
    tmpfs: Callable[[Path, str], None],
    start: Start,
    watched: Path,
    quarantine_dir: Path,
    eicar: bytes,
) -> None:
    tmpfs(quarantine_dir, "4m")
    daemon = start()
    bad = watched / "bad"
    bad.write_bytes(eicar + b"tail")
    wait_action(daemon, bad, "move")
    assert not bad.exists()
    (record,) = records(quarantine_dir)
    assert (quarantine_dir / record["id"]).read_bytes() == eicar + b"tail"


def test_full_quarantine_leaves_the_file_and_says_so(
    tmpfs: Callable[[Path, str], None],
    start: Start,
    watched: Path,
    quarantine_dir: Path,
    eicar: bytes,
) -> None:
    tmpfs(quarantine_dir, "64k")
    daemon = start(chmod_on_failure=True)
    bad = watched / "big-bad"
    bad.write_bytes(eicar + os.urandom(256 * 1024))
    failed = wait_action(daemon, bad, "move", kind="action-failed")
    assert "No space left on device" in failed["error"]
    wait_action(daemon, bad, "chmod 000")
    assert bad.exists() and bad.read_bytes().startswith(eicar)  # root reads mode 000 too
    assert stat.S_IMODE(bad.stat().st_mode) == 0
    assert records(quarantine_dir) == []
    assert [p for p in quarantine_dir.iterdir() if not p.name.startswith(".")] == []


def test_a_file_locked_up_then_quarantined_keeps_its_own_mode_in_the_record(
    tmpfs: Callable[[Path, str], None],
    start: Start,
    watched: Path,
    quarantine_dir: Path,
    eicar: bytes,
) -> None:
    """chmod_on_failure makes the file 000; the quarantine that works at the
    next try recorded 000, and a restore gave back an unreadable file."""
    tmpfs(quarantine_dir, "64k")
    daemon = start(chmod_on_failure=True)
    bad = watched / "big-bad"
    bad.write_bytes(eicar + os.urandom(256 * 1024))
    bad.chmod(0o640)
    wait_action(daemon, bad, "chmod 000")
    assert stat.S_IMODE(bad.stat().st_mode) == 0
    subprocess.run(["mount", "-o", "remount,size=4m", str(quarantine_dir)], check=True)
    with open(bad, "r+b"):  # a close after writing: scanned again, not in a minute
        pass
    wait_action(daemon, bad, "move")
    (record,) = records(quarantine_dir)
    assert stat.S_IMODE(record["mode"]) == 0o640


def test_hanging_hook_does_not_slow_scanning(
    start: Start, watched: Path, tmp_path: Path, eicar: bytes
) -> None:
    log = tmp_path / "hook.log"
    script = tmp_path / "hook.sh"
    script.write_text(
        f'#!/bin/sh\necho "$CLAMWATCH_VERDICT $CLAMWATCH_SIGNATURE $CLAMWATCH_PATH" >> {log}\n'
        'case "$CLAMWATCH_PATH" in *hang*) exec sleep 600;; esac\n'
    )
    script.chmod(0o755)
    daemon = start(
        on_clean=["hook"], on_infected=["move", "hook"], hook=[str(script)], hook_timeout="60s"
    )
    hangers = [watched / f"hang{n}" for n in range(8)]  # more than the hook workers
    for path in hangers:
        path.write_text("clean")
    started = time.monotonic()
    others = [watched / f"file{n:03}" for n in range(200)]
    for path in others:
        path.write_text("clean")
    bad = watched / "bad"
    bad.write_bytes(eicar)
    daemon.wait_verdicts([*others, bad], timeout=60)
    elapsed = time.monotonic() - started
    assert elapsed < 20, f"scanning took {elapsed:.1f} s behind hanging hooks"
    wait_action(daemon, bad, "move")


def test_hook_environment_and_failure(
    start: Start, watched: Path, tmp_path: Path, eicar: bytes
) -> None:
    out = tmp_path / "env.txt"
    script = tmp_path / "hook.sh"
    script.write_text(f"#!/bin/sh\nenv | grep ^CLAMWATCH_ | sort > {out}\nexit 3\n")
    script.chmod(0o755)
    daemon = start(
        on_infected=["move", "hook"], hook=[str(script), "an argument"], name="public uploads"
    )
    bad = watched / "bad file; rm -rf /"
    bad.write_bytes(eicar)
    failed = wait_action(daemon, bad, "hook", kind="action-failed")
    assert "exited with status 3" in failed["error"]
    # the watch's name: parsed, and carried nowhere before
    assert failed["watch_name"] == "public uploads"
    (detection,) = [e for e in daemon.events if e["event"] == "detection"]
    assert (detection["watch"], detection["watch_name"]) == (str(watched), "public uploads")
    env = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert env["CLAMWATCH_PATH"] == str(bad)
    assert env["CLAMWATCH_VERDICT"] == "infected"
    assert env["CLAMWATCH_SIGNATURE"] == EICAR_SIGNATURE
    assert env["CLAMWATCH_ACTION"] == "move hook"
    assert env["CLAMWATCH_QUARANTINE_ID"]
    assert env["CLAMWATCH_WATCH"] == str(watched)
    assert env["CLAMWATCH_WATCH_NAME"] == "public uploads"
    assert env["CLAMWATCH_CLAMD_VERSION"].startswith("ClamAV ")
    # what the shipped configuration and README say a hook gets
    for documented in _documented_hook_variables():
        assert documented == set(env) - {"CLAMWATCH_FAIL_ON_SKIP"}


def _documented_hook_variables() -> list[set[str]]:
    """The CLAMWATCH_* variables named where the shipped clamwatch.toml and README
    describe the hook."""
    repo = Path(__file__).resolve().parent.parent
    toml = (repo / "etc/clamwatch/clamwatch.toml").read_text(encoding="utf-8")
    readme = (repo / "README.md").read_text(encoding="utf-8")
    toml_part = toml[toml.index("# The hook:") : toml.index("#hook = []")]
    readme_part = readme[readme.index("- `hook` (an argv") : readme.index("`hook_timeout`")]
    return [set(re.findall(r"CLAMWATCH_[A-Z_]+", part)) for part in (toml_part, readme_part)]


def test_not_scanned_is_tagged_and_left(start: Start, watched: Path) -> None:
    daemon = start(max_size="1K")
    big = watched / "big"
    big.write_bytes(b"x" * 4096)
    wait_action(daemon, big, "tag")
    assert os.getxattr(big, "user.clamwatch.verdict") == b"not-scanned"
    assert big.exists()
