"""The daemon's state file: what it still had to do, and how far each watch is covered.

``covered_at`` (epoch seconds) is a time since which every change in the
watch is known to have been handled or saved here: at the next start only
files changed since then are walked (startup_scan = "changed"). Written
atomically (a temporary file, fsync, rename) so a crash leaves the old one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

STATE_FILE = "state.json"
_VERSION = 1


class StateError(Exception):
    pass


@dataclass(slots=True)
class State:
    covered_at: dict[str, float] = field(default_factory=dict)  # watch root -> epoch s
    pending: list[tuple[str, str]] = field(default_factory=list)  # (path, watch)
    rescans: list[tuple[str, str]] = field(default_factory=list)  # (directory, watch)


def load_state(directory: Path) -> State:
    """The saved state, or an empty one when there is none yet."""
    path = directory / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return State()
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable ({exc}); move it aside to start afresh") from exc
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        raise StateError(f"{path}: not a clamwatch state file of version {_VERSION}")
    try:
        return State(
            {str(k): float(v) for k, v in data.get("covered_at", {}).items()},
            [(str(p), str(w)) for p, w in data.get("pending", [])],
            [(str(d), str(w)) for d, w in data.get("rescans", [])],
        )
    except (TypeError, ValueError) as exc:
        raise StateError(f"{path}: malformed ({exc}); move it aside to start afresh") from exc


def save_state(directory: Path, state: State) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = {
        "version": _VERSION,
        "covered_at": state.covered_at,
        # names that are not UTF-8 travel as lone surrogates: json escapes
        # them as \udcXX and reads them back the same
        "pending": state.pending,
        "rescans": state.rescans,
    }
    fd, temporary = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, directory / STATE_FILE)
    except BaseException:
        os.unlink(temporary)
        raise
