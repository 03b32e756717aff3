"""`clamwatch quarantine list|show|restore|delete|purge`: the store from the shell.

The store's directory comes from --directory, else [quarantine] directory in
the configuration. Exit status: 0 done, 1 an entry is unknown or the store
refused (the message names the entry and why), 2 a usage or configuration
error.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import TextIO

from clamwatch.config import DEFAULT_CONFIG, ConfigError, QuarantineSettings, load_config
from clamwatch.names import display_path
from clamwatch.quarantine import (
    DamagedEntryError,
    QuarantineError,
    QuarantineStore,
    RecordMissingError,
    TargetExistsError,
)
from clamwatch.quarantine_record import QuarantineRecord
from clamwatch.units import parse_duration

_PROG = "clamwatch quarantine"


def store_directory(config: Path | None, directory: Path | None) -> Path:
    """--directory, else [quarantine] directory from --config (or the default
    configuration file, when it exists), else the built-in default. Raises
    ConfigError."""
    if directory is not None:
        return directory
    if config is None:
        if not DEFAULT_CONFIG.exists():
            return QuarantineSettings().directory
        config = DEFAULT_CONFIG
    return load_config(config).quarantine.directory


def run_quarantine(
    args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    try:
        directory = store_directory(getattr(args, "config", None), getattr(args, "directory", None))
    except ConfigError as exc:
        err.write(f"{_PROG}: {exc}\n")
        return 2
    directory = Path(os.path.abspath(directory))  # data paths in the output are whole
    action = args.quarantine_command
    if directory.exists() and not directory.is_dir():
        err.write(f"{_PROG}: {display_path(str(directory))} is not a directory\n")
        return 2
    if not directory.is_dir():
        # Never created by a mere look (a typo in --directory would make one).
        if action in ("list", "purge"):
            if not getattr(args, "json", False):
                out.write(f"No quarantined files: {directory} does not exist.\n")
            return 0
        err.write(f"{_PROG}: no quarantine entry {args.id}: {directory} does not exist\n")
        return 1
    try:
        store = QuarantineStore(directory)
        if action == "list":
            _list(store, args.json, out)
            if store.unreadable:
                # listed as if there were none, exit status 0, before
                err.write(
                    f"{_PROG}: not listed, their records unreadable or missing:"
                    f" {', '.join(store.unreadable)} ('delete ID' removes a damaged one)\n"
                )
                return 1
        elif action == "show":
            _show(store, store.get(args.id), args.json, out)
        elif action == "restore":
            # a trailing slash kept: "--to DIR/" means a folder, never a new file
            to = None if args.to is None else os.path.abspath(args.to) + "/" * args.to.endswith("/")
            path = store.restore(args.id, to, overwrite=args.force)
            out.write(f"restored {args.id} to {display_path(path)}\n")
        elif action == "delete":
            try:
                origin = display_path(store.get(args.id).original_path)
            except DamagedEntryError:
                origin = "its record damaged"
            except RecordMissingError:
                origin = "content without its record"
            store.delete(args.id)
            out.write(f"deleted {args.id} ({origin})\n")
        else:
            _purge(store, args.older_than, out)
    except TargetExistsError as exc:
        err.write(f"{_PROG}: {exc} (--force replaces it)\n")
        return 1
    except QuarantineError as exc:
        err.write(f"{_PROG}: {exc}\n")
        return 1
    return 0


def _list(store: QuarantineStore, as_json: bool, out: TextIO) -> None:
    records = store.list()
    if as_json:
        for record in records:
            out.write(json.dumps(_json(store, record)) + "\n")
        return
    if not records:
        out.write(f"No quarantined files in {store.directory}.\n")
        return
    rows = [("ID", "DETECTED", "SIZE", "SIGNATURE", "ORIGINAL PATH")]
    rows += [
        (
            r.id,
            _local_time(r.detected_at),
            _human_size(r.size),
            display_path(r.signature),
            display_path(r.original_path),
        )
        for r in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        cells = [
            row[0].ljust(widths[0]),
            row[1].ljust(widths[1]),
            row[2].rjust(widths[2]),
            row[3].ljust(widths[3]),
        ]
        out.write("  ".join([*cells, row[4]]) + "\n")


def _show(store: QuarantineStore, record: QuarantineRecord, as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(_json(store, record), indent=2) + "\n")
        return
    how = {
        "moved": "moved (the original name was removed)",
        "copied": "copied (the original was left in place)",
    }
    fields = [
        ("id", record.id),
        ("original path", display_path(record.original_path)),
        ("watch", display_path(record.watch)),
        ("signature", display_path(record.signature)),
        ("clamd version", record.clamd_version or "unknown"),
        ("detected", _local_time(record.detected_at, zone=True)),
        ("how", how.get(record.how, record.how)),
        ("owner", f"{record.owner}:{record.group} (uid:gid)"),
        ("mode", f"{stat.filemode(record.mode)} ({stat.S_IMODE(record.mode):04o})"),
        ("size", f"{record.size} bytes"),
        ("modified", _local_time(record.mtime_ns / 1e9, zone=True)),
        ("sha256", record.sha256),
        ("data file", display_path(str(store.data_path(record.id)))),
    ]
    for name, value in fields:
        out.write(f"{name + ':':15}{value}\n")


def _purge(store: QuarantineStore, older_than: str, out: TextIO) -> None:
    deleted = store.purge(parse_duration(older_than))  # checked by the parser already
    for entry_id in deleted:
        out.write(f"deleted {entry_id}\n")
    out.write(f"purged {len(deleted)} entries older than {older_than}\n")


def _json(store: QuarantineStore, record: QuarantineRecord) -> dict[str, object]:
    return {**record.to_json(), "data_path": str(store.data_path(record.id))}


def _local_time(epoch: float, *, zone: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" + (" %z" if zone else ""), time.localtime(epoch))


def _human_size(size: int) -> str:
    """As ls -h prints it: 68, 1.5K, 12M."""
    if size < 1024:
        return str(size)
    value = float(size)
    for unit in "KMGT":
        value /= 1024
        if value < 1024 or unit == "T":
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")
