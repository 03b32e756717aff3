"""`clamwatch check-config`: validate what `clamwatch run` would read."""

from __future__ import annotations

import sys
from pathlib import Path

from clamwatch.clamd.address import AddressError
from clamwatch.clamd.engine import ClamdUnavailableError, Engine
from clamwatch.clamd.settings import UNLIMITED, EngineSettings, resolve_engine
from clamwatch.config import Config, ConfigError, load_config
from clamwatch.writable import describe, quarantines, read_only_folders, read_only_root

_CLAMD_TIMEOUT = 10.0  # seconds to wait for clamd's answer


def run_check(path: Path, *, check_clamd: bool) -> int:
    try:
        config = load_config(path)
        if not config.watches:
            raise ConfigError(f"{path}: no [[watch]] is configured")
        address, settings = resolve_engine(config.clamd, give_up_after=_CLAMD_TIMEOUT)
    except (ConfigError, AddressError, ValueError) as exc:
        print(f"clamwatch check-config: {exc}", file=sys.stderr)
        return 1
    files = ", ".join(str(source) for source in config.sources)
    print(f"{files}: valid")
    for watch in config.watches:
        quiet = "" if watch.log_clean else " (clean verdicts counted, not logged)"
        print(f"  watch {watch.path}: clean -> {' '.join(watch.policy.clean.words)}, infected ->"
              f" {' '.join(watch.policy.infected.words)}{quiet}")  # fmt: skip
    _warn_read_only(config)
    if not check_clamd:
        print(f"  clamd at {address} (not contacted; --clamd checks it)")
        return 0
    try:
        engine = Engine(address, settings).start()
    except ValueError as exc:  # FILDES asked of a TCP address found in clamd.conf
        print(f"clamwatch check-config: {exc}", file=sys.stderr)
        return 1
    try:
        caps = engine.wait_ready(_CLAMD_TIMEOUT)
        in_flight = engine.in_flight_limit
    except ClamdUnavailableError as exc:
        print(f"clamwatch check-config: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.close()
    fildes = "FILDES" in caps.commands and address.is_unix
    threads = caps.max_threads if caps.max_threads is not None else "unknown"
    # wait_ready returned: the session's EICAR check passed, if it is on
    checked = "; it found the EICAR test file" if settings.eicar_check else ""
    print(
        f"  clamd at {address}: {caps.version or 'version unknown'}, MaxThreads {threads},"
        f" files passed by {'descriptor (FILDES)' if fildes else 'stream (INSTREAM)'},"
        f" at most {in_flight} scans in flight{checked}; {_size_limit(settings)}"
    )
    return 0


def _warn_read_only(config: Config) -> None:
    """The folders the daemon must change and could not, as the daemon's read-only
    events name them. Warnings, not errors: ReadWritePaths= is a mount made when
    the service starts, so refusing a reload would not mend it and would keep out
    every other change; and outside the service's sandbox (a shell, not
    ExecReload=) these are the host's mounts, not the ones the daemon sees."""
    found = [r for w in config.watches if (r := read_only_root(w)) is not None]
    found += read_only_folders(config, quarantines=quarantines(config))
    for item in found:
        print(f"clamwatch check-config: warning: {describe(item)}", file=sys.stderr)


def _size_limit(settings: EngineSettings) -> str:
    if settings.max_file_size == UNLIMITED:
        return f"clamd reports the files it does not scan ({settings.max_file_size_from})"
    return (
        f"files over {settings.max_file_size} bytes ({settings.max_file_size_from}) are not"
        " sent, since clamd answers OK without scanning them"
    )
