"""File operations that act only on the inode that was scanned, and never replace.

clamd-behaviour.md, "Safe quarantine": before moving or removing, the path
must still name the scanned (device, inode, size, mtime). Checking and then
acting leaves a window in which the name can be swapped, so the name is first
taken out of the way by a rename that never replaces (renameat2
RENAME_NOREPLACE), the identity is checked on the name we now own, and only
then is it removed or kept; a mismatch is renamed back. No file that was not
scanned is ever moved, removed or overwritten.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from collections.abc import Iterator

from clamwatch import staged
from clamwatch.files import FileIdentity, OpenedFile

# <linux/fs.h>
RENAME_NOREPLACE = 1
_AT_FDCWD = -100

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


def rename_noreplace(source: str, target: str, dir_fd: int = _AT_FDCWD) -> None:
    """rename(2) that fails with FileExistsError instead of replacing ``target``.

    Both names relative to the directory open as ``dir_fd``, if given.
    OSError EXDEV across file systems; EINVAL where the file system lacks
    RENAME_NOREPLACE (then nothing was renamed).
    """
    if _renameat2(dir_fd, os.fsencode(source), dir_fd, os.fsencode(target), RENAME_NOREPLACE):
        code = ctypes.get_errno()
        raise OSError(code, f"{os.strerror(code)}: {source!r} -> {target!r}")


def names_same_file(st: os.stat_result, identity: FileIdentity) -> bool:
    """The stat result is of the scanned inode, unchanged: size, mtime and ctime too.

    The mtime alone is the owner's to set (utimensat): an uploader rewrote a
    scanned file, same size, and set its mtime back, and the rewrite passed
    for the scanned content. The ctime, which any write or utimensat sets
    and only the kernel chooses, tells it.
    """
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (
        identity.dev,
        identity.ino,
        identity.size,
        identity.mtime_ns,
        identity.ctime_ns,
    )


def same_size_and_mtime(st: os.stat_result, identity: FileIdentity) -> bool:
    """The scanned inode, its size and mtime as they were: what a rename, a
    link or an unlink of one of its names, which set the ctime, keep. Not
    proof that its content is the scanned one (see :func:`names_same_file`)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
        identity.dev,
        identity.ino,
        identity.size,
        identity.mtime_ns,
    )


def path_names(path: str, identity: FileIdentity) -> bool:
    try:
        return names_same_file(os.lstat(path), identity)
    except OSError:
        return False


def move_if_same(path: str, identity: FileIdentity, target: str) -> bool:
    """Rename ``path`` to ``target`` (same file system) if it is the scanned file.

    Returns False, with everything as it was, when ``path`` no longer names the
    scanned inode. Raises FileExistsError when ``target`` exists, OSError EXDEV
    across file systems.
    """
    if not path_names(path, identity):
        return False
    rename_noreplace(path, target)
    try:
        moved = same_size_and_mtime(os.lstat(target), identity)  # the rename set its ctime
    except OSError:
        moved = False
    if moved:
        return True
    # swapped in the instant between the check and the rename: put it back
    try:
        rename_noreplace(target, path)
    except OSError as exc:
        raise OSError(
            exc.errno or errno.EIO,
            f"{path!r} was replaced while being moved; the new file is at {target!r}",
        ) from exc
    return False


def remove_if_same(path: str, identity: FileIdentity) -> bool:
    """Unlink ``path`` if it is the scanned file; False (nothing done) if not."""
    staging = staged.new_name(path)  # the watch leaves it out
    if not move_if_same(path, identity, staging):
        return False
    os.unlink(staging)
    return True


def copy_new(
    source_fd: int,
    target: str,
    mode: int,
    scanned: FileIdentity | None = None,
    *,
    keep_owner: bool = False,
) -> bool:
    """Copy what ``source_fd`` holds into a new file ``target`` (never replacing: it
    raises FileExistsError), with ``mode`` whatever the umask, and sync it; on any
    error, or an interruption (Ctrl-C, a scan's SIGTERM), nothing is left at
    ``target``, nor after a crash where the file system makes unnamed files
    (O_TMPFILE: ext4, xfs, btrfs, tmpfs), the copy being named once whole.

    ``scanned``: the source's identity at its scan. Only that many bytes are
    copied, and if the source is not as it was once they are (written to,
    grown or cut meanwhile), the copy is removed and False returned: a copy
    must hold the scanned content, not bytes that came after. With
    ``keep_owner`` the copy gets the original's owner and mtime, as mv(1)
    gives them across file systems; where the owner cannot be kept, setuid
    and setgid bits are not either (mv and cp -p do the same).
    """
    fd = _open_unnamed(target, mode)
    unnamed = fd is not None
    if fd is None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, mode & 0o777)
    try:
        limit = scanned.size if scanned is not None else None
        offset = 0
        while limit is None or offset < limit:
            want = 1 << 20 if limit is None else min(1 << 20, limit - offset)
            chunk = os.pread(source_fd, want, offset)
            if not chunk:
                break
            written = 0
            while written < len(chunk):
                written += os.write(fd, chunk[written:])
            offset += len(chunk)
        changed = scanned is not None and not names_same_file(os.fstat(source_fd), scanned)
        if not changed:
            if keep_owner and scanned is not None:
                try:
                    os.fchown(fd, scanned.uid, scanned.gid)
                except PermissionError:
                    mode &= ~(stat.S_ISUID | stat.S_ISGID)  # set-id to us, not to its owner
                os.utime(fd, ns=(scanned.mtime_ns, scanned.mtime_ns))
            else:
                mode &= ~(stat.S_ISUID | stat.S_ISGID)
            os.fchmod(fd, mode)  # after fchown, which clears set-id bits
            os.fsync(fd)
            if unnamed:
                # named only now, whole: linkat never replaces (FileExistsError)
                _link_unnamed(fd, target)
    except BaseException:
        os.close(fd)
        if not unnamed:
            os.unlink(target)
        raise
    os.close(fd)
    if changed:
        if not unnamed:
            os.unlink(target)
        return False
    return True


def _link_unnamed(fd: int, target: str) -> None:
    """Give the O_TMPFILE file open as ``fd`` the name ``target`` (never replacing)."""
    directory, name = os.path.split(target)
    dir_fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # linkat(AT_SYMLINK_FOLLOW), which os.link asks for only with a dir_fd:
        # plain link(2) does not follow /proc's link to the file
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
    finally:
        os.close(dir_fd)


def _open_unnamed(target: str, mode: int) -> int | None:
    """A new file with no name yet (O_TMPFILE) in ``target``'s folder, or None
    where the file system cannot make one (or /proc is not there to link it by).

    A copy made in it gets its name once it is whole: a crash (SIGKILL) in the
    middle of a copy leaves nothing, where a file made under its name was left
    cut short, under the name a release gives a scanned file.
    """
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    if not os.path.isdir("/proc/self/fd"):
        return None
    directory = os.path.dirname(target) or "."
    try:
        return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode & 0o777)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise


def move_to_free_name(
    path: str,
    opened: OpenedFile,
    base: str,
    numbered: str,
    mode: int,
    *,
    keep_copy: bool,
    keep_owner: bool = False,
    rename: bool = True,
    resume: bool = False,
) -> str | None:
    """Move the scanned file ``opened``, at ``path``, to ``base``, or the first of
    ``numbered.format(base, 1)`` to ``(base, 999)`` that is free; never replacing.

    Across file systems the content is copied from the scanned descriptor
    (``mode``), then the original removed if it is still the scanned one; if
    it is not, ``keep_copy`` says whether the copy stays; if removing it
    fails, the copy is removed and the error raised. Only the scanned
    content is copied: a file changed during the copy is not moved (see
    :func:`copy_new`, which also says what ``keep_owner`` does). Without
    ``rename`` it is copied on the same file system too, to a new inode:
    whoever kept a descriptor of the original (O_PATH is enough) could
    reopen it for writing through /proc/self/fd wherever it was moved.
    Returns where it went, or None when nothing was moved (the path no
    longer names the file, or the file changed).

    With ``resume``, a name taken by a whole copy of the scanned file (the
    same size, mtime and bytes) is taken for the copy made before a crash
    that came ahead of the original's removal: the original is removed and
    that name returned, rather than a second copy made under the next one.
    """
    for target in _numbered_names(base, numbered):
        try:
            try:
                if rename:
                    return target if move_if_same(path, opened.identity, target) else None
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            # the copy's own O_EXCL meets a name taken too: the next one, then
            try:
                copied = copy_new(opened.fd, target, mode, opened.identity, keep_owner=keep_owner)
            except FileExistsError:
                if not (resume and _holds_copy(target, opened)):
                    raise
                return target if remove_if_same(path, opened.identity) or keep_copy else None
            if not copied:
                return None
            try:
                removed = remove_if_same(path, opened.identity)
            except BaseException:
                # the original stays (its directory not writable, its name
                # too long for the staging name...): so does no copy of it
                os.unlink(target)
                raise
            if removed or keep_copy:
                return target
            os.unlink(target)
            return None
        except FileExistsError:
            continue
    raise _all_taken(base)


def _holds_copy(target: str, opened: OpenedFile) -> bool:
    """Whether ``target`` is a regular file with the scanned file's size, mtime and bytes."""
    identity = opened.identity
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (
            identity.size,
            identity.mtime_ns,
        ):
            return False
        offset = 0
        while offset < identity.size:
            want = min(1 << 20, identity.size - offset)
            mine = os.pread(opened.fd, want, offset)
            if not mine or os.pread(fd, want, offset) != mine:
                return False
            offset += len(mine)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def copy_to_free_name(source_fd: int, base: str, numbered: str, mode: int) -> str:
    """Copy what ``source_fd`` holds to ``base``, or the first free one of the
    names :func:`move_to_free_name` tries (copy_new: never replacing); return it."""
    for target in _numbered_names(base, numbered):
        try:
            copy_new(source_fd, target, mode)
        except FileExistsError:
            continue
        return target
    raise _all_taken(base)


def _numbered_names(base: str, numbered: str) -> Iterator[str]:
    """``base``, then ``numbered.format(base, n)`` for n from 1 to 999; a name
    that the number would take past NAME_MAX (255 bytes) is cut to make room
    (NAME.001 of a 253-byte NAME was 'File name too long')."""
    yield base
    directory, name = os.path.split(base)
    for number in range(1, 1000):
        candidate = numbered.format(name, number)
        over = len(os.fsencode(candidate)) - 255
        if over > 0:
            cut = os.fsdecode(os.fsencode(name)[:-over])
            candidate = numbered.format(cut, number)
        yield os.path.join(directory, candidate)


def _all_taken(base: str) -> OSError:
    """The error when every name :func:`_numbered_names` gives is taken."""
    return OSError(errno.EEXIST, f"{base} and 999 numbered names after it exist")
