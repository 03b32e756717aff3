"""Opening a file for scanning, once, without following links or blocking.

The descriptor that is scanned is the one later actions must act on
(clamd-behaviour.md, "Safe quarantine"): its fstat identity travels with the
verdict. ``lstat`` comes first so that fifos and devices are never opened at
all (opening a tape device rewinds it); the open then uses O_NOFOLLOW and
O_NONBLOCK in case the path was swapped in between, and the fstat result is
what counts.

Files are opened with O_NOATIME where the kernel allows it, so that neither
the scan's reads nor clamd's, through the passed descriptor, change a
file's access time (see :func:`open_noatime`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import stat

from clamwatch.value import Value
from clamwatch.verdict import NotScanned, NotScannedReason, ScanError, Verdict

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from typing import Final

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def open_noatime(name: str, flags: int, dir_fd: int | None = None) -> int:
    """Open ``name`` (relative to ``dir_fd`` if given) with ``flags``, and O_NOATIME if allowed.

    O_NOATIME: reading the file, or listing the directory, does not set its
    access time, which tmpwatch and tmpreaper (for directories too), `find
    -atime` and storage tiering go by; a scan is not a use of the file. It
    also spares a journaled inode update per newly written file, which the
    first read would make under relatime (clamd's reads go through this
    descriptor). The kernel allows it to the file's owner and to a process
    with CAP_FOWNER (the shipped unit has it) and refuses it with EPERM to
    anyone else: the file is then opened without it, as an ordinary read
    would.
    """
    try:
        return os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            raise
    return os.open(name, flags, dir_fd=dir_fd)


def _open_file(name: str, dir_fd: int | None = None) -> int:
    return open_noatime(name, _OPEN_FLAGS, dir_fd)


# A directory opened to be listed; the link it may be is not followed.
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def list_directory(
    directory: str, *, follow: bool = False, expect: tuple[int, int] | None = None
) -> list[tuple[str, bool | None, tuple[int, int] | None]]:
    """Each entry of ``directory``: its path, whether it is a directory itself,
    and a directory's (st_dev, st_ino).

    None for an entry whose type could not be told (gone meanwhile). The
    listing goes through a descriptor opened with O_NOATIME where allowed
    (:func:`open_noatime`), so that it leaves the folder's access time alone;
    each entry's type is read while that descriptor is open (the file
    system may not give it in the listing). Raises OSError when the folder
    cannot be listed: ELOOP when ``directory`` is a symbolic link, which
    is followed only when ``follow`` says so (a watch's root as configured;
    a directory in a tree swapped for a link must not take a walk out of it).

    ``expect``: the (st_dev, st_ino) its parent's listing gave; ELOOP too
    when the path now leads to another directory. O_NOFOLLOW guards the last
    name only: a folder above it swapped for a link since its listing leads
    the path out of the tree, into whatever the link names.
    """
    flags = DIRECTORY_FLAGS & ~os.O_NOFOLLOW if follow else DIRECTORY_FLAGS
    fd = open_noatime(directory, flags)
    try:
        if expect is not None:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != expect:
                raise OSError(
                    errno.ELOOP,
                    "not the directory listed there (a folder above it swapped for a link)",
                    directory,
                )
        with os.scandir(fd) as entries:  # through a duplicate of fd, which shares its flags
            return [_listed(directory, entry) for entry in entries]
    finally:
        os.close(fd)


def _listed(
    directory: str, entry: os.DirEntry[str]
) -> tuple[str, bool | None, tuple[int, int] | None]:
    path = os.path.join(directory, entry.name)
    try:
        if not entry.is_dir(follow_symlinks=False):
            return path, False, None
        # fstatat() beside the listing's descriptor: a mount point gives
        # what is mounted there, as opening the path will
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return path, None, None
    return path, True, (st.st_dev, st.st_ino)


class FileIdentity(Value):
    """Which content was scanned: the inode, and its size and times at open."""

    __slots__ = ("dev", "ino", "size", "mtime_ns", "ctime_ns", "mode", "uid", "gid")
    dev: Final[int]
    ino: Final[int]
    size: Final[int]
    mtime_ns: Final[int]
    ctime_ns: Final[int]
    mode: Final[int]
    uid: Final[int]
    gid: Final[int]

    def __init__(self, st: os.stat_result) -> None:
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.size = st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.ctime_ns = st.st_ctime_ns
        self.mode = st.st_mode
        self.uid = st.st_uid
        self.gid = st.st_gid


class OpenedFile:
    """An open regular file and the identity it had when it was opened."""

    __slots__ = ("path", "fd", "identity")

    def __init__(self, path: str, fd: int, identity: FileIdentity) -> None:
        self.path = path
        self.fd = fd
        self.identity = identity

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def classify(mode: int) -> NotScanned | None:
    """Why a file of this mode is not scanned, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return NotScanned(NotScannedReason.SYMLINK, "symbolic link not followed")
    return NotScanned(NotScannedReason.NOT_REGULAR, f"{_kind_of(mode)}, not a regular file")


# Why the daemon, which names files by path and has inotify watch directories
# by path, can do neither below a directory whose path is too long
# (ENAMETOOLONG). `clamwatch scan` opens each directory relative to its
# parent's descriptor and has no such limit.
PATH_TOO_LONG = (
    "its path is longer than the kernel's PATH_MAX (4096 bytes), so inotify cannot watch it"
    " and the daemon cannot open files by it until it is moved to a shorter path"
    " (clamwatch scan, which walks by descriptor, can scan it)"
)


def describe_os_error(exc: OSError) -> str:
    """The system's words for ``exc`` ("No such file or directory"), else its text.

    Out of descriptors, with the limit and where to raise it.
    """
    if not exc.errno:
        return str(exc)
    if exc.errno == errno.EMFILE:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return (
            f"{os.strerror(exc.errno)} (this process may hold {limit}: raise the limit with"
            " ulimit -n, or LimitNOFILE= for a service)"
        )
    return os.strerror(exc.errno)


# Errors of the moment: this process (EMFILE) or the system (ENFILE) is out
# of descriptors, or memory is short. Nothing is wrong with the file.
FOR_NOW = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


class ShortageError(ScanError):
    """A file not opened or read for want of descriptors or memory (FOR_NOW):
    an error, never clean, but one that the daemon tries again after a pause."""

    __slots__ = ()


def os_error_verdict(exc: OSError, what: str) -> Verdict:
    """An OSError met while opening or reading, as a verdict (never clean)."""
    if exc.errno in FOR_NOW:
        return ShortageError(f"{what} failed: {describe_os_error(exc)}")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotScanned(
            NotScannedReason.VANISHED,
            "no such file or directory (vanished before it could be scanned)",
        )
    if exc.errno == errno.ELOOP:
        return NotScanned(NotScannedReason.SYMLINK, "symbolic link not followed")
    return ScanError(f"{what} failed: {describe_os_error(exc)}")


def open_for_scan(
    path: str,
    before: os.stat_result | None = None,
    *,
    listed_regular: bool = False,
    within: tuple[int, str] | None = None,
) -> OpenedFile | Verdict:
    """Open ``path`` for scanning, or say why it will not be scanned.

    ``before`` is the path's lstat result when the caller has one already.
    ``listed_regular``: its directory's listing said it is a regular file
    (d_type), so no lstat is asked for first. ``within``: the descriptor of
    the directory that listed it and its name there, to open it by instead
    of by ``path`` (which then only names it), so that no directory on the
    path can be swapped for a link meanwhile. Either way the file is opened
    without following a link and without blocking, and the fstat of what was
    opened decides: a link, fifo or device put in its place meanwhile is
    refused as it would have been.
    """
    dir_fd, name = within if within is not None else (None, path)
    if not listed_regular:
        if before is None:
            try:
                before = os.lstat(name, dir_fd=dir_fd)
            except OSError as exc:
                return os_error_verdict(exc, "lstat")
        refused = classify(before.st_mode)
        if refused is not None:
            return refused
    try:
        fd = _open_file(name, dir_fd)
    except OSError as exc:
        return os_error_verdict(exc, "open")
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        return os_error_verdict(exc, "fstat")
    refused = classify(st.st_mode)
    if refused is not None:
        # swapped for a fifo or device between listing or lstat and open
        os.close(fd)
        return refused
    return OpenedFile(path, fd, FileIdentity(st))


def descriptor_path(fd: int) -> str | None:
    """Where the kernel says the file open as ``fd`` is, or None when /proc cannot say.

    The path every directory on the way was resolved to at the open, links
    included (proc(5), /proc/self/fd); " (deleted)" follows it once the file
    has been removed.
    """
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class CheckedFile(OpenedFile):
    """A file :func:`open_unwritten` found finished, still open, with its fstat result.

    The scan takes it over, so that a file a walk found is opened once, not
    once to ask and once more to scan.
    """

    __slots__ = ("st",)

    def __init__(self, path: str, fd: int, st: os.stat_result) -> None:
        super().__init__(path, fd, FileIdentity(st))
        self.st = st


def open_unwritten(path: str, st: os.stat_result) -> CheckedFile | None:
    """The regular file at ``path``, open, if no process has it open for writing; else None.

    No writer left means its writer is done. A read lease (fcntl(2)
    F_SETLEASE) is refused with EAGAIN while anyone has the file open for
    writing; taken and dropped at once (F_UNLCK), it answers that without
    waiting for the file to hold still, and the descriptor stays open for
    the scan without holding up a writer that opens the file later. Needs
    CAP_LEASE for files of other users; without it (EACCES) the answer is
    "unknown", i.e. None. The lease holder would get SIGIO if a writer opened
    the file in the microseconds it is held: the daemon ignores SIGIO.

    ``st`` is the path's lstat result: only a regular file is opened, and
    only the same inode is answered for.

    An empty file is never taken as finished: open(2) with O_CREAT makes the
    name before the new file's descriptor holds write access, and a walk
    that lists the name in between would get the lease on a file whose
    writer has not begun (a slowed writer made this happen in a benchmark:
    the empty file was scanned, then again at its close). An empty file
    that stays empty is scanned once it has held still for settle_time.
    """
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        fd = _open_file(path)
    except OSError:
        return None
    try:
        now = os.fstat(fd)
        if now.st_ino != st.st_ino or now.st_size == 0:
            os.close(fd)
            return None
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:
        os.close(fd)
        return None
    return CheckedFile(path, fd, now)


def has_writer(fd: int, *, keep: bool = False) -> bool | None:
    """Whether any process has the file open as ``fd`` (read-only) open for writing;
    None when that cannot be told (CAP_LEASE is needed for other users' files).

    The read lease of :func:`open_unwritten`, taken on a descriptor already
    open. With ``keep``, a lease taken (False) is held until
    :func:`drop_lease`: meanwhile an open for writing, or a truncate, waits
    for it (up to /proc/sys/fs/lease-break-time), so the content cannot
    change.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno in (errno.EAGAIN, errno.EBUSY) else None
    if not keep:
        drop_lease(fd)
    return False


def drop_lease(fd: int) -> None:
    """Let go of the lease :func:`has_writer` kept; a writer waiting for it goes on."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)


def raise_nofile_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one; return the soft limit then.

    Every file waiting for its verdict holds a descriptor; systemd's default
    soft limit (1024) is the old select(2)-era one, and a hard limit far above
    it is there for programs that ask.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
