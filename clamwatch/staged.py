"""Names clamwatch itself gives a file for an instant, which the watch must not scan.

A removal, and the end of a move to another file system, first renames the
file to ``.clamwatch-HEX-NAME`` beside it (safefs.remove_if_same), so that
what is unlinked is the inode that was scanned. In a watched folder that
rename is an event like an upload's: the daemon scanned the name while it
lasted and reported it (a second FOUND and quarantine for one file, or
"replaced before it could be released"). Each such name is kept here for a
while after it is gone, for the watch to leave out.

By the name given, not by its pattern: an upload named like one must still
be scanned. The random part (48 bits) is what an uploader cannot guess.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

_KEPT_FOR = 60.0  # seconds: the events of a rename reach the watch well within that
_MOST = 4096  # names kept at once; the oldest go first

_lock = threading.Lock()
_names: dict[str, float] = {}  # name -> when it was given (time.monotonic)


def new_name(path: str) -> str:
    """A new name beside ``path``, at most NAME_MAX (255) bytes (a name of 255
    bytes in a multibyte script is far fewer characters), kept as ours."""
    directory, name = os.path.split(path)
    staging = os.fsencode(f".clamwatch-{secrets.token_hex(6)}-{name}")[:255]
    given = os.path.join(directory, os.fsdecode(staging))
    now = time.monotonic()
    with _lock:
        if len(_names) >= _MOST:
            for old in list(_names)[: len(_names) // 2]:  # dicts keep their order
                del _names[old]
        _names[given] = now
    return given


def is_staged(path: str) -> bool:
    """``path`` is a name :func:`new_name` gave in the last minute."""
    given = _names.get(path)
    return given is not None and time.monotonic() - given < _KEPT_FOR
