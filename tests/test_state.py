"""The daemon's state file (clamwatch/state.py) on real files: saved, read back, refused."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from clamwatch.state import (
    LOCK_FILE,
    STATE_FILE,
    State,
    StateError,
    load_state,
    lock_state,
    save_state,
)


def a_state() -> State:
    # a name that is not UTF-8 travels as lone surrogates (os.fsdecode)
    odd = os.fsdecode(b"/srv/uploads/caf\xe9.bin")
    return State(
        covered_at={"/srv/uploads": 1_700_000_000.25, "/srv/other": 1_700_000_100.0},
        pending=[("/srv/uploads/a.txt", "/srv/uploads"), (odd, "/srv/uploads")],
        rescans=[("/srv/other/deep/dir", "/srv/other")],
    )


def leftovers(directory: Path) -> list[str]:
    """Everything in the state folder other than the state file itself."""
    return sorted(name for name in os.listdir(directory) if name != STATE_FILE)


def test_save_then_load_gives_the_same_state(tmp_path: Path) -> None:
    state = a_state()
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state
    assert leftovers(tmp_path) == []


def test_a_second_save_replaces_the_first(tmp_path: Path) -> None:
    save_state(tmp_path, a_state())
    later = State({"/srv/uploads": 1_800_000_000.0}, [], [])
    save_state(tmp_path, later)
    assert load_state(tmp_path) == later
    assert leftovers(tmp_path) == []


def test_save_creates_a_private_state_folder(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "lib" / "clamwatch"
    save_state(directory, a_state())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # mkstemp's mode, kept by the rename: pending names are nobody else's business
    assert stat.S_IMODE((directory / STATE_FILE).stat().st_mode) == 0o600
    assert load_state(directory) == a_state()


def test_no_state_file_is_an_empty_state(tmp_path: Path) -> None:
    assert load_state(tmp_path) == State()
    assert load_state(tmp_path / "not-created-yet") == State()
    assert not (tmp_path / "not-created-yet").exists(), "loading must not create anything"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "unreadable"),
        (b"{not json", "unreadable"),
        (b"\xff\xfe{}", "unreadable"),  # not UTF-8
        (b"[]", "not a clamwatch state file of version 1"),
        (b'{"version": 2, "covered_at": {}}', "not a clamwatch state file of version 1"),
        (b'{"covered_at": {}}', "not a clamwatch state file of version 1"),
        (b'{"version": 1, "covered_at": []}', "malformed (covered_at is not an object)"),
        (b'{"version": 1, "covered_at": null}', "malformed"),
        (b'{"version": 1, "covered_at": {"/srv": "soon"}}', "malformed"),
        (b'{"version": 1, "covered_at": {"/srv": true}}', "malformed"),
        (b'{"version": 1, "pending": {"a": "b"}}', "malformed (pending is not a list)"),
        (b'{"version": 1, "pending": [["/a"]]}', "malformed"),
        (b'{"version": 1, "pending": ["ab"]}', "malformed"),  # a string is not a pair
        (b'{"version": 1, "pending": [["/a", 7]]}', "malformed"),
        (b'{"version": 1, "rescans": [["/d", "/w", "/x"]]}', "malformed"),
    ],
)
def test_a_bad_state_file_is_refused_by_name_and_left_as_it_is(
    tmp_path: Path, content: bytes, says: str
) -> None:
    """A clear StateError naming the file, never a crash or a silent fresh start,
    and the file untouched: what it says is still to do may be recovered from it."""
    path = tmp_path / STATE_FILE
    path.write_bytes(content)
    with pytest.raises(StateError) as caught:
        load_state(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert says in message
    assert path.read_bytes() == content


def test_a_truncated_state_file_is_refused_and_kept(tmp_path: Path) -> None:
    """What a full disk or a torn copy leaves: the first half of a real state file."""
    save_state(tmp_path, a_state())
    path = tmp_path / STATE_FILE
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(StateError, match=r"unreadable.*move it aside to start afresh"):
        load_state(tmp_path)
    assert path.read_bytes() == whole[: len(whole) // 2]


def test_an_unreadable_state_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).mkdir()  # read(2) fails with EISDIR, as root too
    with pytest.raises(StateError, match="unreadable"):
        load_state(tmp_path)


def test_a_save_that_fails_midway_leaves_the_previous_file(tmp_path: Path) -> None:
    """json.dump fails after part of the file is written (a value it cannot
    encode, standing in for a full disk): the old file stays whole, and the
    temporary file is gone."""
    before = a_state()
    save_state(tmp_path, before)
    saved = (tmp_path / STATE_FILE).read_bytes()
    # the pending list comes after covered_at: by then part of the file is written
    broken = State({"/srv/uploads": 1.0}, [("/srv/uploads/x", object())], [])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        save_state(tmp_path, broken)
    assert (tmp_path / STATE_FILE).read_bytes() == saved
    assert leftovers(tmp_path) == []
    assert load_state(tmp_path) == before


def test_a_save_whose_rename_fails_leaves_no_temporary_file(tmp_path: Path) -> None:
    """The last step fails (a non-empty folder stands where the file goes):
    the error comes out, and no half-done file is left behind."""
    (tmp_path / STATE_FILE).mkdir()
    (tmp_path / STATE_FILE / "in-the-way").write_text("x")
    with pytest.raises(OSError):
        save_state(tmp_path, a_state())
    assert leftovers(tmp_path) == []


def test_the_file_is_plain_json_with_its_version(tmp_path: Path) -> None:
    """An admin may read (and move aside) the file: it is one JSON object."""
    save_state(tmp_path, a_state())
    data = json.loads((tmp_path / STATE_FILE).read_text(encoding="utf-8"))
    assert data["version"] == 1
    assert data["covered_at"] == {"/srv/uploads": 1_700_000_000.25, "/srv/other": 1_700_000_100.0}
    assert data["pending"][0] == ["/srv/uploads/a.txt", "/srv/uploads"]


def test_a_state_directory_is_held_by_one_daemon_at_a_time(tmp_path: Path) -> None:
    """flock(2) conflicts between two open files even in one process, as between two
    daemons; the second is told the first one's pid, and the lock ends with its file."""
    directory = tmp_path / "state"
    first = lock_state(directory)
    try:
        assert (directory / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(StateError) as refused:
            lock_state(directory)
        assert str(refused.value) == (
            f"{directory} is in use by another clamwatch (pid {os.getpid()}): stop it, or"
            " give this one a state_directory of its own"
        )
    finally:
        os.close(first)
    os.close(lock_state(directory))  # free again


def test_taking_the_directory_removes_what_an_interrupted_save_left(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    save_state(directory, a_state())
    (directory / ".state-abc123").write_text('{"version": 1, "cove')  # a crash mid-save
    os.close(lock_state(directory))
    assert leftovers(directory) == [LOCK_FILE]
    assert load_state(directory) == a_state()
