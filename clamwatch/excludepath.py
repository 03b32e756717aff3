"""clamd.conf's ExcludePath, as clamdscan applies it to the trees it walks itself.

clamdscan ``--fdpass`` and ``--stream`` walk the trees on the client and skip,
silently, every file whose real path matches an ExcludePath of the
clamd.conf it reads (clamdscan/proto.c, ``chkpath``); `clamwatch scan` is a
drop-in for it, so it skips the same files, and prunes a directory that
matches. The patterns are POSIX extended regular expressions, searched
anywhere in the path; one that ends with "/" is matched against the path
with a "/" appended, so that ``^/proc/`` names the directory /proc itself
(common/misc.c, ``match_regex``).
"""

from __future__ import annotations

import os
import re

# POSIX bracket classes, which Python's re does not know (it would read
# "[[:digit:]]" as a set of the characters "[:digt" and a "]")
_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z",
    "xdigit": "0-9A-Fa-f",
}
_CLASS = re.compile(r"\[:(" + "|".join(_CLASSES) + r"):\]")
# What Python's re reads otherwise than glibc's regcomp(REG_EXTENDED): "\d"
# is a digit to Python and a "d" to glibc, "(?" opens an extension Python
# knows and POSIX refuses. Such a pattern could leave out files clamd would
# scan, so it is ignored (and its files scanned). "\w \W \s \S \b \B" are
# GNU extensions glibc reads as Python does; an escaped non-letter is itself
# in both.
_DIFFERENT = re.compile(r"\\(?![wWsSbB])[A-Za-z0-9]|\(\?")


class ExcludePaths:
    """The ExcludePath patterns of one clamd.conf, compiled; and directories to leave out."""

    __slots__ = ("_patterns", "_directories", "_inodes", "problems")

    def __init__(self, patterns: tuple[str, ...] = (), source: str = "") -> None:
        # (what to say of it, the expression, whether it ends with "/")
        self._patterns: list[tuple[str, re.Pattern[str], bool]] = []
        self._directories: list[tuple[str, str]] = []  # (real path + "/", what to say)
        self._inodes: dict[tuple[int, int], str] = {}  # theirs: (st_dev, st_ino) -> what to say
        # patterns Python cannot take: ignored, so their files are scanned
        # (clamd, too, excludes nothing by a pattern it cannot compile)
        self.problems: list[str] = []
        for pattern in patterns:
            if different := _DIFFERENT.search(pattern.replace("\\\\", "")):
                self.problems.append(
                    f"ExcludePath {pattern} in {source}: {different.group()} means one"
                    " thing to clamd (POSIX) and another to clamwatch (Python): ignored,"
                    " what it names is scanned"
                )
                continue
            try:
                compiled = re.compile(_CLASS.sub(lambda m: _CLASSES[m.group(1)], pattern))
            except re.error as exc:
                self.problems.append(
                    f"ExcludePath {pattern} in {source} is not a regular expression"
                    f" clamwatch can use ({exc}): ignored, what it names is scanned"
                )
                continue
            described = f"ExcludePath {pattern} in {source}"
            self._patterns.append((described, compiled, pattern.endswith("/")))

    def add_directory(self, real_path: str, why: str) -> None:
        """Leave out the directory ``real_path`` (absolute, no links) and all below it,
        where a walk meets it: a path named inside it is walked all the same.

        Under another path too (a bind mount of it, or of a folder above it):
        a walk also asks :meth:`match_directory` of each directory it enters.
        """
        self._directories.append((real_path.rstrip("/") + "/", why))
        try:
            st = os.stat(real_path)
        except OSError:
            return  # not there: nothing to meet under another name either
        self._inodes[(st.st_dev, st.st_ino)] = why

    def match_directory(self, st: os.stat_result) -> str | None:
        """What leaves out the directory whose stat result is ``st``, by its
        identity, whatever path reached it; or None."""
        return self._inodes.get((st.st_dev, st.st_ino)) if self._inodes else None

    def __bool__(self) -> bool:
        return bool(self._patterns or self._directories)

    def match(self, real_path: str, named: str = "") -> str | None:
        """What excludes ``real_path`` (absolute, no links), found below the named path
        whose real path is ``named``, said for -v; or None.

        A path with a newline in it is never left out by a pattern: Python's "$"
        matches before a last newline, POSIX's only at the end (so "\\.iso$"
        would leave out "x.iso\\n", which clamd scans).
        """
        if "\n" not in real_path:
            for described, compiled, slash in self._patterns:
                if compiled.search(real_path + "/" if slash else real_path):
                    return described
        for directory, why in self._directories:
            if (real_path + "/").startswith(directory) and not (named + "/").startswith(directory):
                return why
        return None
