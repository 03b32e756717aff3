"""The folders the daemon must change, and which of them are read-only to it.

Under systemd's ProtectSystem=strict the whole file system is mounted
read-only to the service but its StateDirectory= and what ReadWritePaths=
lists. A watch root left out of ReadWritePaths= is still watched and
scanned (that only reads), but every move, removal, release and tag there
fails with EROFS: the admin would first hear of it from an infected file
left in place. statvfs(3) says so up front: its ST_RDONLY is the flag of the
mount the path is on, a read-only bind mount included (statfs(2)).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from clamwatch.config import Config, WatchConfig
from clamwatch.eventkind import EventKind, emit
from clamwatch.policy import FileAction

_WRITING = (FileAction.MOVE, FileAction.REMOVE, FileAction.RELEASE)
_QUARANTINING = (FileAction.MOVE, FileAction.COPY)


@dataclass(frozen=True, slots=True)
class ReadOnly:
    path: str  # the folder (or, for one not made yet, where it would be)
    setting: str  # the configuration key that names it
    watch: str | None  # the watch it belongs to, if any
    need: str  # what fails there


def _read_only(path: Path) -> bool:
    """Whether ``path``, or the nearest folder above it that exists, is on a
    read-only mount; False when that cannot be told."""
    for candidate in (path, *path.parents):
        try:
            return bool(os.statvfs(candidate).f_flag & os.ST_RDONLY)
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return False


def _root_needs(watch: WatchConfig) -> str | None:
    """What the watch's rules change in its tree; None: they only read it."""
    rules = watch.policy.rules
    needs = sorted({r.file_action.value for r in rules if r.file_action in _WRITING})
    needs += ["tag"] if any(r.tag for r in rules) else []
    return ", ".join(needs) or None


def read_only_root(watch: WatchConfig) -> ReadOnly | None:
    """The watch's root, when it is read-only and its rules change files there."""
    need = _root_needs(watch)
    if need is None or not _read_only(watch.path):
        return None
    return ReadOnly(str(watch.path), "[[watch]] path", str(watch.path), need)


def quarantines(config: Config) -> bool:
    """Some watch moves or copies files into the quarantine."""
    return any(
        rule.file_action in _QUARANTINING for watch in config.watches for rule in watch.policy.rules
    )


def read_only_folders(config: Config, *, quarantines: bool) -> list[ReadOnly]:
    """Every folder other than the watch roots that the daemon must write and cannot."""
    found: list[ReadOnly] = []
    state = config.daemon.state_directory
    if _read_only(state):
        found.append(ReadOnly(str(state), "[daemon] state_directory", None, "state.json, lock"))
    if quarantines and _read_only(config.quarantine.directory):
        found.append(
            ReadOnly(str(config.quarantine.directory), "[quarantine] directory", None, "move, copy")
        )
    for watch in config.watches:
        if watch.release_to is not None and _read_only(watch.release_to):
            found.append(ReadOnly(str(watch.release_to), "release_to", str(watch.path), "release"))
    return found


def _service() -> str | None:
    """The systemd service this process runs in (from its cgroup), if any."""
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        name = line.rpartition("/")[2]
        if name.endswith(".service"):
            return name
    return None


def describe(found: ReadOnly) -> str:
    """What is read-only, what fails there, and which setting to change where."""
    service = _service()
    state_directory = os.environ.get("STATE_DIRECTORY")  # systemd's StateDirectory=
    if found.setting == "[daemon] state_directory" and state_directory:
        hint = f"systemd gives this service {state_directory}: set [daemon] state_directory to it"
    elif service is not None:
        hint = f"add it to ReadWritePaths= with `systemctl edit {service}`, then restart it"
    else:
        hint = "make it writable to clamwatch"
    where = f" (watch {found.watch})" if found.setting == "release_to" else ""
    return (
        f"{found.setting} {found.path}{where} is on a read-only file system: {found.need}"
        f" will fail there; {hint}"
    )


def report(found: ReadOnly) -> None:
    """A read-only event that says which setting to change, and where."""
    emit(
        EventKind.READ_ONLY,
        describe(found),
        logging.ERROR,  # an infected file would stay where it is
        path=found.path,
        setting=found.setting,
        watch=found.watch,
    )
