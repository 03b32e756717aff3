"""The daemon's state file: what it still had to do, and how far each watch is covered.

``covered_at`` (epoch seconds) is a time since which every change in the
watch is known to have been handled or saved here: at the next start only
files changed since then are walked (startup_scan = "changed"). Written
atomically (a temporary file, fsync, rename) so a crash leaves the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from clamwatch.durable import replace_file

STATE_FILE = "state.json"
LOCK_FILE = "lock"  # held (flock) by the daemon that uses the directory; holds its pid
_TEMPORARY_PREFIX = ".state-"
_VERSION = 1


class StateError(Exception):
    pass


class BadStateFileError(StateError):
    """state.json is there but no state file clamwatch can read: an admin's
    matter, as a bad configuration is (restarting would only repeat it)."""


@dataclass(slots=True)
class State:
    covered_at: dict[str, float] = field(default_factory=dict)  # watch root -> epoch s
    pending: list[tuple[str, str]] = field(default_factory=list)  # (path, watch)
    rescans: list[tuple[str, str]] = field(default_factory=list)  # (directory, watch)


def load_state(directory: Path) -> State:
    """The saved state, or an empty one when there is none yet.

    A file that is there but cannot be read, or is not a state file as
    save_state writes it, raises StateError and is left as it is: starting
    afresh over it would lose what it says is still to do.
    """
    path = directory / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return State()
    except (OSError, ValueError) as exc:
        raise BadStateFileError(
            f"{path}: unreadable ({exc}); move it aside to start afresh"
        ) from exc
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        raise BadStateFileError(f"{path}: not a clamwatch state file of version {_VERSION}")
    try:
        return State(
            _covered(data.get("covered_at", {})),
            _pairs(data.get("pending", []), "pending"),
            _pairs(data.get("rescans", []), "rescans"),
        )
    except (TypeError, ValueError) as exc:
        raise BadStateFileError(
            f"{path}: malformed ({exc}); move it aside to start afresh"
        ) from exc


def _covered(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise TypeError("covered_at is not an object")
    covered: dict[str, float] = {}
    for root, when in value.items():
        if isinstance(when, bool) or not isinstance(when, int | float):
            raise TypeError(f"covered_at of {root!r} is not a number")
        covered[root] = float(when)
    return covered


def _pairs(value: object, key: str) -> list[tuple[str, str]]:
    """[[name, watch], ...] as save_state writes it; anything else is a TypeError."""
    if not isinstance(value, list):
        raise TypeError(f"{key} is not a list")
    pairs: list[tuple[str, str]] = []
    for item in value:
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(s, str) for s in item)
        ):
            raise TypeError(f"{key} holds {item!r}, not a pair of names")
        pairs.append((item[0], item[1]))
    return pairs


def save_state(directory: Path, state: State) -> None:
    """Write ``state`` atomically: a failure leaves the previous file as it was."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = {
        "version": _VERSION,
        "covered_at": state.covered_at,
        # names that are not UTF-8 travel as lone surrogates: json escapes
        # them as \udcXX and reads them back the same
        "pending": state.pending,
        "rescans": state.rescans,
    }
    # durably too: a power cut soon after a stop could otherwise bring back
    # the previous file, without what was pending at that stop
    replace_file(directory / STATE_FILE, json.dumps(data), prefix=_TEMPORARY_PREFIX)


def lock_state(directory: Path) -> int:
    """Take ``directory`` for this process; the descriptor returned holds it until closed.

    Two daemons on one state directory would overwrite each other's state
    file, and with it what each still had to do: a second one is refused
    with a StateError naming the first one's pid. The lock is flock(2) on
    LOCK_FILE, so it ends with the process however it ends. Once the
    directory is ours, temporary files of saves that a crash cut short are
    removed: no one else writes there. A directory or lock file that cannot
    be made or opened (a read-only or full file system) raises OSError.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(
        directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StateError(
            f"{directory} is in use by another clamwatch (pid {holder}): stop it, or give"
            " this one a state_directory of its own"
        ) from None
    except OSError:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):  # only for the message of a second daemon
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    for leftover in directory.glob(f"{_TEMPORARY_PREFIX}*"):
        with contextlib.suppress(OSError):
            leftover.unlink()
    return fd
