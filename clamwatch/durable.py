"""Writing files so that a crash or power cut leaves the old version or the new, never half.

The daemon's state file and the quarantine's records are written this way:
the text goes to a temporary file beside the target, which is fsynced and
then renamed over the target; the folder is fsynced last, so that the rename
itself survives a power cut (fsync(2), NOTES).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_file(path: Path, text: str, *, prefix: str, suffix: str = "") -> None:
    """Make ``path`` hold ``text`` (UTF-8), atomically and durably.

    The temporary file is named ``prefix`` + random + ``suffix`` in the same
    folder; a failure removes it and leaves ``path`` as it was.
    """
    directory = path.parent
    fd, temporary = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)  # one write, not json.dump's many pieces
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the first failure is the one to report
            os.unlink(temporary)
        raise
    fsync_directory(directory)


def fsync_directory(directory: Path | str) -> None:
    """Make the names created or removed in ``directory`` durable (fsync(2) NOTES)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
