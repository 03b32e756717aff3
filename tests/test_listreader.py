"""The file list's reader: lines as the list had them, a wake when one comes, a
clean stop even in a read that waits."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from clamwatch.listreader import WAITING, ListReader, Waiting
from helpers import wait_for


def taken(reader: ListReader, woken: threading.Event) -> list[bytes | OSError | None]:
    """Everything the reader gives until the end, waiting where it says so."""
    out: list[bytes | OSError | None] = []
    while True:
        item = reader.take()
        if isinstance(item, Waiting):
            assert woken.wait(10), "the reader did not wake the consumer"
            woken.clear()
            continue
        out.append(item)
        if item is None or isinstance(item, OSError):
            return out


def test_lines_come_as_the_list_has_them(tmp_path: Path) -> None:
    """Newlines dropped, and carriage returns before them (a list written on
    Windows: clamdscan drops them too), empty lines kept (the scan skips them),
    a line longer than a read whole, bytes that are not UTF-8 untouched, a
    last line without its newline, then the end; the caller's descriptor may
    be closed at once."""
    long = b"/" + b"x" * 200_000
    listing = tmp_path / "list"
    listing.write_bytes(b"/a\n\n" + long + b"\n/caf\xe9\r\n/c\rr\r\r\n/last\r")
    woken = threading.Event()
    with open(listing, "rb") as f:
        reader = ListReader(f.fileno(), woken.set)
    try:
        expected = [b"/a", b"", long, b"/caf\xe9", b"/c\rr", b"/last", None]
        assert taken(reader, woken) == expected
        assert reader.take() is None  # and stays ended
    finally:
        reader.close()


def test_a_line_that_comes_later_wakes_the_waiting_consumer() -> None:
    woken = threading.Event()
    r, w = os.pipe()
    reader = ListReader(r, woken.set)
    os.close(r)
    try:
        assert reader.take() is WAITING
        os.write(w, b"/first\n/sec")
        wait_for(woken.is_set, 10, "the reader to wake the consumer")
        assert reader.take() == b"/first"
        woken.clear()
        assert reader.take() is WAITING  # "/sec" has no newline yet
        os.write(w, b"ond\n")
        wait_for(woken.is_set, 10, "the reader to wake the consumer again")
        assert reader.take() == b"/second"
        woken.clear()
        assert reader.take() is WAITING
        os.close(w)
        wait_for(woken.is_set, 10, "the end of the list to wake the consumer")
        assert reader.take() is None
    finally:
        reader.close()


def test_a_read_error_ends_the_list_with_it(tmp_path: Path) -> None:
    woken = threading.Event()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        reader = ListReader(fd, woken.set)
    finally:
        os.close(fd)
    try:
        [error] = taken(reader, woken)
        assert isinstance(error, IsADirectoryError)
        assert reader.take() is None
    finally:
        reader.close()


def test_close_stops_a_reader_that_waits_for_the_list_or_for_room(tmp_path: Path) -> None:
    """A pipe whose writer never writes, and a list far larger than the
    reader's backlog that nobody takes from: close() ends both threads (the
    test fixture fails on a thread left running)."""
    r, w = os.pipe()
    try:
        stalled = ListReader(r, lambda: None)
        assert stalled.take() is WAITING
        stalled.close()
    finally:
        os.close(r)
        os.close(w)
    big = tmp_path / "big"
    big.write_bytes(b"/some/path/name\n" * 1_000_000)  # 16 MB: 250 reads
    with open(big, "rb") as f:
        full = ListReader(f.fileno(), lambda: None)
    wait_for(lambda: full.take() not in (WAITING, None), 10, "the first line")
    full.close()
