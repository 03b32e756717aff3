"""A file list (`clamwatch scan -f`) read on a thread of its own.

A list fed through a pipe (``inotifywait -m ... | clamwatch scan -f
/dev/stdin``) can stall for hours between two paths. Read on the scan's
own thread, each such wait would also hold back the replies to the files
already sent, and their lines: clamdscan, which scans one file at a time,
prints a file's line before it waits for the next path. Here the wait is
the engine's (Engine.wake ends it), so replies and keepalives go on.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
from collections.abc import Callable

from clamwatch.threadnames import name_this_thread

# One read's lines are one item: a list at full speed (find's output) costs a
# lock per 64 KiB, not per path. 64 of them in the queue keep the scan fed
# and bound the memory a list read faster than it is scanned takes (4 MiB).
_READ_SIZE = 64 * 1024
_BACKLOG = 64
_PUT_RETRY = 0.5  # seconds between two looks at close() while the queue is full


class Waiting:
    """No line yet: wait (see ListReader.take)."""

    __slots__ = ()


WAITING = Waiting()


class ListReader:
    """The lines of the list open as ``fd``, without their newlines, from a thread.

    ``wake`` is called, from the reading thread, when a line or the end comes
    while the consumer waits (take() said WAITING). The descriptor is
    duplicated: the caller may close its own at any time.
    """

    def __init__(self, fd: int, wake: Callable[[], None]) -> None:
        self._fd = os.dup(fd)
        self._stop_r, self._stop_w = os.pipe()
        self._wake = wake
        # lines of one read; an OSError the read raised; None: the end
        self._items: queue.Queue[list[bytes] | OSError | None] = queue.Queue(_BACKLOG)
        self._lines: list[bytes] = []  # the item being taken, reversed
        self._waiting = False
        self._ended = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clamwatch-list", daemon=True)
        self._thread.start()

    def take(self) -> bytes | OSError | Waiting | None:
        """The next line; the OSError reading it raised; None at the end of the
        list; WAITING when none has come yet: wait, and ask again after a
        wake() (or whenever: a wake may come for a line already taken)."""
        if self._lines:
            return self._lines.pop()
        if self._ended:
            return None
        try:
            item = self._items.get_nowait()
        except queue.Empty:
            # the flag before the second look: a line put between the two is
            # found by it, and one put after it wakes (the reader sees the flag)
            self._waiting = True
            try:
                item = self._items.get_nowait()
            except queue.Empty:
                return WAITING
            self._waiting = False
        if item is None or isinstance(item, OSError):
            self._ended = True
            return item
        item.reverse()
        self._lines = item
        return self._lines.pop()

    def close(self) -> None:
        """Stop reading (the thread ends at once, even in a read that waits)."""
        if self._closed.is_set():
            return
        self._closed.set()
        os.write(self._stop_w, b"\0")
        self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _run(self) -> None:
        name_this_thread()
        try:
            self._read()
        finally:
            os.close(self._fd)

    def _read(self) -> None:
        partial: list[bytes] = []  # the start of a line longer than one read
        poller = select.poll()  # not select(): descriptors above 1023
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            try:
                if any(fd == self._stop_r for fd, _ in poller.poll()):
                    return
                chunk = os.read(self._fd, _READ_SIZE)
            except OSError as exc:
                self._put(exc)
                return
            if not chunk:
                last = b"".join(partial)
                if last:
                    self._put([last.rstrip(b"\r")])
                self._put(None)
                return
            lines = chunk.split(b"\n")
            if len(lines) == 1:
                partial.append(chunk)
                continue
            if partial:
                partial.append(lines[0])
                lines[0] = b"".join(partial)
            rest = lines.pop()  # after the last newline
            partial = [rest] if rest else []
            # a list written on Windows: clamdscan drops a line's trailing CRs too
            if not self._put([line.rstrip(b"\r") for line in lines]):
                return

    def _put(self, item: list[bytes] | OSError | None) -> bool:
        """Queue ``item`` (waiting while the queue is full); False once closed."""
        while not self._closed.is_set():
            with contextlib.suppress(queue.Full):
                self._items.put(item, timeout=_PUT_RETRY)
                if self._waiting:
                    self._waiting = False
                    self._wake()
                return True
        return False
