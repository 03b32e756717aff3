"""clamwatch.walk, `clamwatch scan`'s walk: order, and paths changed under it while it runs.

The walk is a generator: each test takes items one by one and changes the
tree between two of them, exactly where a race would.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from clamwatch import walk as walk_module
from clamwatch.excludepath import ExcludePaths
from clamwatch.files import OpenedFile, open_for_scan
from clamwatch.verdict import NotScanned, NotScannedReason, Verdict
from clamwatch.walk import ListedFile, WalkItem, walk

LINK_NOT_FOLLOWED = NotScanned(NotScannedReason.SYMLINK, "symbolic link not followed")


def _open(item: WalkItem) -> OpenedFile:
    """Open a listed file as `clamwatch scan` does."""
    assert isinstance(item, ListedFile), item
    opened = open_for_scan(item.path, listed_regular=item.regular, within=(item.dir_fd, item.name))
    assert isinstance(opened, OpenedFile), opened
    return opened


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_files_in_name_order_then_subdirectories(tmp_path: Path) -> None:
    for name in ("b/2", "b/1", "a/x/3", "z", "c"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"clean")
    (tmp_path / "link").symlink_to(tmp_path / "z")
    paths = [item.path for item in walk([f"{tmp_path}/"]) if isinstance(item, ListedFile)]
    assert paths == [f"{tmp_path}/{name}" for name in ("c", "link", "z", "a/x/3", "b/1", "b/2")]


def test_named_paths_missing_and_unreadable(tmp_path: Path) -> None:
    """A named path that is not there was never seen: no "vanished" race in its
    message. A path whose lstat fails otherwise comes as a path, for the
    opener to report."""
    (tmp_path / "file").write_bytes(b"clean")
    (tmp_path / "loop").symlink_to("loop")
    missing = NotScanned(NotScannedReason.VANISHED, "no such file or directory")
    not_a_folder = NotScanned(
        NotScannedReason.VANISHED,
        "no such file or directory: a name on its path is a file, not a folder",
    )
    named = [f"{tmp_path}/{name}" for name in ("nowhere", "file/below", "loop/x")]
    assert list(walk(named)) == [
        (named[0], missing),
        (named[1], not_a_folder),  # ENOTDIR: a file where a folder was meant
        named[2],  # ELOOP: the open says so
    ]
    assert open_for_scan(named[2]) == LINK_NOT_FOLLOWED


def test_named_links_are_followed_under_their_own_names(tmp_path: Path) -> None:
    """As by clamdscan and clamscan's default: the admin named them. Links
    found below them are not followed."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inside").write_bytes(b"inside")
    (tmp_path / "dir" / "inner-link").symlink_to(tmp_path / "file")
    (tmp_path / "file").write_bytes(b"file")
    (tmp_path / "dirlink").symlink_to(tmp_path / "dir", target_is_directory=True)
    (tmp_path / "filelink").symlink_to("file")  # relative, as ln -s makes them
    (tmp_path / "chain").symlink_to("filelink")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("nothing")
    names = ("dirlink", "filelink", "chain", "loop", "dangling")
    items = list(walk([f"{tmp_path}/{name}" for name in names]))
    assert [item.path if isinstance(item, ListedFile) else item for item in items] == [
        f"{tmp_path}/dirlink/inner-link",
        f"{tmp_path}/dirlink/inside",
        f"{tmp_path}/filelink",
        f"{tmp_path}/chain",
        (
            f"{tmp_path}/loop",
            NotScanned(NotScannedReason.SYMLINK, "symbolic link loop, not followed"),
        ),
        (
            f"{tmp_path}/dangling",
            NotScanned(NotScannedReason.SYMLINK, "symbolic link to nothing that exists"),
        ),
    ]
    before = _open_fds()
    contents: list[tuple[str, bytes | Verdict]] = []
    for item in walk([f"{tmp_path}/{name}" for name in names[:3]]):
        assert isinstance(item, ListedFile)
        opened = open_for_scan(
            item.path, listed_regular=item.regular, within=(item.dir_fd, item.name)
        )
        if isinstance(opened, OpenedFile):
            contents.append((item.path, os.pread(opened.fd, 64, 0)))
            opened.close()
        else:
            contents.append((item.path, opened))
    assert contents == [
        (f"{tmp_path}/dirlink/inner-link", LINK_NOT_FOLLOWED),
        (f"{tmp_path}/dirlink/inside", b"inside"),
        (f"{tmp_path}/filelink", b"file"),
        (f"{tmp_path}/chain", b"file"),
    ]
    assert _open_fds() == before


def test_a_directory_swapped_for_a_link_after_its_listing_is_not_walked(tmp_path: Path) -> None:
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "f").write_bytes(b"clean")
    (tree / "b").mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"not under the tree")
    items = walk([str(tree)])
    first = next(items)  # tree is listed and a is being walked: b is yet to be opened
    assert isinstance(first, ListedFile) and first.path == f"{tree}/a/f"
    (tree / "b").rmdir()
    (tree / "b").symlink_to(outside, target_is_directory=True)
    second = next(items)
    assert isinstance(second, ListedFile) and second.path == f"{tree}/b"
    assert open_for_scan(second.path, within=(second.dir_fd, second.name)) == LINK_NOT_FOLLOWED
    assert list(items) == []  # nothing from outside/


def test_a_directory_swapped_for_a_file_after_its_listing_is_scanned_as_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"clean")
    (tmp_path / "b").mkdir()
    items = walk([str(tmp_path)])
    _open(next(items)).close()
    (tmp_path / "b").rmdir()
    (tmp_path / "b").write_bytes(b"now a file")
    second = next(items)
    opened = _open(second)
    try:
        assert opened.path == f"{tmp_path}/b" and opened.identity.size == len(b"now a file")
    finally:
        opened.close()
    assert list(items) == []


def test_a_directory_moved_away_while_walked_is_still_the_one_read(tmp_path: Path) -> None:
    """Its files are opened through its own descriptor: a link put in its place is never used."""
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    (tree / "a").mkdir(parents=True)
    for name in ("1", "2"):
        (tree / "a" / name).write_bytes(b"clean")
    (outside / "a").mkdir(parents=True)
    (outside / "a" / "2").write_bytes(b"not under the tree")
    original = os.stat(tree / "a" / "2").st_ino
    items = walk([str(tree)])
    _open(next(items)).close()
    (tree / "a").rename(tree / "moved")
    (tree / "a").symlink_to(outside / "a", target_is_directory=True)
    second = next(items)
    assert isinstance(second, ListedFile) and second.path == f"{tree}/a/2"
    opened = _open(second)
    try:
        assert opened.identity.ino == original
    finally:
        opened.close()
    assert list(items) == []


def test_a_file_swapped_for_a_link_after_its_listing_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"clean")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "target").write_bytes(b"not this one")
    items = walk([str(tmp_path)])
    item = next(items)
    assert isinstance(item, ListedFile) and item.regular
    (tmp_path / "f").unlink()
    (tmp_path / "f").symlink_to(tmp_path / "other" / "target")
    within = (item.dir_fd, item.name)
    verdict = open_for_scan(item.path, listed_regular=item.regular, within=within)
    assert verdict == LINK_NOT_FOLLOWED
    items.close()


def test_closing_the_walk_early_closes_every_directory_it_held(tmp_path: Path) -> None:
    deep = tmp_path / "1" / "2" / "3" / "4"
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"clean")
    before = _open_fds()
    items = walk([str(tmp_path)])
    assert isinstance(next(items), ListedFile)
    assert _open_fds() == before + 5  # the named directory and the four below it
    items.close()
    assert _open_fds() == before
    assert list(walk([str(tmp_path)])) != []  # a walk to its end closes them too
    assert _open_fds() == before


def test_proc_is_left_out_of_a_tree_and_named_is_not_scanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A procfs mounted inside the tree is not walked, as clamd's own walk skips it
    (its files say size 0: clamd would scan nothing of them); a path on it named
    on the command line is reported as not scanned, never OK."""
    if os.geteuid() != 0:
        pytest.skip("mounting a procfs needs root")
    (tmp_path / "tree" / "proc").mkdir(parents=True)
    (tmp_path / "tree" / "file").write_bytes(b"clean")
    subprocess.run(["mount", "-t", "proc", "proc", str(tmp_path / "tree" / "proc")], check=True)
    monkeypatch.setattr(walk_module, "_procfs", None)  # the mounts, read again
    try:
        items = list(walk([str(tmp_path / "tree")]))
        named = list(walk([f"{tmp_path}/tree/proc/self/status", f"{tmp_path}/tree/proc/sys"]))
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "tree" / "proc")], check=False)
    assert [item.path for item in items if isinstance(item, ListedFile)] == [
        f"{tmp_path}/tree/file"
    ]
    assert [item for item in items if not isinstance(item, ListedFile)] == []
    assert [item[0] for item in named if isinstance(item, tuple)] == [
        f"{tmp_path}/tree/proc/self/status",
        f"{tmp_path}/tree/proc/sys",
    ]
    for item in named:
        assert isinstance(item, tuple)
        _, verdict = item
        assert isinstance(verdict, NotScanned) and verdict.reason is NotScannedReason.EXCLUDED
        assert verdict.detail.startswith("on /proc, which clamd leaves out of its own scans")


def test_a_directory_left_out_is_left_out_under_a_bind_mount_too(tmp_path: Path) -> None:
    """scan's --move directory inside the tree, the tree scanned through a bind
    mount of it: the directory is met under another path, which no real-path
    match catches (files already there were moved again, to NAME.001...)."""
    if os.geteuid() != 0:
        pytest.skip("a bind mount needs root")
    (tmp_path / "tree" / "q").mkdir(parents=True)
    (tmp_path / "tree" / "q" / "moved-before").write_bytes(b"bad")
    (tmp_path / "tree" / "new").write_bytes(b"bad")
    (tmp_path / "view").mkdir()
    exclude = ExcludePaths()
    exclude.add_directory(str(tmp_path / "tree" / "q"), "the --move directory")
    subprocess.run(["mount", "--bind", str(tmp_path / "tree"), str(tmp_path / "view")], check=True)
    try:
        items = list(walk([str(tmp_path / "view")], exclude))
        named = list(walk([str(tmp_path / "view" / "q")], exclude))  # named: walked
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "view")], check=False)
    assert [item.path for item in items if isinstance(item, ListedFile)] == [f"{tmp_path}/view/new"]
    assert [item.path for item in named if isinstance(item, ListedFile)] == [
        f"{tmp_path}/view/q/moved-before"
    ]
