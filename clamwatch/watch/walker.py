"""Walking directories again: new directories, moved-in trees, overflow and startup scans.

Runs on its own thread ("clamwatch-walk") so a large tree never stalls the
watcher; it hands each directory's files to the dispatcher only as far as
there is room, so a walk of a million files holds one directory listing in
memory, not a million paths.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable

from clamwatch.dispatch import Dispatcher, Rescan, Work
from clamwatch.files import PATH_TOO_LONG, list_directory
from clamwatch.threadnames import name_this_thread
from clamwatch.watch.filters import WatchFilter

log = logging.getLogger(__name__)

# Errors that pass by themselves (descriptors or memory run short for a
# moment): the directory is walked again after a pause, not passed over.
_FOR_NOW = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
_RETRY_FOR_NOW = 1.0  # seconds


class Walker:
    def __init__(
        self,
        dispatcher: Dispatcher,
        filters: dict[str, WatchFilter],
        on_walked: Callable[[Rescan], None] = lambda request: None,
    ) -> None:
        self.dispatcher = dispatcher
        self.filters = filters
        self.on_walked = on_walked
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clamwatch-walk", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.dispatcher.cond:
            self.dispatcher.cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        name_this_thread()
        while not self._stop.is_set():
            request = self.dispatcher.next_rescan()
            if request is None:
                self.dispatcher.wait_for_rescan(0.25)
                continue
            try:
                if self._walk(request):
                    self.on_walked(request)
                else:
                    self.dispatcher.rescan(request)  # stopped midway: saved for the next start
            finally:
                self.dispatcher.walk_ended(request)

    def _walk(self, request: Rescan) -> bool:
        rules = self.filters.get(request.watch)
        if rules is None:
            return True
        # each directory with the newer_than its files are judged by
        stack: list[tuple[str, float | None, tuple[int, int] | None]] = [
            (request.directory, request.newer_than, None)
        ]
        while stack:
            directory, newer_than, expect = stack.pop()
            try:
                # a link is followed only as the watch's root itself; below
                # the start, each folder must be the one its parent listed
                listed = list_directory(directory, follow=directory == request.watch, expect=expect)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue  # gone, or swapped for a file or a link, meanwhile
                if exc.errno in _FOR_NOW:
                    log.warning(
                        "cannot walk %s for now: %s; trying again in %.0f s",
                        directory, exc.strerror, _RETRY_FOR_NOW,
                    )  # fmt: skip
                    if self._stop.wait(_RETRY_FOR_NOW):
                        return False
                    stack.append((directory, newer_than, expect))
                    continue
                if exc.errno == errno.ENAMETOOLONG:
                    log.error("cannot walk %s: %s", directory, PATH_TOO_LONG)
                    continue
                log.warning(
                    "cannot walk %s: %s; the files in it are not scanned until it can be"
                    " (the next walk of its tree, a restart)",
                    directory, exc.strerror,
                )  # fmt: skip
                continue
            files: list[str] = []
            for path, is_directory, directory_id in listed:
                if is_directory is None:
                    continue  # gone meanwhile
                if is_directory:
                    # globs and regexes judge files, as for events; only
                    # our own folders are pruned whole
                    if not rules.own_folder(path):
                        stack.append((path, _below(path, newer_than), directory_id))
                    continue
                if not rules.excluded(path):
                    files.append(path)
            if not self._hand_over(files, request, newer_than):
                return False
        return True

    def _hand_over(self, files: list[str], request: Rescan, newer_than: float | None) -> bool:
        """Give a directory's files to the dispatcher, as many at a time as it has room for.

        One lock and one wake-up of the pipeline for each batch, not each file.
        False when stopped meanwhile.
        """
        done = 0
        while done < len(files):
            if self._stop.is_set():
                return False
            room = self.dispatcher.wait_for_room(self._stop)
            if not room:
                return False
            since = time.monotonic()
            batch = [
                Work(
                    path,
                    request.watch,
                    since,
                    request.reason,
                    if_changed=request.if_changed,
                    newer_than=newer_than,
                )
                for path in files[done : done + room]
            ]
            self.dispatcher.walked(batch, request.mode)
            done += len(batch)
        return True


def _below(directory: str, newer_than: float | None) -> float | None:
    """The newer_than for everything below ``directory``.

    A walk of what changed while clamwatch was not running skips a file
    whose mtime and ctime are both older than ``newer_than``. A directory
    renamed into the tree meanwhile brings files and folders whose times
    are all old: only the directory's own ctime is new. Once anything else
    has changed in it (a file added sets its mtime and ctime together), a
    rename no longer shows apart from that. So below a directory whose
    ctime is newer than ``newer_than`` every file is scanned: some files
    are scanned again that did not need it, and none is missed.
    """
    if newer_than is None:
        return None
    try:
        st = os.lstat(directory)
    except OSError:
        return newer_than  # gone meanwhile: its listing will say so
    return None if st.st_ctime >= newer_than else newer_than
