"""The quarantine store: infected files kept where nothing can reach them.

One flat directory, mode 0700, holding per entry a data file ``<id>`` (mode
0600) and its record ``<id>.json`` (quarantine_record.py). An entry exists
when its record does.

A file comes in as clamd-behaviour.md, "Safe quarantine" says, acting only
on the inode that was scanned and never losing a file:

- move, same file system: one rename that never replaces
  (safefs.move_if_same), then the record. If the path no longer names the
  scanned version nothing is done (its new content will be scanned).
- copy, or a move across file systems: the data file is created O_EXCL and
  filled from the scanned descriptor, fsync'd, and its record written; only
  then, for a move, is the original's name removed, and only if it still
  names the scanned version.
- any failure leaves the original where it was, and no partial entry.

Duplicate events for one version of a file (one device, inode, size and
mtime) give one entry: an index of the entries by version, guarded by a lock
because several action workers call in at once.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from clamwatch import safefs
from clamwatch.durable import fsync_directory
from clamwatch.files import FileIdentity, OpenedFile, describe_os_error
from clamwatch.names import display_path
from clamwatch.quarantine_record import (
    QuarantineRecord,
    is_entry_id,
    new_entry_id,
    read_record,
    record_path,
    write_record,
)

__all__ = ["QuarantineError", "QuarantineRecord", "QuarantineStore", "TargetExistsError"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # copy and hash 1 MiB at a time: few system calls, little memory
_ID_ATTEMPTS = 16  # fresh ids to try when a name is taken; one retry is already rare
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# Tests replace this to date entries in the past.
_clock: Callable[[], float] = time.time

_Version = tuple[int, int, int, int]  # (dev, ino, size, mtime_ns)


class QuarantineError(Exception):
    """An operation that did not happen; the message names the file or entry and why."""


class TargetExistsError(QuarantineError):
    """restore() refused: the file to be written exists (and overwrite was not given)."""


class DamagedEntryError(QuarantineError):
    """The entry's record is there but no valid record: it cannot be restored."""


class RecordMissingError(QuarantineError):
    """The entry's content is there without its record (a crash between a move
    into the quarantine and the record's write): it cannot be restored."""


class _RenameUnavailableError(Exception):
    """The same-file-system rename cannot be used here; copy instead."""


def _version(identity: FileIdentity) -> _Version:
    return (identity.dev, identity.ino, identity.size, identity.mtime_ns)


def _version_of(record: QuarantineRecord) -> _Version:
    return (record.dev, record.ino, record.size, record.mtime_ns)


class QuarantineStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        _make_private_directory(directory)
        self._lock = threading.Condition()
        self._index: dict[_Version, QuarantineRecord] | None = None  # loaded on first use
        self._busy: set[_Version] = set()  # versions being quarantined right now
        self.unreadable: builtins.list[str] = []  # the records the last list() skipped

    # -- reading ------------------------------------------------------------------

    def data_path(self, entry_id: str) -> Path:
        return self.directory / entry_id

    def list(self) -> list[QuarantineRecord]:
        """Every entry, oldest first; unreadable records are logged and skipped."""
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            raise QuarantineError(f"cannot read {self.directory}: {exc.strerror}") from exc
        records = []
        unreadable = []
        present = set(names)
        for name in names:
            entry_id = name.removesuffix(".json")
            if entry_id == name:
                if is_entry_id(name) and f"{name}.json" not in present:
                    # content without its record: a crash between a move into
                    # the quarantine and its record's write
                    unreadable.append(name)
                    log.warning("%s: quarantined content without its record", self.directory / name)
                continue
            if not is_entry_id(entry_id):
                continue  # records being written (.ID.*.tmp)
            try:
                records.append(read_record(self.directory, entry_id))
            except (OSError, ValueError) as exc:
                unreadable.append(entry_id)
                log.warning(
                    "%s: unreadable quarantine record skipped: %s", self.directory / name, exc
                )
        self.unreadable = sorted(unreadable)
        records.sort(key=lambda r: (r.detected_at, r.id))
        return records

    def get(self, entry_id: str) -> QuarantineRecord:
        if not is_entry_id(entry_id):
            raise QuarantineError(f"{entry_id!r} is not a quarantine entry id")
        try:
            return read_record(self.directory, entry_id)
        except FileNotFoundError:
            missing = f"no quarantine entry {entry_id} in {self.directory}"
            if self.data_path(entry_id).exists():
                raise RecordMissingError(missing) from None
            raise QuarantineError(missing) from None
        except OSError as exc:
            path = record_path(self.directory, entry_id)
            raise QuarantineError(
                f"quarantine entry {entry_id}: cannot read {path}: {exc.strerror}"
            ) from exc
        except ValueError as exc:
            path = record_path(self.directory, entry_id)
            raise DamagedEntryError(
                f"quarantine entry {entry_id}: {path} is malformed: {exc}"
            ) from exc

    def total_size(self) -> int:
        return sum(record.size for record in self.list())

    def holds(self, identity: FileIdentity) -> QuarantineRecord | None:
        """The entry of exactly this version of a file, if there is one."""
        with self._lock:
            return self._indexed(_version(identity))

    def _indexed(self, version: _Version) -> QuarantineRecord | None:
        """Call with the lock held."""
        if self._index is None:
            self._index = {_version_of(r): r for r in self.list()}
        record = self._index.get(version)
        # `clamwatch quarantine delete` runs in another process: trust the disk
        if record is not None and not record_path(self.directory, record.id).exists():
            del self._index[version]
            return None
        return record

    # -- quarantining -------------------------------------------------------------

    def quarantine(
        self,
        opened: OpenedFile,
        *,
        signature: str,
        clamd_version: str | None,
        watch: str,
        keep_original: bool,
        mode: int | None = None,
    ) -> QuarantineRecord | None:
        """Move (or copy) the scanned file into the quarantine; None when the path
        no longer names the scanned version, and nothing was done.

        ``mode`` is recorded instead of the file's own (st_mode), when given:
        the one it had before the daemon made it unreadable.

        The record's ``how`` says what happened: a move whose original could not
        be removed after the copy (it was replaced meanwhile) is "copied".
        Raises QuarantineError with the original left where it was.
        """
        if self._holds_path(opened.path):
            # a watch that holds the quarantine directory: quarantining an
            # entry's copy would make another entry, and so on forever
            raise QuarantineError(
                f"{display_path(opened.path)} is in the quarantine directory; not quarantined"
            )
        version = _version(opened.identity)
        with self._lock:
            while version in self._busy:  # the same version from another event
                self._lock.wait()
            existing = self._indexed(version)
            if existing is None:
                self._busy.add(version)
        if existing is not None:
            if not keep_original:
                # Another name of it (a hard link); or the very name the entry
                # came from, when a crash fell between a move's copy and record
                # and the removal of the original: the rescan after the restart
                # finds it here. The name is removed only if it still holds
                # this version (the content is safe in the entry); mostly it
                # is gone, and nothing is done.
                self._remove_other_name(opened, existing)
            return existing
        record = None
        try:
            record = self._quarantine(
                opened, signature, clamd_version, watch, keep_original, mode=mode
            )
            return record
        finally:
            with self._lock:
                self._busy.discard(version)
                if record is not None and self._index is not None:
                    self._index[version] = record
                self._lock.notify_all()

    def _quarantine(
        self,
        opened: OpenedFile,
        signature: str,
        clamd_version: str | None,
        watch: str,
        keep_original: bool,
        *,
        mode: int | None,
    ) -> QuarantineRecord | None:
        identity = opened.identity
        template = QuarantineRecord(
            id="", original_path=opened.path, watch=watch, signature=signature,
            clamd_version=clamd_version, detected_at=_clock(), owner=identity.uid,
            group=identity.gid, mode=identity.mode if mode is None else mode, size=identity.size,
            mtime_ns=identity.mtime_ns, sha256="", dev=identity.dev, ino=identity.ino, how="",
        )  # fmt: skip
        if not keep_original:
            try:
                return self._move(opened, template)
            except _RenameUnavailableError:
                pass
        return self._copy(opened, template, remove_original=not keep_original)

    def _move(self, opened: OpenedFile, template: QuarantineRecord) -> QuarantineRecord | None:
        try:
            st = os.fstat(opened.fd)
            if os.stat(self.directory).st_dev != st.st_dev or st.st_nlink > 1:
                # Another file system; or other hard links, through which the
                # entry's inode could still be read and changed: copy instead.
                raise _RenameUnavailableError
            # hashed first, so that the record follows the rename at once
            sha256 = _sha256(opened.fd)
        except OSError as exc:
            raise self._cannot(opened, exc) from exc
        for entry_id in self._fresh_ids(template.detected_at):
            data = self.data_path(entry_id)
            try:
                if not safefs.move_if_same(opened.path, opened.identity, str(data)):
                    return None
                break
            except FileExistsError:
                continue  # name collision: never overwrite, take another id
            except OSError as exc:
                # EXDEV: a bind mount (systemd's ReadWritePaths) between
                # them; EINVAL: no RENAME_NOREPLACE there. Nothing was moved.
                if exc.errno in (errno.EXDEV, errno.EINVAL):
                    raise _RenameUnavailableError from exc
                raise self._cannot(opened, exc) from exc
        else:
            raise self._no_free_name()
        record = dataclasses.replace(template, id=entry_id, sha256=sha256, how="moved")
        try:
            try:
                os.chmod(data, 0o600)  # by name: inside our 0700 directory, no one can swap it
            except PermissionError:
                # a daemon that is not root and does not own the file: the 0700
                # directory alone keeps everyone else out, so carry on
                log.debug("%s: cannot chmod 0600, left as it was", data)
            write_record(self.directory, record)
        except OSError as exc:
            self._put_back(opened, data, exc)
        return record

    def _put_back(self, opened: OpenedFile, data: Path, exc: OSError) -> NoReturn:
        """After a failed record write, the moved file goes back where it was."""
        shown = display_path(opened.path)
        with contextlib.suppress(FileNotFoundError):
            # written after all, and only its directory fsync failed
            os.unlink(record_path(self.directory, data.name))
        try:
            os.chmod(data, stat.S_IMODE(opened.identity.mode))
            safefs.rename_noreplace(str(data), opened.path)
        except OSError as back:
            raise QuarantineError(
                f"cannot quarantine {shown}: writing its record in {self.directory} failed"
                f" ({exc.strerror}) and it could not be put back ({back.strerror});"
                f" it is kept at {data}"
            ) from exc
        raise QuarantineError(
            f"cannot quarantine {shown}: writing its record in {self.directory} failed"
            f" ({exc.strerror}); the file was put back"
        ) from exc

    def _copy(
        self, opened: OpenedFile, template: QuarantineRecord, *, remove_original: bool
    ) -> QuarantineRecord | None:
        fd, data = self._create_data_file(opened, template.detected_at)
        entry_id = data.name
        try:
            try:
                sha256 = _copy_from(opened.fd, fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            # not the ctime: its name moved or removed since (which sets it)
            # takes nothing from the copy of what was scanned
            if not safefs.same_size_and_mtime(os.fstat(opened.fd), opened.identity):
                log.info(
                    "%s changed while being quarantined; left alone", display_path(opened.path)
                )
                os.unlink(data)
                return None
            # For a move too the record is written before the original's name
            # is removed: a crash in between leaves an entry, never a lost path.
            how = "moved" if remove_original else "copied"
            record = dataclasses.replace(template, id=entry_id, sha256=sha256, how=how)
            write_record(self.directory, record)  # fsyncs the directory: data name too
        except OSError as exc:
            self._discard(entry_id)
            raise self._cannot(opened, exc) from exc
        if remove_original:
            return self._remove_original(opened, record)
        return record

    def _create_data_file(self, opened: OpenedFile, detected_at: float) -> tuple[int, Path]:
        for entry_id in self._fresh_ids(detected_at):
            data = self.data_path(entry_id)
            try:
                fd = os.open(data, _CREATE_FLAGS, 0o600)
            except FileExistsError:
                continue  # name collision: never overwrite, take another id
            except OSError as exc:
                raise self._cannot(opened, exc) from exc
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o600)  # whatever the umask took away or left
            return fd, data
        raise self._no_free_name()

    def _remove_original(self, opened: OpenedFile, record: QuarantineRecord) -> QuarantineRecord:
        shown = display_path(opened.path)
        try:
            if safefs.remove_if_same(opened.path, opened.identity):
                return record
        except OSError as exc:
            # Its folder refused (full: the staging name needs room there;
            # read-only; immutable). The infected file is still in place, so
            # the move failed: an entry beside it was called done, and every
            # retry found that entry and did nothing more. The copy goes, and
            # the retry moves the file once it can.
            self._discard(record.id)
            raise QuarantineError(
                f"cannot quarantine {shown}: it was copied into {self.directory} but could"
                f" not be removed ({describe_os_error(exc)}); the copy is not kept"
            ) from exc
        log.warning(
            "%s: copied into the quarantine as %s but not removed (%s); nothing was lost",
            shown, record.id, "it was replaced after it was scanned",
        )  # fmt: skip
        copied = dataclasses.replace(record, how="copied")
        try:
            write_record(self.directory, copied)
        except OSError as exc:
            log.error("%s: cannot mark entry %s as copied: %s", shown, record.id, exc.strerror)
        return copied

    def _remove_other_name(self, opened: OpenedFile, existing: QuarantineRecord) -> None:
        """A name of a version already quarantined (a hard link, or the original
        a crash left behind): its content is safe in the entry, so moving it
        means removing this name, if it still holds that version."""
        try:
            safefs.remove_if_same(opened.path, opened.identity)
        except OSError as exc:
            raise QuarantineError(
                f"cannot remove {display_path(opened.path)}, whose content is in quarantine"
                f" entry {existing.id}: {exc.strerror}"
            ) from exc

    def _discard(self, entry_id: str) -> None:
        """Take away what a failed quarantine left: partial data, a record."""
        for path in (self.data_path(entry_id), record_path(self.directory, entry_id)):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _holds_path(self, path: str) -> bool:
        try:
            return os.path.samefile(os.path.dirname(path) or ".", self.directory)
        except OSError:
            return False

    def _fresh_ids(self, detected_at: float) -> Iterator[str]:
        for _ in range(_ID_ATTEMPTS):
            yield new_entry_id(detected_at)

    def _no_free_name(self) -> QuarantineError:
        return QuarantineError(f"{self.directory}: no free entry name after {_ID_ATTEMPTS} tries")

    def _cannot(self, opened: OpenedFile, exc: OSError) -> QuarantineError:
        reason = exc.strerror or str(exc)
        return QuarantineError(
            f"cannot quarantine {display_path(opened.path)} into {self.directory}: {reason}"
        )

    # -- restoring and deleting ---------------------------------------------------

    def restore(self, entry_id: str, to: str | None = None, *, overwrite: bool = False) -> str:
        """Write the entry back (to ``to``, else where it came from) with its owner,
        group, mode and mtime, then delete the entry. Returns the path written.

        ``to`` may be an existing directory: the file goes in it under its
        original name. An existing file is replaced only with ``overwrite``.
        """
        record = self.get(entry_id)
        data = self.data_path(entry_id)
        if not data.exists():
            raise QuarantineError(f"cannot restore {entry_id}: its content {data} is missing")
        target = record.original_path if to is None else to
        if to is not None and (os.path.isdir(target) or to.endswith("/")):
            if not os.path.isdir(target):  # "--to DIR/": a folder meant, never a new file
                raise QuarantineError(
                    f"cannot restore {entry_id} to {display_path(to)}: no such directory"
                )
            target = os.path.join(target, os.path.basename(record.original_path))
        shown = display_path(target)
        parent = os.path.dirname(target) or "."
        if not os.path.isdir(parent):
            raise QuarantineError(
                f"cannot restore {entry_id} to {shown}: the directory"
                f" {display_path(parent)} does not exist"
            )
        try:
            # Back where it came from, no link is followed below the watch's
            # root (the admin's path, links and all): an uploader could have
            # put one in place of a folder there since, to have the file
            # written (as root) wherever it points.
            if to is not None:
                dir_fd = _open_directory(parent)
            else:
                dir_fd = _open_directory(parent, trusted=_root_of(record.watch, parent))
        except OSError as exc:
            if to is None and exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise QuarantineError(
                    f"cannot restore {entry_id} to {shown}: a directory on its path below"
                    f" the watch {display_path(record.watch)} is now a symbolic link; give"
                    " --to to choose where"
                ) from exc
            raise QuarantineError(f"cannot restore {entry_id} to {shown}: {exc.strerror}") from exc
        try:
            if os.path.samestat(os.fstat(dir_fd), os.stat(self.directory)):
                raise QuarantineError(
                    f"cannot restore {entry_id} to {shown}: that is the quarantine itself"
                )
            name = os.path.basename(target)
            if not overwrite and _lexists(name, dir_fd):
                raise TargetExistsError(f"cannot restore {entry_id}: {shown} already exists")
            _restore_into(data, record, name, dir_fd, overwrite)
        except FileExistsError:  # created meanwhile: still never replaced
            raise TargetExistsError(f"cannot restore {entry_id}: {shown} already exists") from None
        except OSError as exc:
            raise QuarantineError(f"cannot restore {entry_id} to {shown}: {exc.strerror}") from exc
        except ValueError as exc:
            raise QuarantineError(f"cannot restore {entry_id}: {exc}") from exc
        finally:
            os.close(dir_fd)
        try:
            self.delete(entry_id)
        except QuarantineError as exc:
            if record_path(self.directory, entry_id).exists() or data.exists():
                log.warning("restored %s to %s, but the entry remains: %s", entry_id, shown, exc)
            # else deleted meanwhile (a delete run at the same time): gone, as it should be
        return target

    def delete(self, entry_id: str) -> None:
        """Remove the entry for good; one whose record is damaged too (it could
        never be restored, and would otherwise stay for ever)."""
        record: QuarantineRecord | None
        try:
            record = self.get(entry_id)
        except DamagedEntryError as exc:
            log.warning("%s; deleting it all the same", exc)
            record = None
        except RecordMissingError:
            log.warning("quarantine entry %s: content without its record; deleted", entry_id)
            record = None
        try:
            # the data first: a crash in between leaves a record that lists
            # (and deletes) as usual, never content without its story
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.data_path(entry_id))
            if record is not None or record_path(self.directory, entry_id).exists():
                os.unlink(record_path(self.directory, entry_id))
            fsync_directory(self.directory)
        except OSError as exc:
            raise QuarantineError(
                f"cannot delete quarantine entry {entry_id}: {exc.strerror}"
            ) from exc
        with self._lock:
            if self._index is not None and record is not None:
                indexed = self._index.get(_version_of(record))
                if indexed is not None and indexed.id == entry_id:
                    del self._index[_version_of(record)]

    def purge(self, older_than: float, now: float | None = None) -> builtins.list[str]:
        """Delete the entries detected more than ``older_than`` seconds ago."""
        return self.enforce_retention(older_than, None, now)

    def enforce_retention(
        self, max_age: float | None, max_total_size: int | None, now: float | None = None
    ) -> builtins.list[str]:
        """Delete entries, oldest first, until none is older than ``max_age``
        seconds and all together hold at most ``max_total_size`` bytes."""
        now = _clock() if now is None else now
        records = self.list()
        total = sum(record.size for record in records)
        deleted = []
        for record in records:
            too_old = max_age is not None and record.detected_at < now - max_age
            too_big = max_total_size is not None and total > max_total_size
            if not (too_old or too_big):
                break  # oldest first: every later entry is newer, and fits
            try:
                self.delete(record.id)
            except QuarantineError as exc:
                log.error("retention: %s", exc)
                continue
            total -= record.size
            deleted.append(record.id)
        return deleted


def _root_of(watch: str, parent: str) -> str:
    """The part of ``parent`` that is the watch's root (``watch``), else "/"."""
    root = watch.rstrip("/")
    return watch if root and (parent == root or parent.startswith(root + "/")) else "/"


def _open_directory(path: str, *, trusted: str | None = None) -> int:
    """The directory ``path``, open; given ``trusted`` (``path`` itself, or a
    folder above it), what lies below ``trusted`` is reached without following
    a symbolic link (ELOOP or ENOTDIR if one is there)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if trusted is None:
        return os.open(path, flags)
    fd = os.open(trusted, flags)
    try:
        for part in path[len(trusted.rstrip("/")) :].split("/"):
            if part:
                below = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _restore_into(
    data: Path, record: QuarantineRecord, name: str, dir_fd: int, overwrite: bool
) -> None:
    """Create ``name`` in the directory open as ``dir_fd`` from ``data``, through a
    temporary file beside it, so that it appears whole, with its owner, mode and
    mtime already set."""
    temporary = f".clamwatch-restore-{secrets.token_hex(6)}"
    source = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(temporary, _CREATE_FLAGS, 0o600, dir_fd=dir_fd)
    except BaseException:
        os.close(source)
        raise
    try:
        try:
            sha256 = _copy_from(source, fd)
            if sha256 != record.sha256:
                raise ValueError(
                    f"the content of {data} no longer matches its sha256 {record.sha256}"
                    " (altered or damaged); copy it by hand if you still want it"
                )
            try:
                os.fchown(fd, record.owner, record.group)
            except PermissionError as exc:
                raise PermissionError(
                    exc.errno,
                    f"cannot give it back its owner and group {record.owner}:{record.group}"
                    " (that takes root)",
                ) from exc
            os.fchmod(fd, stat.S_IMODE(record.mode))  # after fchown, which clears set-id bits
            os.utime(fd, ns=(time.time_ns(), record.mtime_ns))
            os.fsync(fd)
        finally:
            os.close(fd)
            os.close(source)
        if overwrite:
            os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            _rename_noreplace(temporary, name, dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)  # the new name durable (fsync(2) NOTES)


def _rename_noreplace(source: str, target: str, dir_fd: int) -> None:
    try:
        safefs.rename_noreplace(source, target, dir_fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        # no RENAME_NOREPLACE on this file system (NFS): link(2) never replaces either
        os.link(source, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        os.unlink(source, dir_fd=dir_fd)


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    # pread from 0: the descriptor's own offset is the scanner's business
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _copy_from(source: int, target: int) -> str:
    """Copy all of ``source`` (from offset 0) to ``target``; the sha256 of what was copied."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(source, _CHUNK, offset):
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]
        offset += len(chunk)
    return digest.hexdigest()


def _make_private_directory(directory: Path) -> None:
    """Create ``directory`` and any missing parents mode 0700; tighten it to 0700."""
    missing = []
    path = directory
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    try:
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
        st = directory.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise QuarantineError(f"quarantine directory {directory} is not a directory")
        if stat.S_IMODE(st.st_mode) != 0o700 and st.st_uid == os.geteuid():
            directory.chmod(0o700)
    except OSError as exc:
        raise QuarantineError(
            f"cannot create quarantine directory {directory}: {exc.strerror}"
        ) from exc
