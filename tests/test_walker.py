"""The walker on real directories: what it does when a directory cannot be listed."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clamwatch import files
from clamwatch.config import WatchConfig
from clamwatch.dispatch import Dispatcher, Mode, Rescan
from clamwatch.watch import walker as walker_module
from clamwatch.watch.filters import WatchFilter
from clamwatch.watch.walker import Walker

DEADLINE_SECONDS = 10.0


def walk_once(root: Path, request: Rescan) -> Dispatcher:
    """Walk ``request`` on a walker of its own; the dispatcher with what it was handed."""
    dispatcher = Dispatcher(max_pending=100, settle_time=2.0)
    filters = {str(root): WatchFilter(WatchConfig(path=root, name="uploads"))}
    walked: list[Rescan] = []
    walker = Walker(dispatcher, filters, walked.append)
    walker.start()
    try:
        dispatcher.rescan(request)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not walked:
            assert time.monotonic() < deadline, "the walk did not end"
            time.sleep(0.01)
    finally:
        walker.stop()
    return dispatcher


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "uploads"
    (root / "busy").mkdir(parents=True)
    (root / "locked").mkdir()
    for name in ("top", "busy/inner", "locked/inner"):
        (root / name).write_text(name)
    return root


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch, tree: Path) -> Iterator[dict[str, int]]:
    """Listing fails with EMFILE once for busy/, and with EACCES always for locked/
    (root reads every directory, so the errors are made here)."""
    calls: dict[str, int] = {}
    real = files.list_directory

    def list_directory(
        path: str, *, follow: bool = False, expect: tuple[int, int] | None = None
    ) -> list[tuple[str, bool | None, tuple[int, int] | None]]:
        name = os.path.basename(path)
        calls[name] = calls.get(name, 0) + 1
        if name == "busy" and calls[name] == 1:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), path)
        if name == "locked":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real(path, follow=follow, expect=expect)

    monkeypatch.setattr(walker_module, "list_directory", list_directory)
    yield calls


def test_a_directory_that_cannot_be_listed_is_said_and_walked_again_when_it_passes(
    tree: Path, failing: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="clamwatch.watch.walker"):
        dispatcher = walk_once(tree, Rescan(str(tree), str(tree), "startup scan", Mode.DUE))
    found = {work.path for work in dispatcher.take(100)}
    # busy/ failed once (too many open files) and was listed a second later
    assert found == {str(tree / "top"), str(tree / "busy" / "inner")}
    assert failing["busy"] == 2
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"cannot walk {tree / 'busy'} for now" in m for m in messages), messages
    assert any(
        f"cannot walk {tree / 'locked'}: Permission denied; the files in it are not scanned" in m
        for m in messages
    ), messages


def test_a_directory_larger_than_the_room_is_handed_over_as_room_frees(tmp_path: Path) -> None:
    """A walk hands a directory's files over in batches that fit, never past the bound."""
    root = tmp_path / "uploads"
    root.mkdir()
    names = {f"f{n:03}" for n in range(25)}
    for name in names:
        (root / name).write_text(name)
    dispatcher = Dispatcher(max_pending=10, settle_time=2.0)
    filters = {str(root): WatchFilter(WatchConfig(path=root, name="uploads"))}
    walked: list[Rescan] = []
    walker = Walker(dispatcher, filters, walked.append)
    walker.start()
    taken: list[str] = []
    try:
        dispatcher.rescan(Rescan(str(root), str(root), "new directory", Mode.SETTLE))
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not walked:
            assert time.monotonic() < deadline, "the walk did not end"
            assert dispatcher.depth <= 10  # the bound holds while the walk waits
            if dispatcher.depth == 10:
                # the pipeline's part: the files settle at their look, then are taken
                dispatcher.settle_check(os.lstat, lambda path, st: True)
                taken += [w.path for w in dispatcher.take(10)]
            time.sleep(0.005)
        dispatcher.settle_check(os.lstat, lambda path, st: True)
        taken += [w.path for w in dispatcher.take(100)]
    finally:
        walker.stop()
    assert sorted(taken) == sorted(str(root / name) for name in names)
    assert dispatcher.degraded == 0  # nothing overflowed into a rescan


def test_a_walker_waiting_for_room_stops_when_told(tmp_path: Path) -> None:
    """SIGTERM with the queue full and clamd not draining it: the daemon stops the
    walker before the dispatcher, and the walker waited for room for ever (the
    unit was killed at TimeoutStopSec, nothing saved)."""
    root = tmp_path / "uploads"
    root.mkdir()
    for number in range(25):
        (root / f"f{number:03}").write_text("x")
    dispatcher = Dispatcher(max_pending=10, settle_time=2.0)
    filters = {str(root): WatchFilter(WatchConfig(path=root, name="uploads"))}
    walker = Walker(dispatcher, filters, lambda request: None)
    walker.start()
    dispatcher.rescan(Rescan(str(root), str(root), "new directory", Mode.SETTLE))
    deadline = time.monotonic() + DEADLINE_SECONDS
    while dispatcher.depth < 10:  # full: the walk waits for room nobody makes
        assert time.monotonic() < deadline, "the walk did not fill the queue"
        time.sleep(0.005)
    stopping = threading.Thread(target=walker.stop)
    stopping.start()
    stopping.join(DEADLINE_SECONDS)
    assert not stopping.is_alive(), "the walker did not stop"


def test_a_walk_of_what_changed_takes_everything_below_a_directory_whose_ctime_is_new(
    tmp_path: Path,
) -> None:
    """A directory renamed in keeps its files' old times: only its own ctime is new.

    Below it, every file is handed over without ``newer_than`` (so scanned);
    elsewhere, files keep the walk's ``newer_than`` and are judged by their
    own times.
    """
    day = 86_400.0
    root = tmp_path / "uploads"
    (root / "stayed" / "deep").mkdir(parents=True)
    outside = tmp_path / "elsewhere" / "moved"
    (outside / "deep").mkdir(parents=True)
    for name in ("stayed/f", "stayed/deep/g"):
        (root / name).write_text(name)
    for name in ("f", "deep/g"):
        (outside / name).write_text(name)
    for path in [*root.rglob("*"), *outside.rglob("*")]:
        os.utime(path, (time.time() - day, time.time() - day))
    # every ctime so far is older than newer_than: wait the clock past it
    newer_than = time.time()
    while time.time() <= newer_than + 0.01:
        time.sleep(0.005)
    os.rename(outside, root / "moved")

    request = Rescan(str(root), str(root), "changed while not running", newer_than=newer_than)
    dispatcher = walk_once(root, request)
    handed = {work.path: work.newer_than for work in dispatcher.take(100)}
    assert handed == {
        str(root / "stayed" / "f"): newer_than,
        str(root / "stayed" / "deep" / "g"): newer_than,
        str(root / "moved" / "f"): None,
        str(root / "moved" / "deep" / "g"): None,
    }


def test_a_directory_swapped_for_a_link_is_not_walked_but_a_linked_root_is(
    tmp_path: Path,
) -> None:
    """A directory of the tree replaced by a link before its walk (here: asked
    for by its path, which is now the link) takes the walk nowhere; a watch
    whose configured root is a link is walked through it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not in the tree")
    root = tmp_path / "uploads"
    root.mkdir()
    (root / "file").write_text("in the tree")
    (root / "sub").symlink_to(outside, target_is_directory=True)
    swapped = walk_once(root, Rescan(str(root / "sub"), str(root), "new directory", Mode.DUE))
    assert swapped.take(100) == []

    linked_root = tmp_path / "linked-uploads"
    linked_root.symlink_to(root, target_is_directory=True)
    through = walk_once(
        linked_root, Rescan(str(linked_root), str(linked_root), "startup scan", Mode.DUE)
    )
    # the link inside it is still not walked: it comes as a file, for the
    # scan to report as a link not followed
    assert {work.path for work in through.take(100)} == {
        str(linked_root / "file"),
        str(linked_root / "sub"),
    }


def test_a_folder_swapped_for_a_link_during_the_walk_does_not_lead_it_out_of_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uploads/a is listed, then swapped for a link to a tree outside before
    uploads/a/b is: the path uploads/a/b now names outside/b, whose files
    (and, for a link to /, the whole system's) the walk handed over."""
    root = tmp_path / "uploads"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "inside").write_text("inside")
    outside = tmp_path / "outside"
    (outside / "b" / "deeper").mkdir(parents=True)
    (outside / "b" / "secret").write_text("secret")
    (outside / "b" / "deeper" / "more").write_text("more")
    real = files.list_directory

    def list_directory(
        path: str, *, follow: bool = False, expect: tuple[int, int] | None = None
    ) -> list[tuple[str, bool | None, tuple[int, int] | None]]:
        if (
            path == str(root / "a" / "b")
            and (root / "a").is_dir()
            and not (root / "a").is_symlink()
        ):
            (root / "a").rename(tmp_path / "a-moved")
            (root / "a").symlink_to(outside)
        return real(path, follow=follow, expect=expect)

    monkeypatch.setattr(walker_module, "list_directory", list_directory)
    dispatcher = walk_once(root, Rescan(str(root), str(root), "startup scan", Mode.DUE))
    assert (root / "a").is_symlink()  # the swap happened
    assert [work.path for work in dispatcher.take(100)] == []


def test_listing_a_folder_that_is_not_the_one_expected_is_eloop(tmp_path: Path) -> None:
    one, other = tmp_path / "one", tmp_path / "other"
    one.mkdir()
    other.mkdir()
    st = other.stat()
    with pytest.raises(OSError) as info:
        files.list_directory(str(one), expect=(st.st_dev, st.st_ino))
    assert info.value.errno == errno.ELOOP
    mine = one.stat()
    assert files.list_directory(str(one), expect=(mine.st_dev, mine.st_ino)) == []
