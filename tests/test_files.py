"""files: the lease probe that tells a walked file's writer is done; opens that keep atime."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from clamwatch.files import CheckedFile, OpenedFile, open_for_scan, open_unwritten
from helpers import age_access_time


def unwritten(path: str, st: os.stat_result) -> bool:
    """The probe's answer; the file it leaves open is closed again."""
    checked = open_unwritten(path, st)
    if checked is None:
        return False
    checked.close()
    return True


def test_a_file_open_for_writing_is_not_unwritten_until_its_writer_closes(tmp_path: Path) -> None:
    path = tmp_path / "upload.bin"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(writer, b"half of it")
        assert not unwritten(str(path), os.lstat(path))
    finally:
        os.close(writer)
    assert unwritten(str(path), os.lstat(path))


def test_the_probe_leaves_no_lease_behind_while_the_file_stays_open(tmp_path: Path) -> None:
    """A lease left on the file would make the next writer's open wait (45 s by default).

    The descriptor stays open for the scan, so the lease must be dropped
    without closing it. With O_NONBLOCK, an open that would have to break a
    lease fails with EWOULDBLOCK at once instead: this one must simply succeed.
    """
    path = tmp_path / "upload.bin"
    path.write_bytes(b"done")
    checked = open_unwritten(str(path), os.lstat(path))
    assert isinstance(checked, CheckedFile)
    # a lease holder gets SIGIO when a writer comes: as the daemon does, ignore it
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # BlockingIOError if a lease is left
    finally:
        signal.signal(signal.SIGIO, previous)
        checked.close()
    os.close(fd)


def test_the_file_found_finished_is_handed_over_open(tmp_path: Path) -> None:
    """The scan takes over the probe's descriptor: the same inode, its fstat with it."""
    path = tmp_path / "upload.bin"
    path.write_bytes(b"the content")
    before = os.lstat(path)
    checked = open_unwritten(str(path), before)
    assert checked is not None
    try:
        assert checked.path == str(path)
        assert (checked.st.st_ino, checked.st.st_size) == (before.st_ino, 11)
        assert (checked.identity.ino, checked.identity.size) == (before.st_ino, 11)
        assert os.read(checked.fd, 100) == b"the content"
        assert os.get_inheritable(checked.fd) is False
    finally:
        checked.close()
    assert checked.fd == -1


def test_a_directory_or_a_replaced_file_is_not_unwritten(tmp_path: Path) -> None:
    assert not unwritten(str(tmp_path), os.lstat(tmp_path))
    path = tmp_path / "upload.bin"
    path.write_bytes(b"first")
    old = os.lstat(path)
    os.link(path, tmp_path / "keep")  # the first inode lives on: its number is not reused
    os.unlink(path)
    path.write_bytes(b"second, another inode")
    assert not unwritten(str(path), old)
    assert unwritten(str(path), os.lstat(path))


def test_an_empty_file_is_not_taken_as_finished(tmp_path: Path) -> None:
    """open(O_CREAT) makes the name before its descriptor holds write access: no lease then."""
    path = tmp_path / "upload.bin"
    path.write_bytes(b"")
    assert not unwritten(str(path), os.lstat(path))
    path.write_bytes(b"now it has content")
    assert unwritten(str(path), os.lstat(path))


def _by_path(path: Path) -> OpenedFile:
    opened = open_for_scan(str(path))
    assert isinstance(opened, OpenedFile), opened
    return opened


def _within_listed_directory(path: Path) -> OpenedFile:
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        opened = open_for_scan(str(path), listed_regular=True, within=(dir_fd, path.name))
    finally:
        os.close(dir_fd)
    assert isinstance(opened, OpenedFile), opened
    return opened


def _by_the_lease_probe(path: Path) -> OpenedFile:
    opened = open_unwritten(str(path), os.lstat(path))
    assert opened is not None
    return opened


@pytest.mark.parametrize(
    "opener", [_by_path, _within_listed_directory, _by_the_lease_probe], ids=lambda f: f.__name__
)
def test_reading_what_is_opened_for_the_scan_leaves_the_access_time_alone(
    tmp_path: Path, opener: Callable[[Path], OpenedFile]
) -> None:
    """clamd reads through the same descriptor: its reads must not touch atime either."""
    path = tmp_path / "upload.bin"
    path.write_bytes(b"x" * 10_000)
    # what an ordinary read does here, so that the test can fail at all
    atime = age_access_time(path)
    path.read_bytes()
    assert os.stat(path).st_atime_ns != atime, "this file system does not update access times"

    atime = age_access_time(path)
    opened = opener(path)
    try:
        assert os.pread(opened.fd, 20_000, 0) == b"x" * 10_000
        assert os.read(opened.fd, 20_000) == b"x" * 10_000
    finally:
        opened.close()
    assert os.stat(path).st_atime_ns == atime


@pytest.mark.skipif(os.geteuid() != 0, reason="changing to another user needs root")
def test_a_file_of_another_user_is_opened_without_noatime(tmp_path: Path) -> None:
    """O_NOATIME is refused (EPERM) to anyone but the owner or CAP_FOWNER: read it anyway.

    A forked child takes another uid (and with it loses every capability)
    and opens, from within the file's folder (tmp_path is root's alone), a
    file it may read but does not own.
    """
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)  # whatever the umask; tmp_path itself is 0700
    path = shared / "theirs.txt"
    path.write_bytes(b"readable by all")
    path.chmod(0o644)
    os.chown(path, 4242, 4242)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        status = 1
        try:
            os.chdir(shared)
            os.setgroups([])
            os.setresgid(4243, 4243, 4243)
            os.setresuid(4243, 4243, 4243)
            try:
                os.close(os.open(path.name, os.O_RDONLY | os.O_NOATIME))
                refused = "allowed"
            except OSError as exc:
                refused = errno.errorcode.get(exc.errno or 0, str(exc))
            opened = open_for_scan(path.name)
            if isinstance(opened, OpenedFile):
                content = os.read(opened.fd, 100).decode()
                opened.close()
            else:
                content = f"not opened: {opened}"
            os.write(write_end, f"{refused}\n{content}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    assert report == "EPERM\nreadable by all"
