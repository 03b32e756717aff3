"""files.open_unwritten: the write-lease probe that tells a walked file's writer is done."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from clamwatch.files import CheckedFile, open_unwritten


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
