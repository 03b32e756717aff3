"""Everything that touches a scanned file afterwards, off the scanning path.

A small pool of worker threads applies each rule so a slow disk never stalls
the scanning; hooks run in a pool of their own with a timeout, so a hanging
hook delays only other hooks. Every action works on the descriptor that was
scanned, or on its path only after checking (safefs) that the path still
names that inode; otherwise nothing is done and the new file gets its own
scan. Each action ends in an action-done or action-failed event.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from clamwatch.config import WatchConfig
from clamwatch.eventkind import EventKind, emit
from clamwatch.events import shown
from clamwatch.files import FileIdentity, OpenedFile, drop_lease, has_writer
from clamwatch.hookproc import HookProcesses, describe_status
from clamwatch.policy import FileAction, Rule
from clamwatch.quarantine import QuarantineError, QuarantineStore
from clamwatch.safefs import (
    move_to_free_name,
    names_same_file,
    remove_if_same,
    same_size_and_mtime,
)
from clamwatch.threadnames import name_this_thread
from clamwatch.verdict import Infected, Verdict

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from clamwatch.pipeline import SeenVersions

log = logging.getLogger(__name__)

_TAG_PREFIX = "user.clamwatch."
_RETRY_QUARANTINE = 60.0  # seconds before a failed quarantine is tried again
_HOOKED_FAILURES_KEPT = 10_000  # file versions whose failure a hook was told of
_RETRY_RELEASE = 5.0  # seconds before a clean file still open for writing is scanned again
_RETRY_RELEASE_AT_MOST = 300.0  # seconds: the wait doubles each time, up to this
_RELEASE_WAITS_KEPT = 10_000  # files waiting for their writer, remembered


@dataclass(frozen=True, slots=True)
class ActionRequest:
    path: str
    watch: WatchConfig
    verdict: Verdict
    rule: Rule
    clamd_version: str | None
    opened: OpenedFile | None  # owned by the runner from now on: it closes it


@dataclass(slots=True)
class _Done:
    """A file action's end, for the hook: done, or failed (``error``)."""

    quarantine_id: str | None = None
    released_to: str | None = None
    error: str | None = None  # "move failed: ..." when the file action failed


def _key(request: ActionRequest) -> tuple[str, str]:
    return (request.path, str(request.watch.path))


class ActionRunner:
    def __init__(
        self,
        store: QuarantineStore | None,
        retry: Callable[[str, str, float], None],
        workers: int = 4,
        hook_workers: int = 4,
    ) -> None:
        self.store = store
        self.retry = retry  # (path, watch root, delay): scan again later, then act again
        self._pool = ThreadPoolExecutor(
            workers, thread_name_prefix="clamwatch-action", initializer=name_this_thread
        )
        self._hooks = ThreadPoolExecutor(
            hook_workers, thread_name_prefix="clamwatch-hook", initializer=name_this_thread
        )
        self._no_xattrs: set[int] = set()  # devices already reported without user xattrs
        # (dev, ino) -> st_mode before chmod_on_failure made the file 000: its
        # quarantine entry, once the quarantine works, records the file's own
        # mode, which a restore gives back (not 000)
        self._modes_before_lock_up: dict[tuple[int, int], int] = {}
        # file version -> the error its file action failed with, when its hook
        # ran for it: a quarantine that stays full is tried again every
        # minute, and the hook (a mail to the admin) is not run again for the
        # same failure of the same version
        self._hooked_failures: dict[tuple[int, int, int, int], str] = {}
        # (path, dev, ino) -> times a release found it still open for writing
        self._release_waits: dict[tuple[str, int, int], int] = {}
        self._lock = threading.Lock()
        self._hook_processes = HookProcesses()
        self._closing = threading.Event()
        # (path, watch root) of the requests not yet ended, hooks included:
        # their verdicts are reported and the dispatcher is done with them, so
        # only this says they are still to do (see acting)
        self._acting: collections.Counter[tuple[str, str]] = collections.Counter()
        # the pipeline's versions with a verdict (set by Pipeline): a tag sets
        # the file's ctime, and the version it makes is the scanned one too
        self.seen: SeenVersions | None = None

    def submit(self, request: ActionRequest) -> None:
        key = _key(request)
        with self._lock:
            self._acting[key] += 1
        try:
            self._pool.submit(self._run, request)
        except BaseException:
            self._ended(request)
            raise

    def acting(self) -> list[tuple[str, str]]:
        """(path, watch root) of each file whose actions (hook included) have not ended.

        The state saved at a checkpoint lists them with what is still to
        scan: the coverage it saves reaches past their verdicts, so after a
        crash only that list gets them scanned, and acted on, again (an
        infected file's move or hook was lost with the crash, its file left
        where it was).
        """
        with self._lock:
            return list(self._acting)

    def _ended(self, request: ActionRequest) -> None:
        key = _key(request)
        with self._lock:
            self._acting[key] -= 1
            if self._acting[key] <= 0:
                del self._acting[key]

    def close(self) -> None:
        """Finish the file actions; kill running hooks (with their children) and
        leave queued ones unrun, each with an action-failed event naming the file."""
        self._pool.shutdown(wait=True)
        self._closing.set()
        self._hook_processes.kill_all()
        self._hooks.shutdown(wait=True)

    # -- one request ------------------------------------------------------------------

    def _run(self, request: ActionRequest) -> None:
        handed_on = False  # to the hook, which ends the request
        try:
            if request.rule.tag:
                self._tag(request)
            done = self._file_action(request)
            if request.rule.hook and done is not None:
                if self._hooked_before(request, done):
                    log.info(
                        "%s: %s again; its hook ran at the first failure",
                        request.path, done.error,
                    )  # fmt: skip
                else:
                    self._hooks.submit(self._hook_and_end, request, done)
                    handed_on = True
        except Exception:
            log.exception("action on %s failed unexpectedly", request.path)
        finally:
            if request.opened is not None:
                request.opened.close()
            if not handed_on:
                self._ended(request)

    def _release_wait(self, path: str, identity: FileIdentity) -> tuple[float, bool]:
        """How long before a file still open for writing is looked at again, and
        whether this is the first time (the one an event is sent for).

        5 s, then twice as long each time up to 5 min: a file its uploader
        holds open for hours (a slow upload, or on purpose) was scanned, and
        an event sent, every 5 s for as long.
        """
        key = (path, identity.dev, identity.ino)
        with self._lock:
            tries = self._release_waits.pop(key, 0)
            self._release_waits[key] = tries + 1  # to the end: the oldest go first
            if len(self._release_waits) > _RELEASE_WAITS_KEPT:
                del self._release_waits[next(iter(self._release_waits))]
        return min(_RETRY_RELEASE * 2**tries, _RETRY_RELEASE_AT_MOST), tries == 0

    def _hooked_before(self, request: ActionRequest, done: _Done) -> bool:
        """Whether this version's file action failed so before, and its hook ran then."""
        if request.opened is None:
            return False
        identity = request.opened.identity
        key = (identity.dev, identity.ino, identity.size, identity.mtime_ns)
        with self._lock:
            if done.error is None:
                self._hooked_failures.pop(key, None)
                return False
            if self._hooked_failures.get(key) == done.error:
                return True
            self._hooked_failures[key] = done.error
            if len(self._hooked_failures) > _HOOKED_FAILURES_KEPT:
                del self._hooked_failures[next(iter(self._hooked_failures))]  # the oldest
            return False

    def _hook_and_end(self, request: ActionRequest, done: _Done) -> None:
        try:
            self._hook(request, done)
        except Exception:
            log.exception("hook for %s failed unexpectedly", request.path)
        finally:
            self._ended(request)

    def _fields(self, request: ActionRequest, action: str) -> dict[str, object]:
        signature = request.verdict.signature if isinstance(request.verdict, Infected) else None
        name = request.watch.name
        return {
            "path": request.path,
            "watch": str(request.watch.path),
            "watch_name": name if name != str(request.watch.path) else None,
            "verdict": request.verdict.kind,
            "signature": signature,
            "action": action,
        }

    def _failed(self, request: ActionRequest, action: str, message: str) -> _Done:
        """Report ``action`` as failed; its end, for a hook to hear of."""
        emit(
            EventKind.ACTION_FAILED,
            f"{shown(request.path)}: {action} failed: {message}",
            logging.ERROR,
            error=message,
            **self._fields(request, action),
        )
        return _Done(error=f"{action} failed: {message}")

    # -- tag ----------------------------------------------------------------------------

    def _tag(self, request: ActionRequest) -> None:
        opened = request.opened
        if opened is None:
            log.debug("%s: nothing open to tag", request.path)
            return
        verdict = request.verdict
        tags = {
            "verdict": verdict.kind,
            "scanned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "database": request.clamd_version or "",
        }
        if isinstance(verdict, Infected):
            tags["signature"] = verdict.signature
        # A read lease, while no one has it open for writing: whoever opens it
        # to write now waits until it is dropped, so the tagged content is
        # the scanned one, and the version (ctime) the tags make is seen too
        held = has_writer(opened.fd, keep=True) is False
        try:
            if not names_same_file(os.fstat(opened.fd), opened.identity):
                # written to since its scan: the verdict is not the new content's,
                # which has its own scan coming (its close, or settle_time)
                log.info("%s changed since its scan; not tagged", request.path)
                return
            for name, value in tags.items():
                # on the descriptor: the scanned inode, whatever the path names now
                os.setxattr(opened.fd, _TAG_PREFIX + name, value.encode("utf-8", "surrogateescape"))
            if "signature" not in tags:
                # an earlier version's detection must not stay beside "clean"
                try:
                    os.removexattr(opened.fd, _TAG_PREFIX + "signature")
                except OSError as exc:
                    if exc.errno != errno.ENODATA:  # none there
                        raise
            self._tagged(request, opened, held)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                with self._lock:
                    first = opened.identity.dev not in self._no_xattrs
                    self._no_xattrs.add(opened.identity.dev)
                if first:
                    self._failed(
                        request,
                        "tag",
                        "the file system does not support user extended attributes"
                        " (reported once per file system)",
                    )
                return
            self._failed(request, "tag", exc.strerror or str(exc))
            return
        finally:
            if held:
                drop_lease(opened.fd)
        emit(
            EventKind.ACTION_DONE,
            f"{shown(request.path)}: tagged {verdict.kind}",
            logging.INFO,
            **self._fields(request, "tag"),
        )

    def _tagged(self, request: ActionRequest, opened: OpenedFile, held: bool) -> None:
        """The scanned file's identity after its tags, which set its ctime: what
        the file action and hook after them check the file by.

        Under the lease (``held``) no write can have come between the check
        and the tags, so the new version is the scanned one, and its close
        (a late event) is not scanned again. Without it (a writer has the
        file open) a write in between could have set the mtime back: the
        file action goes by size and mtime, as before the ctime was
        compared, and the close is scanned.
        """
        st = os.fstat(opened.fd)
        if not same_size_and_mtime(st, opened.identity):
            return
        opened.identity = FileIdentity(st)
        if held and self.seen is not None:
            self.seen.add(self.seen.key_of(request.path, opened.identity))

    # -- file actions -------------------------------------------------------------------

    def _file_action(self, request: ActionRequest) -> _Done | None:
        """Apply the rule's file action; None when it did not apply (the file was
        replaced, or it is to be tried again after a new scan)."""
        action = request.rule.file_action
        if action is FileAction.NONE:
            return _Done()
        opened = request.opened
        if opened is None:
            return self._failed(
                request, action.value, "the file was not opened, so it is left alone"
            )
        if action in (FileAction.MOVE, FileAction.COPY):
            return self._quarantine(request, opened, keep=action is FileAction.COPY)
        if action is FileAction.REMOVE:
            return self._remove(request, opened)
        return self._release(request, opened)

    def _quarantine(self, request: ActionRequest, opened: OpenedFile, keep: bool) -> _Done | None:
        action = "copy" if keep else "move"
        if self.store is None:
            return self._failed(request, action, "no quarantine is configured")
        verdict = request.verdict
        signature = verdict.signature if isinstance(verdict, Infected) else verdict.kind
        try:
            record = self.store.quarantine(
                opened,
                signature=signature,
                clamd_version=request.clamd_version,
                watch=str(request.watch.path),
                keep_original=keep,
                mode=self._mode_before_lock_up(opened.identity),
            )
        except QuarantineError as exc:
            failed = self._failed(request, action, f"{exc}; the file stays where it is")
            if request.watch.chmod_on_failure and not keep:
                self._lock_up(request, opened)
            self.retry(request.path, str(request.watch.path), _RETRY_QUARANTINE)
            return failed
        if record is None:
            log.info("%s was replaced before it could be quarantined; left alone", request.path)
            return None
        if not keep:
            with self._lock:
                self._modes_before_lock_up.pop((opened.identity.dev, opened.identity.ino), None)
        if record.how == "copied" and not keep:
            # the original could not be removed (replaced meanwhile): it stays
            log.warning("%s: copied to the quarantine, the original was replaced", request.path)
        emit(
            EventKind.ACTION_DONE,
            f"{shown(request.path)}: {record.how} to the quarantine as {record.id}",
            logging.WARNING,
            quarantine_id=record.id,
            **self._fields(request, action),
        )
        return _Done(quarantine_id=record.id)

    def _mode_before_lock_up(self, identity: FileIdentity) -> int | None:
        """The mode a file had before :meth:`_lock_up`, while it still has none."""
        key = (identity.dev, identity.ino)
        with self._lock:
            if stat.S_IMODE(identity.mode) != 0:  # given a mode again since
                self._modes_before_lock_up.pop(key, None)
                return None
            return self._modes_before_lock_up.get(key)

    def _lock_up(self, request: ActionRequest, opened: OpenedFile) -> None:
        identity = opened.identity
        with self._lock:  # the first lock-up's: the file is 000 at the next try
            self._modes_before_lock_up.setdefault((identity.dev, identity.ino), identity.mode)
        try:
            os.fchmod(opened.fd, 0)  # the scanned inode, not whatever the path names
        except OSError as exc:
            self._failed(request, "chmod 000", exc.strerror or str(exc))
            return
        emit(
            EventKind.ACTION_DONE,
            f"{shown(request.path)}: made unreadable (chmod 000) until it can be quarantined",
            logging.WARNING,
            **self._fields(request, "chmod 000"),
        )

    def _remove(self, request: ActionRequest, opened: OpenedFile) -> _Done | None:
        try:
            removed = remove_if_same(request.path, opened.identity)
        except OSError as exc:
            return self._failed(request, "remove", exc.strerror or str(exc))
        if not removed:
            log.info("%s was replaced before it could be removed; left alone", request.path)
            return None
        emit(
            EventKind.ACTION_DONE,
            f"{shown(request.path)}: removed",
            logging.WARNING,
            **self._fields(request, "remove"),
        )
        return _Done()

    def _release(self, request: ActionRequest, opened: OpenedFile) -> _Done | None:
        destination_root = request.watch.release_to
        assert destination_root is not None  # the configuration insists
        if has_writer(opened.fd):
            # scanned once it had held still (settle_time), its writer not
            # done: released, it would be written on out of the watch, unscanned
            delay, first = self._release_wait(request.path, opened.identity)
            if first:
                emit(
                    EventKind.ACTION_FAILED,
                    f"{shown(request.path)}: not released yet: it is still open for writing;"
                    " released once its writer closes it",
                    logging.INFO,
                    error="still open for writing",
                    **self._fields(request, "release"),
                )
            else:
                log.debug(
                    "%s: still open for writing; looked at again in %g s", request.path, delay
                )
            # its close is an event, and scanned; this is for a close lost
            # with an overflowed queue, less and less often
            self.retry(request.path, str(request.watch.path), delay)
            return None
        with self._lock:
            self._release_waits.pop((request.path, opened.identity.dev, opened.identity.ino), None)
        try:
            links = os.fstat(opened.fd).st_nlink
        except OSError as exc:
            return self._failed(request, "release", exc.strerror or str(exc))
        if links > 1:
            # moved out, it could still be changed through its other names
            return self._failed(
                request,
                "release",
                f"it has {links} hard links, through which it could be changed after its"
                " scan; not released",
            )
        relative = os.path.relpath(request.path, request.watch.path)
        target = os.path.join(destination_root, relative)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            # target.1, .2, ... if taken; replaced meanwhile after the copy:
            # the copy stays released, the new file is scanned anew. Copied
            # on the same file system too: renamed, the released file was the
            # uploaded inode, which its uploader reopened for writing through
            # a descriptor kept of it (O_PATH, /proc/self/fd), unscanned
            moved_to = move_to_free_name(
                request.path,
                opened,
                target,
                "{}.{}",
                opened.identity.mode & 0o7777,
                keep_copy=True,
                keep_owner=True,
                rename=False,
                resume=True,  # a copy a crash left before the original's removal
            )
        except OSError as exc:
            return self._failed(request, "release", exc.strerror or str(exc))
        if moved_to is None:
            # written to, or only renamed or given another mode (which set its
            # ctime, and no event tells of a chmod): the new version is scanned
            log.info("%s changed before it could be released; scanned again", request.path)
            self.retry(request.path, str(request.watch.path), _RETRY_RELEASE)
            return None
        emit(
            EventKind.ACTION_DONE,
            f"{shown(request.path)}: released to {shown(moved_to)}",
            logging.INFO,
            released_to=moved_to,
            **self._fields(request, "release"),
        )
        return _Done(released_to=moved_to)

    # -- hook ---------------------------------------------------------------------------

    @staticmethod
    def _written_since(request: ActionRequest) -> bool:
        """The path, left where it was, now names other content than was scanned.

        A hook goes by the path: one that publishes a clean file, or deletes
        an infected one, would act on content this verdict is not about. That
        content has a scan of its own coming (its close, or settle_time), and
        that scan's hook. A file gone from the path has none: its hook runs.
        """
        if request.rule.file_action is not FileAction.NONE or request.opened is None:
            return False  # moved, removed, released or copied from the scanned inode
        try:
            st = os.lstat(request.path)
        except OSError:
            return False
        return not names_same_file(st, request.opened.identity)

    def _hook(self, request: ActionRequest, done: _Done) -> None:
        verdict = request.verdict
        env = dict(os.environ)
        env.update(
            {
                "CLAMWATCH_PATH": request.path,
                "CLAMWATCH_VERDICT": verdict.kind,
                "CLAMWATCH_SIGNATURE": verdict.signature if isinstance(verdict, Infected) else "",
                "CLAMWATCH_ACTION": " ".join(request.rule.words),
                "CLAMWATCH_QUARANTINE_ID": done.quarantine_id or "",
                "CLAMWATCH_RELEASED_TO": done.released_to or "",
                "CLAMWATCH_ACTION_ERROR": done.error or "",
                "CLAMWATCH_WATCH": str(request.watch.path),
                "CLAMWATCH_WATCH_NAME": request.watch.name,
                "CLAMWATCH_CLAMD_VERSION": request.clamd_version or "",
            }
        )
        argv = list(request.watch.hook)
        if self._written_since(request):
            log.info("%s changed since its scan; its hook is left to the new scan", request.path)
            return
        if self._closing.is_set():
            self._failed(request, "hook", f"{argv[0]} was not run: clamwatch stopped first")
            return
        timeout = request.watch.hook_timeout
        try:
            end = self._hook_processes.run(argv, env, timeout)
        except OSError as exc:
            self._failed(request, "hook", f"{argv[0]}: {exc.strerror or exc}")
            return
        if end.status is None:
            self._failed(request, "hook", f"{argv[0]} ran longer than {timeout:g} s and was killed")
            return
        if end.status < 0 and self._closing.is_set():
            self._failed(request, "hook", f"{argv[0]} was killed: clamwatch is stopping")
            return
        if end.status != 0:
            detail = end.last_line
            self._failed(
                request,
                "hook",
                f"{argv[0]} {describe_status(end.status)}" + (f": {detail}" if detail else ""),
            )
            return
        message = f"{shown(request.path)}: hook {argv[0]} ran"
        emit(EventKind.ACTION_DONE, message, logging.INFO, **self._fields(request, "hook"))
