"""`clamwatch scan -`: standard input, copied to an unnamed temporary file first.

A pipe can be read only once, and the engine must be able to send a file
again on a new session when clamd's connection is lost. So the bytes go to
an unnamed file in the temporary folder ($TMPDIR, else /tmp; O_TMPFILE, so
nothing is left behind whatever happens), and that file is scanned, by
descriptor or streamed, like any other. Its lines say "stdin", as
clamdscan's do.
"""

from __future__ import annotations

import os
import select
import tempfile

from clamwatch.files import FileIdentity, OpenedFile, describe_os_error
from clamwatch.verdict import ScanError, Verdict

_CHUNK = 1 << 20


def copy_stdin(name: str, source: int = 0) -> OpenedFile | Verdict:
    """Standard input (``source``) read to its end, as an open file called ``name``.

    Any failure, reading or writing, is a ScanError naming it: what was
    read in part is never scanned as if it were the whole.
    """
    try:
        with tempfile.TemporaryFile() as holder:
            fd = os.dup(holder.fileno())  # outlives the holder: no name, no clean-up
    except OSError as exc:
        return ScanError(
            f"cannot make a temporary file for standard input: {describe_os_error(exc)}"
        )
    try:
        error = _copy(source, fd)
        if error is None:
            return OpenedFile(name, fd, FileIdentity(os.fstat(fd)))
    except OSError as exc:  # fstat
        error = ScanError(f"the temporary copy of standard input failed: {describe_os_error(exc)}")
    os.close(fd)
    return error


def _copy(source: int, target: int) -> ScanError | None:
    while True:
        try:
            chunk = _read(source)
        except OSError as exc:
            return ScanError(f"reading standard input failed: {describe_os_error(exc)}")
        if not chunk:
            return None
        view = memoryview(chunk)
        while view:
            try:
                written = os.write(target, view)
            except OSError as exc:
                where = tempfile.gettempdir()
                return ScanError(
                    f"copying standard input to {where} failed: {describe_os_error(exc)}"
                )
            view = view[written:]


def _read(source: int) -> bytes:
    while True:
        try:
            return os.read(source, _CHUNK)
        except BlockingIOError:  # a nonblocking descriptor handed down to us
            select.select([source], [], [])
