"""Which files of a watch are scanned: exclusions, sizes, owners, our own files."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

from clamwatch import staged
from clamwatch.config import WatchConfig


@dataclass(frozen=True, slots=True)
class WatchFilter:
    """The rules of one watch. ``own`` are clamwatch's own folders (state, quarantine)."""

    watch: WatchConfig
    own: tuple[str, ...] = ()
    # own, and each as the watch names it (_as_in_watch): asked for every
    # event and every file walked, so strings, not stat calls
    _own_names: frozenset[str] = field(init=False, repr=False, compare=False)
    _own_below: tuple[str, ...] = field(init=False, repr=False, compare=False)  # "name/"

    def __post_init__(self) -> None:
        names = {*self.own, *_as_in_watch(self.root, self.own)}
        object.__setattr__(self, "_own_names", frozenset(names))
        object.__setattr__(self, "_own_below", tuple(sorted(n.rstrip("/") + "/" for n in names)))

    @property
    def root(self) -> str:
        return str(self.watch.path)

    def excluded(self, path: str) -> bool:
        """Excluded by name: a glob, a regular expression, one of our own folders,
        or a name clamwatch gave a file it is removing (staged.py).

        A glob without a slash matches the file name (``*.part``); one with a
        slash matches the path below the watch root (``cache/*``). Regular
        expressions are searched in the whole path.
        """
        if self.own_folder(path) or staged.is_staged(path):
            return True
        if not self.watch.exclude and not self.watch.exclude_regex:
            return False
        name = os.path.basename(path)
        prefix = self.root.rstrip("/") + "/"
        # no os.path.relpath: it normalises and costs more than the rest together
        relative = (
            path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, self.root)
        )
        for pattern in self.watch.exclude:
            if fnmatch.fnmatchcase(relative if "/" in pattern else name, pattern):
                return True
        return any(regex.search(path) for regex in self.watch.exclude_regex)

    def own_folder(self, path: str) -> bool:
        """``path`` is one of clamwatch's own folders or below one."""
        return path in self._own_names or path.startswith(self._own_below)

    def skipped_by_stat(self, st: os.stat_result) -> str | None:
        """Why a file is skipped silently (owner or minimum size), or None."""
        if st.st_uid in self.watch.skip_uids:
            return f"owned by uid {st.st_uid}, listed in skip_uids"
        if st.st_size < self.watch.min_size:
            return f"{st.st_size} bytes, under min_size ({self.watch.min_size})"
        return None

    def too_large(self, size: int) -> bool:
        return self.watch.max_size is not None and size > self.watch.max_size


def _as_in_watch(root: str, folders: tuple[str, ...]) -> list[str]:
    """Each of ``folders`` that lies in the watch, by the path the watch's events carry.

    Events and walks name files by the watch's path as configured. A folder
    configured through another path to the same place (a symbolic link on
    either path, "..") would not match by name: both are resolved, and a
    folder inside the watch is named again from the watch's root. A folder
    that does not exist yet resolves as far as its parents do.
    """
    real_root = os.path.realpath(root)
    inside = real_root.rstrip("/") + "/"
    named = []
    for folder in folders:
        real = os.path.realpath(folder)
        if real == real_root:
            named.append(root)
        elif real.startswith(inside):
            named.append(root.rstrip("/") + "/" + real[len(inside) :])
    return named
