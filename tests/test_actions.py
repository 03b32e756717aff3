"""Actions touch exactly the file that was scanned: real files, no clamd needed."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clamwatch.actions import ActionRequest, ActionRunner
from clamwatch.config import WatchConfig
from clamwatch.files import OpenedFile, open_for_scan
from clamwatch.policy import Policy, Rule, decide, parse_rule
from clamwatch.quarantine import QuarantineStore
from clamwatch.verdict import Clean, Infected, NotScanned, NotScannedReason, ScanError, Verdict
from helpers import EventRecorder, recording_events


@pytest.fixture
def events() -> Iterator[EventRecorder]:
    with recording_events() as recorder:
        yield recorder


@pytest.fixture
def store(tmp_path: Path) -> QuarantineStore:
    return QuarantineStore(tmp_path / "quarantine")


def run(
    store: QuarantineStore | None,
    path: Path,
    opened: OpenedFile,
    words: list[str],
    watch: WatchConfig,
) -> None:
    runner = ActionRunner(store, lambda *args: None)
    rule = parse_rule(words, for_clean=False)
    runner.submit(
        ActionRequest(str(path), watch, Infected("Test.Sig"), rule, "ClamAV 1.4.6", opened)
    )
    runner.close()


def scanned(path: Path) -> OpenedFile:
    opened = open_for_scan(str(path))
    assert isinstance(opened, OpenedFile)
    return opened


def test_policy_defaults_are_cautious() -> None:
    policy = Policy()
    assert decide(Infected("x"), policy).words == ["move"]
    assert decide(Clean(), policy).words == ["none"]
    assert decide(NotScanned(NotScannedReason.TOO_LARGE, "big"), policy).words == ["tag"]
    assert decide(ScanError("boom"), policy).words == ["tag"]
    assert parse_rule(["copy", "tag", "hook"], for_clean=False) == Rule(
        parse_rule(["copy"], for_clean=False).file_action, tag=True, hook=True
    )


@pytest.mark.parametrize("words", [["move"], ["remove"], ["copy"]])
def test_a_file_replaced_after_the_scan_is_not_touched(
    tmp_path: Path, store: QuarantineStore, events: EventRecorder, words: list[str]
) -> None:
    path = tmp_path / "upload"
    path.write_bytes(b"scanned content")
    opened = scanned(path)
    # replaced between the scan and the action: a new inode under the same name
    path.unlink()
    path.write_bytes(b"new content, not scanned yet")
    run(store, path, opened, words, WatchConfig(tmp_path, "t"))
    assert path.read_bytes() == b"new content, not scanned yet"
    if words != ["copy"]:
        assert store.list() == []
        assert not events.of("action-done")
    else:
        # a copy comes from the scanned descriptor: the scanned content, nothing else
        (record,) = store.list()
        assert (store.directory / record.id).read_bytes() == b"scanned content"


def test_a_symlink_swapped_in_leaves_its_target_alone(
    tmp_path: Path, store: QuarantineStore, events: EventRecorder
) -> None:
    path = tmp_path / "upload"
    path.write_bytes(b"scanned")
    target = tmp_path / "precious"
    target.write_bytes(b"do not touch")
    opened = scanned(path)
    path.unlink()
    path.symlink_to(target)
    for words in (["move"], ["remove"]):
        run(store, path, scanned_copy(opened), words, WatchConfig(tmp_path, "t"))
    assert target.read_bytes() == b"do not touch"
    assert path.is_symlink()
    assert store.list() == []
    opened.close()


def scanned_copy(opened: OpenedFile) -> OpenedFile:
    """The same scanned inode under a second descriptor (each run closes its own)."""
    return OpenedFile(opened.path, os.dup(opened.fd), opened.identity)


def test_remove_and_move_the_scanned_file(
    tmp_path: Path, store: QuarantineStore, events: EventRecorder
) -> None:
    doomed, moved = tmp_path / "doomed", tmp_path / "moved"
    doomed.write_bytes(b"a")
    moved.write_bytes(b"b")
    run(store, doomed, scanned(doomed), ["remove"], WatchConfig(tmp_path, "t"))
    run(store, moved, scanned(moved), ["move"], WatchConfig(tmp_path, "t"))
    assert not doomed.exists() and not moved.exists()
    (record,) = store.list()
    assert record.original_path == str(moved)
    assert [e["action"] for e in events.of("action-done")] == ["remove", "move"]


@pytest.mark.parametrize("elsewhere", [False, True], ids=["same-fs", "another-fs"])
def test_release_never_overwrites(
    tmp_path: Path, events: EventRecorder, tmpfs: Callable[..., None], elsewhere: bool
) -> None:
    """The name taken in release_to: the next free one, the mode kept; on another
    file system the file is copied, then removed."""
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    if elsewhere:
        tmpfs(out, "1M")
    else:
        out.mkdir()
    (out / "report.pdf").write_bytes(b"already there")
    path = root / "report.pdf"
    path.write_bytes(b"new")
    path.chmod(0o640)
    watch = WatchConfig(root, "t", release_to=out)
    runner = ActionRunner(None, lambda *a: None)
    rule = parse_rule(["release"], for_clean=True)
    runner.submit(ActionRequest(str(path), watch, Clean(), rule, None, scanned(path)))
    runner.close()
    assert (out / "report.pdf").read_bytes() == b"already there"
    assert (out / "report.pdf.1").read_bytes() == b"new"
    assert (out / "report.pdf.1").stat().st_mode & 0o777 == 0o640
    assert not path.exists()
    assert [e["action"] for e in events.of("action-done")] == ["release"]


def test_tag_on_a_file_system_without_user_xattrs_is_reported_once(
    tmp_path: Path, events: EventRecorder
) -> None:
    # procfs has no user extended attributes
    watch = WatchConfig(tmp_path, "t")
    runner = ActionRunner(None, lambda *a: None)
    rule = parse_rule(["tag"], for_clean=False)
    for _ in range(3):
        opened = open_for_scan("/proc/self/status")
        assert isinstance(opened, OpenedFile)
        runner.submit(ActionRequest("/proc/self/status", watch, Infected("x"), rule, None, opened))
    runner.close()
    failures = events.of("action-failed")
    assert len(failures) == 1
    assert "does not support user extended attributes" in str(failures[0]["error"])


def tag(path: Path, verdict: Verdict, opened: OpenedFile | None = None) -> None:
    runner = ActionRunner(None, lambda *a: None)
    rule = parse_rule(["tag"], for_clean=isinstance(verdict, Clean))
    watch = WatchConfig(path.parent, "t")
    runner.submit(ActionRequest(str(path), watch, verdict, rule, None, opened or scanned(path)))
    runner.close()


def test_a_clean_verdict_takes_away_the_signature_of_an_earlier_one(
    tmp_path: Path, events: EventRecorder
) -> None:
    path = tmp_path / "upload"
    path.write_bytes(b"infected, say")
    tag(path, Infected("Test.Sig"))
    assert os.getxattr(path, "user.clamwatch.signature") == b"Test.Sig"
    with path.open("r+b") as rewrite:  # the same inode, new content
        rewrite.write(b"clean now")
        rewrite.truncate()
    tag(path, Clean())
    assert os.getxattr(path, "user.clamwatch.verdict") == b"clean"
    assert "user.clamwatch.signature" not in os.listxattr(path)


def test_a_file_written_to_after_its_scan_is_not_tagged_with_that_verdict(
    tmp_path: Path, events: EventRecorder
) -> None:
    """The new content has its own scan coming: 'clean' must not be put on it now."""
    path = tmp_path / "upload"
    path.write_bytes(b"clean")
    opened = scanned(path)
    with path.open("ab") as writer:
        writer.write(b" and then something else, not scanned")
    tag(path, Clean(), opened)
    assert [a for a in os.listxattr(path) if a.startswith("user.clamwatch.")] == []
    assert not events.of("action-done")


def release_to_another_file_system(
    tmp_path: Path, tmpfs: Callable[..., None], size: str = "1M"
) -> tuple[Path, Path, WatchConfig]:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    tmpfs(out, size)
    return root, out, WatchConfig(root, "t", release_to=out)


def release(path: Path, watch: WatchConfig) -> None:
    runner = ActionRunner(None, lambda *a: None)
    rule = parse_rule(["release"], for_clean=True)
    runner.submit(ActionRequest(str(path), watch, Clean(), rule, None, scanned(path)))
    runner.close()


def test_a_release_to_another_file_system_keeps_mode_owner_and_mtime(
    tmp_path: Path, events: EventRecorder, tmpfs: Callable[..., None]
) -> None:
    """As a rename on the same file system does (and mv across them): the copy
    was the daemon's, with its umask (the unit's UMask=0077 made 0640 0600)."""
    root, out, watch = release_to_another_file_system(tmp_path, tmpfs)
    path = root / "report.pdf"
    path.write_bytes(b"clean")
    os.chown(path, 1234, 5678)
    path.chmod(0o640)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    old_umask = os.umask(0o077)
    try:
        release(path, watch)
    finally:
        os.umask(old_umask)
    st = (out / "report.pdf").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert not path.exists()
    assert [e["action"] for e in events.of("action-done")] == ["release"]


def copying(out: Path) -> bool:
    """A copy into ``out`` has begun: this process holds the file it fills.

    Unnamed (O_TMPFILE) until it is whole, the kernel names it ``out/#INODE
    (deleted)``; on a file system with no unnamed files it is there by its name.
    """
    if (out / "big").exists():
        return True
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            if os.readlink(f"/proc/self/fd/{fd}").startswith(f"{out}/#"):
                return True
    return False


@pytest.mark.parametrize("change", ["grown", "cut"])
def test_a_file_changed_during_a_release_copy_is_not_released(
    tmp_path: Path, events: EventRecorder, tmpfs: Callable[..., None], change: str
) -> None:
    """The copy read to the end of whatever was there by then: bytes written after
    the scan, or a file cut short, went out as clean; the original was then
    not removed (it had changed) and the copy stayed."""
    root, out, watch = release_to_another_file_system(tmp_path, tmpfs, "300M")
    path = root / "big"
    block = os.urandom(1 << 20)
    with path.open("wb") as file:
        for _ in range(128):  # long enough to copy for the writer to come in time
            file.write(block)
    came: list[bool] = []

    def writer() -> None:
        deadline = time.monotonic() + 30
        while not copying(out) and time.monotonic() < deadline:
            pass
        try:
            with path.open("r+b") as file:
                if change == "grown":
                    file.seek(0, os.SEEK_END)
                    file.write(b"UNSCANNED")
                else:
                    file.truncate(1 << 20)
        except FileNotFoundError:
            came.append(False)  # too late: the copy was done and the original gone
            return
        came.append(True)

    thread = threading.Thread(target=writer)
    thread.start()
    release(path, watch)
    thread.join()
    assert came == [True], "the copy ended before the writer came"
    assert list(out.iterdir()) == []
    assert path.exists()
    assert not events.of("action-done")
