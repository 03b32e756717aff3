"""Events in a real journald (run in a private mount namespace, as design.md describes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clamwatch.eventkind import EventKind
from clamwatch.events import MESSAGE_IDS
from clamwatch.privateclamd import PrivateClamd
from clamwatch.testsig import EICAR_SIGNATURE
from daemonproc import DaemonProcess, write_config

JOURNALD = Path("/lib/systemd/systemd-journald")


@dataclass
class PrivateJournal:
    pid: int
    directory: Path  # where journald writes (Storage=volatile: its /run/log/journal)

    @property
    def enter(self) -> tuple[str, ...]:
        """A command prefix that runs in journald's mount namespace."""
        return ("nsenter", "-t", str(self.pid), "-m", "--")

    def read(self, *matches: str) -> list[dict[str, Any]]:
        result = subprocess.run(
            ["journalctl", "-D", str(self.directory), "-o", "json", "--no-pager", *matches],
            capture_output=True,
            text=True,
            check=False,
        )
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def wait(self, *matches: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not (entries := self.read(*matches)):
            assert time.monotonic() < deadline, f"nothing in the journal for {matches}"
            time.sleep(0.1)
        return entries


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[PrivateJournal]:
    for tool in ("unshare", "nsenter", "journalctl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing")
    if not JOURNALD.exists() or os.geteuid() != 0:
        pytest.skip("a private journald needs systemd-journald and root")
    base = tmp_path / "journal"
    for name in ("run-systemd", "run-log", "var-log-journal"):
        (base / name).mkdir(parents=True)
    conf = base / "journald.conf"
    conf.write_text("[Journal]\nStorage=volatile\nReadKMsg=no\n")
    script = (
        f"mount --bind {base}/run-systemd /run/systemd && "
        f"mount --bind {base}/run-log /run/log && "
        f"mount --bind {base}/var-log-journal /var/log/journal && "
        f"mount --bind {conf} /etc/systemd/journald.conf && "
        f"exec {JOURNALD}"
    )
    os.makedirs("/var/log/journal", exist_ok=True)
    process = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socket_path = base / "run-systemd" / "journal" / "socket"
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        assert process.poll() is None, "systemd-journald exited"
        assert time.monotonic() < deadline, "systemd-journald did not create its socket"
        time.sleep(0.05)
    try:
        yield PrivateJournal(process.pid, base / "run-log" / "journal")
    finally:
        process.terminate()
        process.wait(10)


def _readme_journal_fields() -> set[str]:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    part = readme[readme.index("- **Journal**: under systemd") : readme.index("  The kinds:")]
    fields = set(re.findall(r"CLAMWATCH_[A-Z_]+", part))
    assert len(fields) >= 5, part
    return fields


def test_detection_in_the_journal_with_fields(
    journal: PrivateJournal, tmp_path: Path, watched: Path, clamd: PrivateClamd, eicar: bytes
) -> None:
    config = write_config(
        tmp_path / "c.toml",
        address=clamd.unix_address,
        watches=[watched],
        state_directory=tmp_path / "state",
    )
    with DaemonProcess(config, prefix=journal.enter, log_target="journal"):
        journal.wait(f"MESSAGE_ID={MESSAGE_IDS[EventKind.READY]}")
        bad = watched / "caf\udce9.exe"  # a name that is not UTF-8
        bad.write_bytes(eicar)
        detection_id = MESSAGE_IDS[EventKind.DETECTION]
        (entry,) = journal.wait(f"MESSAGE_ID={detection_id}")
        moved = journal.wait(f"MESSAGE_ID={MESSAGE_IDS[EventKind.ACTION_DONE]}")
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "clamwatch"
    assert entry["CLAMWATCH_VERDICT"] == "infected"
    assert entry["CLAMWATCH_SIGNATURE"] == EICAR_SIGNATURE
    assert entry["CLAMWATCH_ACTION"] == "move"
    assert entry["CLAMWATCH_WATCH"] == str(watched)
    assert float(entry["CLAMWATCH_LATENCY_MS"]) >= 0
    # the exact bytes of the name (journalctl shows non-UTF-8 values as byte arrays)
    assert bytes(entry["CLAMWATCH_PATH"]) == os.fsencode(bad)
    assert moved[0]["CLAMWATCH_QUARANTINE_ID"]
    # the fields README's "Journal" paragraph names are those sent
    assert _readme_journal_fields() <= entry.keys() | moved[0].keys()
    # filtering on a field finds it
    clean_name = watched / "plain.exe"
    assert journal.read(f"CLAMWATCH_PATH={clean_name}") == []
    by_path = journal.read(f"CLAMWATCH_SIGNATURE={EICAR_SIGNATURE}")
    assert {e["MESSAGE_ID"] for e in by_path} >= {detection_id}
    stopped = journal.wait(f"MESSAGE_ID={MESSAGE_IDS[EventKind.STOPPED]}")
    assert stopped[0]["PRIORITY"] == "6"
    # an event names no line of code; a message logged through logging names its call
    assert "CODE_FILE" not in entry and "CODE_FUNC" not in entry
    logged = [
        e for e in journal.read("SYSLOG_IDENTIFIER=clamwatch") if e["MESSAGE"].startswith("clamd ")
    ]
    assert logged, "the engine's message on its first session is not in the journal"
    assert logged[0]["CODE_FILE"].endswith("clamwatch/clamd/engine.py")
    assert logged[0]["CODE_FUNC"] == "_session_ready"
    assert int(logged[0]["CODE_LINE"]) > 0


def test_filter_by_path(
    journal: PrivateJournal, tmp_path: Path, watched: Path, clamd: PrivateClamd, eicar: bytes
) -> None:
    config = write_config(
        tmp_path / "c.toml",
        address=clamd.unix_address,
        watches=[watched],
        state_directory=tmp_path / "state",
        watch_options={"on_infected": ["tag"]},
    )
    with DaemonProcess(config, prefix=journal.enter, log_target="journal"):
        journal.wait(f"MESSAGE_ID={MESSAGE_IDS[EventKind.READY]}")
        bad = watched / "invoice.pdf.exe"
        bad.write_bytes(eicar)
        entries = journal.wait(f"CLAMWATCH_PATH={bad}", "CLAMWATCH_EVENT=detection")
    assert entries[0]["MESSAGE"] == f"{bad}: {EICAR_SIGNATURE} FOUND"


_LOG_BOTH_WAYS = """
import logging
from clamwatch.eventkind import EventKind
from clamwatch.events import emit_fields
from clamwatch.journal import JournalHandler

root = logging.getLogger()
root.setLevel(logging.INFO)
root.addHandler(JournalHandler())
emit_fields(EventKind.CLEAN, "alone: OK", logging.INFO, {"path": "/up/alone"})
root.addHandler(logging.NullHandler())  # a second handler: events then go through logging
emit_fields(EventKind.CLEAN, "beside another handler: OK", logging.INFO, {"path": "/up/beside"})
logging.getLogger("clamwatch.test").warning("a plain message")
"""


def test_only_a_plain_message_names_its_line_of_code(journal: PrivateJournal) -> None:
    """CODE_FILE, CODE_LINE and CODE_FUNC name the logging call; an event has none to name.

    Events reach the journal straight (one handler) or through logging
    (more handlers): the same entry either way.
    """
    subprocess.run([*journal.enter, sys.executable, "-c", _LOG_BOTH_WAYS], check=True)
    plain = journal.wait("MESSAGE=a plain message")
    alone = journal.wait("CLAMWATCH_PATH=/up/alone")
    beside = journal.wait("CLAMWATCH_PATH=/up/beside")
    for event in (alone[0], beside[0]):
        assert event["MESSAGE_ID"] == MESSAGE_IDS[EventKind.CLEAN]
        assert event["CLAMWATCH_EVENT"] == "clean"
        assert event["PRIORITY"] == "6"
        assert not {"CODE_FILE", "CODE_LINE", "CODE_FUNC"} & event.keys()
    assert plain[0]["PRIORITY"] == "4"
    assert plain[0]["CODE_FILE"] == "<string>"
    assert plain[0]["CODE_LINE"] == "13"
    assert plain[0]["CODE_FUNC"] == "<module>"
    assert plain[0]["CLAMWATCH_LOGGER"] == "clamwatch.test"
