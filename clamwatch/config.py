"""clamwatch's configuration: TOML, validated key by key.

Every problem names the file, the key, the bad value and what was expected;
unknown keys are errors, so a typo never silently falls back to a default.
etc/clamwatch/clamwatch.toml documents every key with its default.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from clamwatch.clamd.address import AddressError, parse_address
from clamwatch.clamd.job import TransportChoice
from clamwatch.clamd.settings import ClamdSettings
from clamwatch.policy import FileAction, Policy, Rule, parse_rule
from clamwatch.units import parse_duration, parse_size

DEFAULT_CONFIG = Path("/etc/clamwatch/clamwatch.toml")

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem, worded for the admin who has to fix it."""


@dataclass(frozen=True, slots=True)
class WatchConfig:
    path: Path
    name: str
    exclude: tuple[str, ...] = ()
    exclude_regex: tuple[re.Pattern[str], ...] = ()
    min_size: int = 0
    max_size: int | None = None
    skip_uids: frozenset[int] = frozenset()
    policy: Policy = field(default_factory=Policy)
    release_to: Path | None = None
    hook: tuple[str, ...] = ()  # argv, never a shell
    hook_timeout: float = 30.0
    chmod_on_failure: bool = False  # chmod 000 a file that should be quarantined but cannot
    log_clean: bool = True  # an event for each clean verdict (counted either way)


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    state_directory: Path = Path("/var/lib/clamwatch")
    max_pending: int = 50_000
    settle_time: float = 2.0
    startup_scan: str = "changed"  # changed | all | none
    stop_timeout: float = 20.0
    log_format: str = "text"  # text | json


@dataclass(frozen=True, slots=True)
class QuarantineSettings:
    directory: Path = Path("/var/lib/clamwatch/quarantine")
    max_age: float | None = None  # seconds; None: kept until deleted
    max_total_size: int | None = None  # bytes; None: no limit


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    clamd: ClamdSettings
    daemon: DaemonSettings
    watches: tuple[WatchConfig, ...]
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    sources: tuple[Path, ...] = ()  # the file and the drop-ins it was read from
    watch_sources: tuple[Path, ...] = ()  # the file each of ``watches`` was read from


# -- value parsers: each raises ValueError with what was expected ----------------


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected a whole number of 1 or more")
    return value


def _size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("expected a size of 0 or more (bytes, or a string: '10K', '25M')")
        return value
    return parse_size(_string(value))


def _positive_size(value: object) -> int:
    size = _size(value)
    if size < 1:
        raise ValueError("expected a size of 1 byte or more")
    return size


def _duration(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(
                "expected a duration of 0 or more (seconds, or a string: '500ms', '2m')"
            )
        return float(value)
    return parse_duration(_string(value))


def _more_than_zero(
    parse: Callable[[object], float], what: str, empty: str | None = None
) -> Callable[[object], float]:
    """``parse``, refusing 0: a 0 s deadline or limit is never what was meant."""
    hint = f" (leave it empty for {empty})" if empty else ""

    def parse_more_than_zero(value: object) -> float:
        parsed = parse(value)
        if parsed <= 0:
            raise ValueError(f"expected a {what} of more than 0{hint}")
        return parsed

    return parse_more_than_zero


def _address(value: object) -> str:
    try:
        parse_address(_string(value))
    except AddressError as exc:
        raise ValueError(str(exc)) from None
    return str(value)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return str(value)

    return parse


def _absolute_path(value: object) -> Path:
    path = Path(_string(value))
    if not path.is_absolute():
        raise ValueError("expected an absolute path")
    return path


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def _command(value: object) -> tuple[str, ...]:
    """A hook's argv. Its program is looked for in PATH when a bare name; a
    relative path ("./notify", "bin/notify") would be taken from the daemon's
    working directory, which is / under systemd and wherever it was started
    by hand, so it is refused."""
    argv = _strings(value)
    if argv and (not argv[0] or ("/" in argv[0] and not argv[0].startswith("/"))):
        raise ValueError(
            "expected the program as an absolute path, or a bare name found in PATH"
            " (a relative path depends on the daemon's working directory)"
        )
    return argv


def _globs(value: object) -> tuple[str, ...]:
    globs = _strings(value)
    for glob in globs:
        if glob.startswith("/") or glob.endswith("/") or not glob:
            raise ValueError(
                f"{glob!r} can never match: globs match a file name (*.part) or a path below"
                " the watch root (cache/*), with no leading or trailing slash"
            )
    return globs


def _regexes(value: object) -> tuple[re.Pattern[str], ...]:
    patterns = []
    for text in _strings(value):
        try:
            patterns.append(re.compile(text))
        except re.error as exc:
            raise ValueError(f"{text!r} is not a regular expression: {exc}") from exc
    return tuple(patterns)


def _uids(value: object) -> frozenset[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ValueError("expected a list of numeric uids")
    return frozenset(value)


def _optional(parse: Callable[[object], T], none: object = "") -> Callable[[object], T | None]:
    """``none`` ("" or 0) written in the file means "not set"."""

    def parse_optional(value: object) -> T | None:
        return None if value == none else parse(value)

    return parse_optional


# -- sections --------------------------------------------------------------------

_CLAMD_KEYS: dict[str, Callable[[object], Any]] = {
    "address": _optional(_address),
    "clamd_conf": _absolute_path,
    "transport": lambda v: TransportChoice(_choice("auto", "fildes", "instream")(v)),
    "sessions": _positive_int,
    "max_in_flight": _optional(_positive_int, 0),
    "request_timeout": _optional(_more_than_zero(_duration, "duration", "the default")),
    "keepalive": _optional(_more_than_zero(_duration, "duration", "the default")),
    "max_stream_size": _optional(_size),
    "max_file_size": _optional(_positive_size),
    "eicar_check": _boolean,
}

_DAEMON_KEYS: dict[str, Callable[[object], Any]] = {
    "state_directory": _absolute_path,
    "max_pending": _positive_int,
    "settle_time": _duration,
    "startup_scan": _choice("changed", "all", "none"),
    "stop_timeout": _duration,
    "log_format": _choice("text", "json"),
}

_QUARANTINE_KEYS: dict[str, Callable[[object], Any]] = {
    "directory": _absolute_path,
    "max_age": _optional(_more_than_zero(_duration, "duration", "no limit")),
    "max_total_size": _optional(_more_than_zero(_size, "size", "no limit")),
}

_WATCH_KEYS: dict[str, Callable[[object], Any]] = {
    "path": _absolute_path,
    "name": _string,
    "exclude": _globs,
    "exclude_regex": _regexes,
    "min_size": _size,
    "max_size": _optional(_size),
    "skip_uids": _uids,
    "on_clean": _strings,
    "on_infected": _strings,
    "on_not_scanned": _strings,
    "on_error": _strings,
    "release_to": _optional(_absolute_path),
    "hook": _command,
    "hook_timeout": _more_than_zero(_duration, "duration"),
    "chmod_on_failure": _boolean,
    "log_clean": _boolean,
}


def _section(
    source: Path, where: str, table: object, keys: Mapping[str, Callable[[object], Any]]
) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{where}] must be a table")
    values: dict[str, Any] = {}
    for key, raw in table.items():
        parse = keys.get(key)
        if parse is None:
            known = ", ".join(sorted(keys))
            raise ConfigError(f"{source}: [{where}] unknown key {key!r} (known keys: {known})")
        try:
            values[key] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: [{where}] {key} = {raw!r}: {exc}") from exc
    return values


_RULE_KEYS = ("on_clean", "on_infected", "on_not_scanned", "on_error")


def _policy(source: Path, where: str, values: dict[str, Any]) -> Policy:
    """The watch's rules; pops the on_* keys from ``values``."""
    defaults = Policy()
    rules: dict[str, Rule] = {}
    for key in _RULE_KEYS:
        kind = key.removeprefix("on_")
        words = values.pop(key, None)
        if words is None:
            rules[kind] = getattr(defaults, kind)
            continue
        try:
            rules[kind] = parse_rule(words, for_clean=kind == "clean")
        except ValueError as exc:
            raise ConfigError(f"{source}: [{where}] {key} = {list(words)!r}: {exc}") from exc
    policy = Policy(**rules)
    used = policy.rules
    if any(r.file_action is FileAction.RELEASE for r in used) and values.get("release_to") is None:
        raise ConfigError(f"{source}: [{where}] uses release but sets no release_to")
    if any(r.hook for r in used) and not values.get("hook"):
        raise ConfigError(f"{source}: [{where}] uses hook but sets no hook command")
    return policy


def parse_config(
    source: Path,
    data: Mapping[str, object],
    origins: Sequence[Path] = (),
    *,
    places: bool = True,
    set_in: Mapping[tuple[str, str], Path] | None = None,
) -> Config:
    """Validate a parsed TOML document.

    ``origins``: the file each [[watch]] was read from, when they were merged
    from several (``source`` for all by default); the checks between watches
    and folders (``places``) name them. ``set_in``: the file that last set
    each ``(section, key)`` of [clamd], [daemon] and [quarantine] (``source``
    for each key of ``data`` by default), so that a check between two keys
    names the file of each.
    """
    if set_in is None:
        set_in = _keys_set_in(source, data)

    def where(section: str, key: str) -> Path | None:
        """The file that set ``[section] key``; None: it has its default."""
        return set_in.get((section, key))

    unknown = set(data) - {"clamd", "daemon", "quarantine", "watch"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown section {sorted(unknown)[0]!r}"
            " (known: clamd, daemon, quarantine, watch)"
        )
    clamd = ClamdSettings(**_section(source, "clamd", data.get("clamd", {}), _CLAMD_KEYS))
    if clamd.transport is TransportChoice.FILDES and (clamd.address or "").startswith("tcp:"):
        address_in = where("clamd", "address") or source
        raise ConfigError(
            f"{address_in}: [clamd] address {clamd.address!r} is TCP, which cannot pass"
            f" descriptors, but transport = 'fildes'"
            f"{_also_in(address_in, where('clamd', 'transport') or source)}"
            " (set transport to 'instream' or 'auto', or address to a unix:// socket)"
        )
    daemon = DaemonSettings(**_section(source, "daemon", data.get("daemon", {}), _DAEMON_KEYS))
    quarantine = QuarantineSettings(
        **_section(source, "quarantine", data.get("quarantine", {}), _QUARANTINE_KEYS)
    )
    raw_watches = data.get("watch", [])
    if not isinstance(raw_watches, list):
        raise ConfigError(f"{source}: watches are written [[watch]], an array of tables")
    watches: list[WatchConfig] = []
    for number, table in enumerate(raw_watches, 1):
        values = _section(source, f"watch #{number}", table, _WATCH_KEYS)
        if "path" not in values:
            raise ConfigError(f"{source}: [watch #{number}] has no path")
        values.setdefault("name", str(values["path"]))
        values["policy"] = _policy(source, f"watch #{number}", values)
        watch = WatchConfig(**values)
        if watch.max_size is not None and watch.min_size > watch.max_size:
            raise ConfigError(
                f"{source}: [watch #{number}] min_size ({watch.min_size} bytes) is over max_size"
                f" ({watch.max_size} bytes): no file would be scanned"
            )
        if watch.path.exists() and not watch.path.is_dir():
            raise ConfigError(
                f"{source}: [watch #{number}] path {str(watch.path)!r} is not a directory"
            )
        watches.append(watch)
    files = [*origins, *[source] * (len(watches) - len(origins))]
    if places:

        def folder(section: str, key: str, value: Path) -> tuple[str, Path, Path | str]:
            return f"[{section}] {key}", value, where(section, key) or "its default"

        _check_places(
            list(zip(watches, files, strict=True)),
            [
                folder("quarantine", "directory", quarantine.directory),
                folder("daemon", "state_directory", daemon.state_directory),
            ],
        )
    return Config(source, clamd, daemon, tuple(watches), quarantine, watch_sources=tuple(files))


def _also_in(source: Path, other: Path, how: str = "set in") -> str:
    """`` (set in OTHER)`` after a key (``how``: "in", after a watch) that another
    file than the error's set."""
    return "" if other == source else f" ({how} {other})"


def check_folders_in_use(
    config: Config, daemon: DaemonSettings, quarantine: QuarantineSettings
) -> None:
    """A reloaded configuration's watches against the state and quarantine
    folders the running daemon keeps using (a reload does not move them):
    a watch in one of those would never be scanned, whatever the new
    file says of them."""
    files = config.watch_sources or (config.source,) * len(config.watches)
    in_use = "the running daemon's, kept until a restart"
    _check_places(
        list(zip(config.watches, files, strict=True)),
        [
            ("[quarantine] directory", quarantine.directory, in_use),
            ("[daemon] state_directory", daemon.state_directory, in_use),
        ],
    )


def _check_places(
    watches: list[tuple[WatchConfig, Path]],
    folders: list[tuple[str, Path, Path | str]],
) -> None:
    """Watches that overlap, and folders of clamwatch's own where a watch is.

    Compared as written and as resolved (links, ".."), so that two ways to
    one folder are one folder. A watch's tree holding the quarantine or the
    state folder is allowed (they are left out of it); a watch that is one of
    them, or lies in one, would never be scanned. release_to in a watch
    would release each file into the watch again, and again. Each error
    starts with the file of the watch at fault and names the other's file
    when it is another. ``folders``: the quarantine and the state folder,
    each as ``(key, folder, the file that set it or a note)``.
    """
    real = {w.path: Path(os.path.realpath(w.path)) for w, _ in watches}

    def within(inner: Path, outer: Path) -> bool:
        real_inner, real_outer = Path(os.path.realpath(inner)), Path(os.path.realpath(outer))
        return inner.is_relative_to(outer) or real_inner.is_relative_to(real_outer)

    for number, (watch, source) in enumerate(watches):
        for other, other_source in watches[number + 1 :]:
            if watch.path == other.path or real[watch.path] == real[other.path]:
                raise ConfigError(
                    f"{other_source}: {str(other.path)!r} is watched twice"
                    f"{_also_in(other_source, source, 'in')}; a drop-in adds watches, it cannot"
                    " change or remove one of another file"
                )
            for (inner, inner_source), (outer, outer_source) in (
                ((watch, source), (other, other_source)),
                ((other, other_source), (watch, source)),
            ):
                if within(inner.path, outer.path):
                    raise ConfigError(
                        f"{inner_source}: watch {str(inner.path)!r} lies inside watch"
                        f" {str(outer.path)!r}{_also_in(inner_source, outer_source, 'in')};"
                        " one watch covers its whole tree"
                    )
        for key, own, own_source in folders:
            if within(watch.path, own):
                note = (
                    f" ({own_source})"
                    if isinstance(own_source, str)
                    else _also_in(source, own_source)
                )
                raise ConfigError(
                    f"{source}: watch {str(watch.path)!r} is or lies inside {key}"
                    f" {str(own)!r}{note}, which clamwatch leaves out: nothing in it"
                    " would be scanned"
                )
    for watch, source in watches:
        if watch.release_to is None:
            continue
        for other, other_source in watches:
            if within(watch.release_to, other.path):
                raise ConfigError(
                    f"{source}: release_to {str(watch.release_to)!r} of watch"
                    f" {str(watch.path)!r} lies inside watch {str(other.path)!r}"
                    f"{_also_in(source, other_source, 'in')}: what it releases would be found,"
                    " scanned and released again"
                )


def dropin_directory(source: Path) -> Path:
    """/etc/clamwatch/clamwatch.toml -> /etc/clamwatch/clamwatch.d"""
    return source.with_suffix(".d")


def dropin_files(directory: Path) -> list[Path]:
    """The drop-ins read, in name order: ``*.toml`` but the hidden ones, as
    systemd skips them in its own .d folders. An editor's lock or temporary
    file is hidden (Emacs's ``.#name.toml``, a link to nowhere while the
    drop-in is open) and would otherwise fail a start or a reload.

    What is not a regular file once links are followed (a directory named
    ``x.toml``, a link to nothing, a FIFO, which would block the read) is
    left out with a warning naming it, as systemd does in a unit's .d
    folder: its drop-in list has no file-type filter (dropin.c passes no
    flags to conf_files_list_strv), config_parse() skips a file that is not
    there (ENOENT, logged at debug level only) and the unit loads even when
    reading a drop-in fails (unit_load_dropin ignores the error). Refusing
    would stop the daemon at a start, over an entry that holds no settings.
    """
    found = []
    for path in sorted(directory.glob("*.toml")):
        if path.name.startswith("."):
            continue
        if not path.is_file():
            what = (
                "a link to nothing"
                if path.is_symlink() and not path.exists()
                else ("a directory" if path.is_dir() else "not a regular file")
            )
            log.warning(
                "%s: %s, not read (only regular files in %s are drop-ins;"
                " rename or remove it to silence this)",
                path,
                what,
                directory,
            )
            continue
        found.append(path)
    return found


def _read(source: Path) -> dict[str, Any]:
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: {exc.strerror or exc}") from exc
    try:
        # a byte order mark (Notepad's UTF-8) is no TOML statement to
        # tomllib: "Invalid statement (at line 1, column 1)"
        raw = raw.removeprefix(codecs.BOM_UTF8)
        text = raw.decode()
    except UnicodeDecodeError as exc:
        # a ValueError, not a TOMLDecodeError: it ended a reload's daemon
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{source}: line {line}: byte {raw[exc.start]:#04x} is not UTF-8"
            " (TOML files are UTF-8; was it saved as Latin-1?)"
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; [[watch]] arrays add up."""
    merged = dict(base)
    for key, value in override.items():
        if key == "watch" and isinstance(value, list):
            merged[key] = [*merged.get(key, []), *value]
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_config(source: Path = DEFAULT_CONFIG) -> Config:
    """The file and its drop-ins (``clamwatch.d/*.toml``, in name order), validated.

    Each file is checked on its own first, so an error names the file that
    holds it. How watches and folders lie (a watch inside another, or in the
    quarantine) is checked once they are merged, with the [daemon] and
    [quarantine] in force (a drop-in checked alone was held to the default
    folders), naming the file of each watch, and so are keys that clash
    across files ([clamd] transport and address), naming the file that last
    set each; what else only shows once they are merged names the main file.
    """
    data = _read(source)
    parse_config(source, data, places=False)
    origins = [source] * _watch_count(data)
    set_in = _keys_set_in(source, data)
    dropins = dropin_directory(source)
    sources = [source]
    if dropins.is_dir():
        for path in dropin_files(dropins):
            extra = _read(path)
            parse_config(path, extra, places=False)
            data = _merge(data, extra)
            origins += [path] * _watch_count(extra)
            set_in.update(_keys_set_in(path, extra))
            sources.append(path)
    config = parse_config(source, data, origins, set_in=set_in)
    return replace(config, sources=tuple(sources))


def _keys_set_in(source: Path, data: Mapping[str, object]) -> dict[tuple[str, str], Path]:
    """``(section, key)`` -> ``source`` for each key of the tables in ``data``."""
    return {
        (section, key): source
        for section, table in data.items()
        if isinstance(table, dict)
        for key in table
    }


def _watch_count(data: Mapping[str, object]) -> int:
    watches = data.get("watch", [])
    return len(watches) if isinstance(watches, list) else 0


_READ_AT_START = {"clamd": _CLAMD_KEYS, "daemon": _DAEMON_KEYS, "quarantine": _QUARANTINE_KEYS}


def settings_changed(running: Config, new: Config) -> list[str]:
    """``[section] key`` of each setting read only at the start whose value
    ``new`` changes: what a reload leaves as it is until the next restart."""
    return [
        f"[{section}] {key}"
        for section, keys in _READ_AT_START.items()
        for key in keys
        if getattr(getattr(running, section), key) != getattr(getattr(new, section), key)
    ]
