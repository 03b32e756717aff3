"""Walking the trees named on the command line, without following links."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from clamwatch.files import os_error_verdict
from clamwatch.verdict import Verdict

# A path to open, a listed file (its DirEntry), or a path with why it is skipped.
WalkItem = str | os.DirEntry[str] | tuple[str, Verdict]


def walk(paths: Iterable[str]) -> Iterator[WalkItem]:
    """Every file below ``paths``: a path to open, or a path with the reason it is skipped.

    A file found in a directory comes as its DirEntry, whose
    ``is_file(follow_symlinks=False)`` tells from the listing (no stat)
    whether it is a regular file. Each directory's files come in name order,
    then its subdirectories; symbolic links, fifos and devices are yielded
    like files, so that the opener reports them as not scanned instead of
    their silently vanishing from the count.
    """
    for top in paths:
        try:
            is_dir = os.path.isdir(top) and not os.path.islink(top)
        except OSError as exc:  # pragma: no cover - isdir swallows most errors
            yield top, os_error_verdict(exc, "stat")
            continue
        if not is_dir:
            yield top
            continue
        stack = [top]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    listed = sorted(entries, key=lambda e: e.name)
            except OSError as exc:
                yield directory, os_error_verdict(exc, "reading the directory")
                continue
            subdirs: list[str] = []
            for entry in listed:
                try:
                    descend = entry.is_dir(follow_symlinks=False)
                except OSError:
                    descend = False
                if descend:
                    subdirs.append(entry.path)
                else:
                    yield entry
            stack.extend(reversed(subdirs))
