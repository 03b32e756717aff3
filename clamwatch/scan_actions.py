"""clamdscan's --move, --copy and --remove for `clamwatch scan`: on the scanned inode only.

As clamdscan does them (common/actions.c): an infected file is moved or
copied into a directory under its own name, or ``NAME.001`` to ``NAME.999``
when that is taken (nothing there is ever replaced), or removed; a line
``PATH: moved to 'TARGET'`` (``copied to``, ``Removed.``) follows its FOUND
line. Unlike clamdscan, the file acted on is the one scanned: the path must
still name the scanned inode, unchanged (:mod:`clamwatch.safefs`), or
nothing is done; a copy, and a move across file systems, is made from the
scanned descriptor, and across file systems the original is removed only
once the copy is on disk. A link named on the command line, which the scan
follows, is not acted on: the file it leads to is. Names in the lines are
escaped as the paths before them are (names.py).
"""

from __future__ import annotations

import os

from clamwatch.files import OpenedFile, describe_os_error
from clamwatch.names import display_path
from clamwatch.safefs import copy_to_free_name, move_to_free_name, remove_if_same

_NUMBERED = "{}.{:03}"  # NAME.001 to NAME.999, as clamdscan numbers them


class ActionError(Exception):
    """The action cannot be set up (its directory is missing, or not one)."""


class ScanAction:
    """What to do with each infected file: "move" or "copy" into ``directory``, or "remove"."""

    __slots__ = ("kind", "directory")

    def __init__(self, kind: str, directory: str | None = None) -> None:
        self.kind = kind
        self.directory = directory
        if directory is not None and not os.path.isdir(directory):
            problem = "not a directory" if os.path.exists(directory) else "no such directory"
            raise ActionError(f"cannot {kind} infected files to {directory}: {problem}")

    def apply(self, opened: OpenedFile, *, from_stdin: bool = False) -> tuple[str, bool]:
        """Act on the scanned file; the note to print after its line, and whether it was done."""
        if from_stdin and self.kind != "copy":
            return f"not {self._done}: standard input is not a file to {self.kind}", False
        path = _file_of(opened.path)
        try:
            if self.kind == "remove":
                if remove_if_same(path, opened.identity):
                    if path != opened.path:
                        return f"Removed '{display_path(path)}', the file the link leads to.", True
                    return "Removed.", True
                return f"not {self._done}: {_CHANGED}", False
            assert self.directory is not None
            target = self._place(path, opened)
        except OSError as exc:
            return f"not {self._done}: {describe_os_error(exc)}", False
        if target is None:
            return f"not {self._done}: {_CHANGED}", False
        return f"{self._done} to '{display_path(target)}'", True

    @property
    def _done(self) -> str:
        return {"move": "moved", "copy": "copied", "remove": "removed"}[self.kind]

    def _place(self, path: str, opened: OpenedFile) -> str | None:
        """Move or copy the file at ``path`` into the directory, under the first
        free name; None: changed."""
        assert self.directory is not None
        base = os.path.join(self.directory, os.path.basename(path.rstrip("/")))
        if self.kind == "move":
            # across file systems the copy goes if the original changed meanwhile
            return move_to_free_name(path, opened, base, _NUMBERED, 0o600, keep_copy=False)
        return copy_to_free_name(opened.fd, base, _NUMBERED, 0o600)


def _file_of(path: str) -> str:
    """Where to act: ``path``, or for a link the file it leads to.

    The scan follows a link named on the command line, as clamdscan does,
    so what was scanned is its target: acting on the link's own name found
    another inode and said the file had changed. safefs still acts only if
    the path names the scanned inode, unchanged.
    """
    return os.path.realpath(path) if os.path.islink(path) else path


_CHANGED = "it changed or was moved since it was scanned"
