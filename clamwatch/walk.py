"""Walking the trees named on the command line, without following links.

A symbolic link named on the command line is followed, as clamscan does by
default (``--follow-dir-symlinks=1``, ``--follow-file-symlinks=1``: "direct"
links only; clamdscan 1.4 prints such a link OK without scanning it): the
admin named it. Its files keep the name it was given by. No link found below
it is followed.

Each directory below a named one is opened relative to its parent's
descriptor, with O_NOFOLLOW (and O_NOATIME where the kernel allows it, so
that listing it leaves its access time alone), and its files are opened
relative to its own (:class:`ListedFile`). A directory swapped for a
symbolic link while the walk runs is therefore reported as a link, not
followed, and a directory renamed away meanwhile is still the one walked:
the walk never leaves the trees it was given, whatever happens to their
paths.

With clamd.conf's ExcludePath patterns (:mod:`clamwatch.excludepath`), a
file or directory whose real path matches one is left out, silently, as
clamdscan leaves it out; ``-v`` logs each. So is a directory on a procfs,
as clamd's own walk leaves /proc out (clamd/scanner.c, ``procdev``): its
files say they are empty, so clamd would scan nothing of them, and
processes come and go while it is read. Named on the command line, such a
directory or file is reported as not scanned.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Generator, Iterable, Iterator

from clamwatch import lazylog
from clamwatch.files import DIRECTORY_FLAGS, open_noatime, os_error_verdict
from clamwatch.verdict import NotScanned, NotScannedReason, Verdict

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from collections.abc import Callable

    from clamwatch.excludepath import ExcludePaths

log = lazylog.Logger(__name__)


class ListedFile:
    """A name listed in a directory the walk holds open as ``dir_fd``.

    ``dir_fd`` stays open until the caller asks for the next item after the
    directory's last: open the file then, as ``name`` relative to it.
    ``regular``: the listing (d_type) says a regular file, with no stat.
    Symbolic links, fifos and devices come too, so that the opener reports
    them as not scanned instead of their silently vanishing from the count.
    """

    __slots__ = ("path", "name", "dir_fd", "regular")

    def __init__(self, path: str, name: str, dir_fd: int, regular: bool) -> None:
        self.path = path
        self.name = name
        self.dir_fd = dir_fd
        self.regular = regular


# A path to open, a listed file, or a path with why it is skipped.
WalkItem = str | ListedFile | tuple[str, Verdict]


def walk(
    paths: Iterable[str], exclude: ExcludePaths | None = None
) -> Generator[WalkItem, None, None]:
    """Every file below ``paths``: a path to open, a listed file, or a path with why it is skipped.

    A named path that is neither a directory nor a link comes as it is; a
    named link as what it points to (see above). Each directory's files come
    in name order, then its subdirectories. Closing the iterator early
    closes every directory it holds open. What ``exclude`` matches is left
    out.
    """
    procfs = _procfs_devices()  # read once: walk() runs for each line of a file list
    for given in paths:
        top = _file_named_as_folder(given)
        skip = _excluder(top, exclude) if exclude else None
        if skip is not None and skip(top):
            continue
        try:
            st = os.lstat(top)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                # named, never seen: "vanished" would suggest a race
                yield top, _NAMED_MISSING[exc.errno]
                continue
            st = None  # the open says what is wrong, as for any file
        mode = st.st_mode if st is not None else 0
        if stat.S_ISLNK(mode):
            yield from _named_link(top, skip, procfs, exclude)
            continue
        if st is not None and st.st_dev in procfs:
            yield top, _ON_PROC
            continue
        if not stat.S_ISDIR(mode):
            yield top
            continue
        yield from _named_tree(top, top, skip, procfs, exclude)


def _file_named_as_folder(top: str) -> str:
    """``top`` without the slashes after a file's name ("notes.txt/").

    The kernel refuses such a path (ENOTDIR); clamdscan scans the file, and
    so does this drop-in for it. Any other path is left as it is.
    """
    bare = top.rstrip("/")
    if bare == top or not bare:
        return top
    try:
        os.lstat(top)
    except NotADirectoryError:
        return bare
    except OSError:
        pass
    return top


_NAMED_MISSING = {
    errno.ENOENT: NotScanned(NotScannedReason.VANISHED, "no such file or directory"),
    errno.ENOTDIR: NotScanned(
        NotScannedReason.VANISHED,
        "no such file or directory: a name on its path is a file, not a folder",
    ),
}

_ON_PROC = NotScanned(
    NotScannedReason.EXCLUDED,
    "on /proc, which clamd leaves out of its own scans: its files say they are empty,"
    " so clamd would scan nothing of them",
)


_procfs: frozenset[int] | None = None


def _procfs_devices() -> frozenset[int]:
    """The devices of every procfs mounted, from /proc/self/mountinfo (proc(5)).

    clamd looks at /proc alone; a container's own /proc, mounted elsewhere,
    is a file system of its own with a device of its own (Linux 5.8 on).
    Read once in a process.
    """
    global _procfs  # noqa: PLW0603 (the mounts, read once)
    if _procfs is None:
        _procfs = _read_procfs_devices()
    return _procfs


def _read_procfs_devices() -> frozenset[int]:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return frozenset()
    devices = set()
    for line in lines:
        fields, _, rest = line.partition(" - ")
        if rest.split(" ", 1)[0] == "proc":
            # a line not as proc(5) says is not ours to judge
            with contextlib.suppress(ValueError, IndexError):
                major, _, minor = fields.split(" ")[2].partition(":")
                devices.add(os.makedev(int(major), int(minor)))
    return frozenset(devices)


def _excluder(top: str, exclude: ExcludePaths) -> Callable[[str], bool]:
    """Whether ``exclude`` leaves out a path at or below ``top``, by its real path.

    No link below ``top`` is followed, so a path's real path is the real
    path of ``top`` (links in it and above resolved) and the rest as it is.
    """
    given = top.rstrip("/")
    real = os.path.realpath(top).rstrip("/")

    def skip(path: str) -> bool:
        why = exclude.match(real + path[len(given) :] or "/", real)
        if why is None:
            return False
        log.info("%s: excluded (%s)", path, why)
        return True

    return skip


def _named_link(
    top: str,
    skip: Callable[[str], bool] | None,
    procfs: frozenset[int],
    exclude: ExcludePaths | None,
) -> Generator[WalkItem, None, None]:
    """A link named on the command line: the tree or file it points to, under its name.

    What it points to is opened by its real path, its last part without
    following a link, so a link put there meanwhile is refused as usual.
    """
    try:
        target = os.stat(top)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            yield top, NotScanned(NotScannedReason.SYMLINK, "symbolic link loop, not followed")
        elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
            yield top, NotScanned(NotScannedReason.SYMLINK, "symbolic link to nothing that exists")
        else:
            yield top, os_error_verdict(exc, "following the symbolic link")
        return
    if target.st_dev in procfs:
        yield top, _ON_PROC
        return
    real = os.path.realpath(top)
    if stat.S_ISDIR(target.st_mode):
        yield from _named_tree(top, real, skip, procfs, exclude)
        return
    parent, name = os.path.split(real)
    try:
        # O_PATH: only searched, never read, as when the path is opened whole
        # (an execute-only folder, such as a home folder of mode 0711)
        fd = os.open(parent, _PARENT_FLAGS)
    except OSError as exc:
        yield top, os_error_verdict(exc, "opening the folder of the link's target")
        return
    try:
        yield ListedFile(top, name, fd, stat.S_ISREG(target.st_mode))
    finally:
        os.close(fd)


_PARENT_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _named_tree(
    top: str,
    directory: str,
    skip: Callable[[str], bool] | None,
    procfs: frozenset[int],
    exclude: ExcludePaths | None,
) -> Generator[WalkItem, None, None]:
    """The walk below ``directory`` (``top``, or the real path of the link
    ``top``), its paths under ``top``'s name."""
    try:
        fd = open_noatime(directory, DIRECTORY_FLAGS)
    except OSError as exc:
        yield top, os_error_verdict(exc, "reading the directory")
        return
    yield from _tree(top, fd, skip, procfs, exclude)


def _tree(
    top: str,
    top_fd: int,
    skip: Callable[[str], bool] | None,
    procfs: frozenset[int],
    exclude: ExcludePaths | None,
) -> Generator[WalkItem, None, None]:
    """The walk below one named directory, open as ``top_fd`` (closed here)."""
    # the directories on the way down: path, descriptor, subdirectories not visited yet
    stack: list[tuple[str, int, Iterator[str]]] = []
    directory, fd = top, top_fd
    try:
        while True:
            try:
                subdirs = yield from _listing(directory, fd, skip)
            except BaseException:
                os.close(fd)
                raise
            stack.append((directory, fd, iter(subdirs)))
            below = yield from _next_directory(stack, procfs, exclude)
            if below is None:
                return
            directory, fd = below
    finally:
        for _, held, _ in stack:
            os.close(held)


def _listing(
    directory: str, fd: int, skip: Callable[[str], bool] | None
) -> Generator[WalkItem, None, list[str]]:
    """Yield the files of the directory open as ``fd``; return its subdirectories' names."""
    try:
        with os.scandir(fd) as entries:  # a duplicate of fd, rewound: fd stays usable
            listed = sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        yield directory, os_error_verdict(exc, "reading the directory")
        return []
    prefix = _prefix(directory)
    if skip is not None:
        listed = [entry for entry in listed if not skip(prefix + entry.name)]
    subdirs: list[str] = []
    for entry in listed:
        try:
            descend = entry.is_dir(follow_symlinks=False)
        except OSError:
            descend = False
        if descend:
            subdirs.append(entry.name)
            continue
        try:
            regular = entry.is_file(follow_symlinks=False)
        except OSError:
            regular = False  # the opener's lstat says what the matter is
        yield ListedFile(prefix + entry.name, entry.name, fd, regular)
    return subdirs


def _next_directory(
    stack: list[tuple[str, int, Iterator[str]]],
    procfs: frozenset[int],
    exclude: ExcludePaths | None,
) -> Generator[WalkItem, None, tuple[str, int] | None]:
    """Open the next subdirectory to walk, closing the directories that are done.

    Opened relative to its parent, without following a link. What was put
    in its place since the listing (a link, a file) comes as a listed file
    for the opener to judge: a link is reported, never walked. A directory
    ``exclude`` leaves out by its identity (scan's --move directory, reached
    through a bind mount) is not entered.
    """
    while stack:
        parent, parent_fd, rest = stack[-1]
        name = next(rest, None)
        if name is None:
            stack.pop()
            os.close(parent_fd)
            continue
        path = _prefix(parent) + name
        try:
            fd = open_noatime(name, DIRECTORY_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # no longer a directory
                yield ListedFile(path, name, parent_fd, False)
            else:
                yield path, os_error_verdict(exc, "reading the directory")
            continue
        st = os.fstat(fd)
        if st.st_dev in procfs:
            os.close(fd)
            log.info("%s: left out, as clamd leaves /proc out", path)
            continue
        why = exclude.match_directory(st) if exclude is not None else None
        if why is not None:
            os.close(fd)
            log.info("%s: excluded (%s)", path, why)
            continue
        return path, fd
    return None


def _prefix(directory: str) -> str:
    """What a name in ``directory`` is joined to, as os.scandir(path) joins it."""
    return directory if directory.endswith("/") else directory + "/"
