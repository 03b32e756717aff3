"""--move, --copy and --remove of `clamwatch scan`: only ever the scanned inode."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from clamwatch import safefs
from clamwatch.files import OpenedFile, open_for_scan
from clamwatch.scan_actions import ActionError, ScanAction
from clamwatch.walk import ListedFile, walk


def opened(path: Path) -> OpenedFile:
    result = open_for_scan(str(path))
    assert isinstance(result, OpenedFile), result
    return result


def opened_as_named(path: Path) -> OpenedFile:
    """``path`` opened as `clamwatch scan PATH` opens it: a link is followed."""
    walking = walk([str(path)])
    item = next(walking)
    assert isinstance(item, ListedFile), item
    result = open_for_scan(item.path, listed_regular=item.regular, within=(item.dir_fd, item.name))
    walking.close()
    assert isinstance(result, OpenedFile), result
    return result


def test_move_takes_the_first_free_name_and_never_replaces(tmp_path: Path) -> None:
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "x.com").write_bytes(b"taken")
    (tmp_path / "q" / "x.com.001").write_bytes(b"taken too")
    path = tmp_path / "x.com"
    path.write_bytes(b"bad")
    file = opened(path)
    note = ScanAction("move", str(tmp_path / "q")).apply(file)
    file.close()
    assert note == (f"moved to '{tmp_path}/q/x.com.002'", True)
    assert not path.exists() and (tmp_path / "q" / "x.com.002").read_bytes() == b"bad"
    assert (tmp_path / "q" / "x.com").read_bytes() == b"taken"


@pytest.mark.parametrize("kind", ["move", "remove"])
def test_a_file_replaced_since_its_scan_is_left_alone(tmp_path: Path, kind: str) -> None:
    (tmp_path / "q").mkdir()
    path = tmp_path / "x.com"
    path.write_bytes(b"bad")
    file = opened(path)
    path.unlink()
    path.write_bytes(b"a new upload, not scanned")  # another inode under the name
    action = ScanAction(kind, str(tmp_path / "q") if kind == "move" else None)
    note = action.apply(file)
    file.close()
    done = "moved" if kind == "move" else "removed"
    assert note == (f"not {done}: it changed or was moved since it was scanned", False)
    assert path.read_bytes() == b"a new upload, not scanned"
    assert os.listdir(tmp_path / "q") == []


def test_copy_is_made_from_the_scanned_descriptor_private(tmp_path: Path) -> None:
    (tmp_path / "q").mkdir()
    path = tmp_path / "x.com"
    path.write_bytes(b"bad")
    path.chmod(0o755)
    file = opened(path)
    path.unlink()  # gone by name: the descriptor still holds what was scanned
    note = ScanAction("copy", str(tmp_path / "q")).apply(file)
    file.close()
    copy = tmp_path / "q" / "x.com"
    assert note == (f"copied to '{copy}'", True)
    assert copy.read_bytes() == b"bad" and copy.stat().st_mode & 0o777 == 0o600


def test_a_move_to_another_file_system_copies_then_removes(
    tmp_path: Path, tmpfs: Callable[..., None]
) -> None:
    tmpfs(tmp_path / "q", "1M")
    path = tmp_path / "x.com"
    path.write_bytes(b"bad")
    file = opened(path)
    note = ScanAction("move", str(tmp_path / "q")).apply(file)
    file.close()
    assert note == (f"moved to '{tmp_path}/q/x.com'", True)
    assert not path.exists() and (tmp_path / "q" / "x.com").read_bytes() == b"bad"


def test_a_move_to_another_file_system_that_cannot_remove_leaves_no_copy(
    tmp_path: Path, tmpfs: Callable[..., None]
) -> None:
    """The copy is made, the original cannot go (an immutable folder, which
    root cannot write either): the file stays, with no copy of it in DIR,
    as the line says (each try left one more, NAME.001 and on)."""
    tmpfs(tmp_path / "q", "1M")
    folder = tmp_path / "uploads"
    folder.mkdir()
    path = folder / "x.com"
    path.write_bytes(b"bad")
    file = opened(path)
    subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        note = ScanAction("move", str(tmp_path / "q")).apply(file)
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
        file.close()
    assert note == ("not moved: Operation not permitted", False)
    assert path.read_bytes() == b"bad"
    assert os.listdir(tmp_path / "q") == []


def test_a_long_name_in_a_multibyte_script_can_be_removed(tmp_path: Path) -> None:
    """240 bytes, 120 characters: the staging name must fit in 255 bytes."""
    path = tmp_path / ("\u00e9" * 120)
    path.write_bytes(b"bad")
    file = opened(path)
    note = ScanAction("remove").apply(file)
    file.close()
    assert note == ("Removed.", True)
    assert os.listdir(tmp_path) == []


def test_a_link_named_on_the_command_line_acts_on_the_file_scanned(tmp_path: Path) -> None:
    """The scan follows such a link, so its target is what was found: acting
    on the link's own name met another inode ("it changed...", never done)."""
    (tmp_path / "q").mkdir()
    for name in ("gone", "kept"):
        (tmp_path / f"{name}.com").write_bytes(b"bad")
        (tmp_path / f"{name}-link").symlink_to(f"{name}.com")
    removed = opened_as_named(tmp_path / "gone-link")
    note = ScanAction("remove").apply(removed)
    removed.close()
    assert note == (f"Removed '{tmp_path}/gone.com', the file the link leads to.", True)
    assert not (tmp_path / "gone.com").exists() and (tmp_path / "gone-link").is_symlink()
    moved = opened_as_named(tmp_path / "kept-link")
    note = ScanAction("move", str(tmp_path / "q")).apply(moved)
    moved.close()
    assert note == (f"moved to '{tmp_path}/q/kept.com'", True)
    assert (tmp_path / "q" / "kept.com").read_bytes() == b"bad"


def test_a_target_name_is_escaped_as_the_path_is(tmp_path: Path) -> None:
    """A newline or a byte that is not UTF-8 in the name: the note stays one
    line, and a JSON record of it holds no lone surrogate."""
    (tmp_path / "q").mkdir()
    path = tmp_path / os.fsdecode(b"n\nl\xff")
    path.write_bytes(b"bad")
    file = opened(path)
    note = ScanAction("copy", str(tmp_path / "q")).apply(file)
    file.close()
    assert note == (f"copied to '{tmp_path}/q/n\\nl\\xff'", True)


def test_a_numbered_name_past_255_bytes_is_cut_to_fit(tmp_path: Path) -> None:
    """NAME.001 of a 253-byte NAME was 'File name too long': never moved."""
    (tmp_path / "q").mkdir()
    name = "x" * 250 + ".com"
    (tmp_path / "q" / name).write_bytes(b"taken")
    path = tmp_path / name
    path.write_bytes(b"bad")
    file = opened(path)
    note = ScanAction("move", str(tmp_path / "q")).apply(file)
    file.close()
    fitted = name[:-3] + ".001"  # 255 bytes: the name's end gave way to the number
    assert note == (f"moved to '{tmp_path}/q/{fitted}'", True)
    assert (tmp_path / "q" / fitted).read_bytes() == b"bad"


def test_standard_input_can_be_copied_only() -> None:
    action = ScanAction("remove")
    assert action.apply(OpenedFile("stdin", -1, None), from_stdin=True) == (  # type: ignore[arg-type]
        "not removed: standard input is not a file to remove",
        False,
    )


def test_a_directory_that_is_not_there_is_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ActionError, match=f"cannot move infected files to {tmp_path}/no: no such"):
        ScanAction("move", str(tmp_path / "no"))
    with pytest.raises(ActionError, match="file: not a directory"):
        ScanAction("copy", str(tmp_path / "file"))


def test_an_interrupted_copy_leaves_no_part_of_it(tmp_path: Path) -> None:
    """Ctrl-C or a scan's SIGTERM in the middle of a copy (--copy, a --move to
    another file system): no partial copy is left to be taken for the file."""
    source = tmp_path / "big"
    with open(source, "wb") as f:
        f.truncate(256 << 20)  # sparse: quick to make, some 0.1 s to copy
    target = tmp_path / "copy"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    fd = os.open(source, os.O_RDONLY)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.005)
        with pytest.raises(KeyboardInterrupt):
            safefs.copy_new(fd, str(target), 0o600)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.close(fd)
    assert not target.exists()
