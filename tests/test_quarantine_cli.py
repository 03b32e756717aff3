"""`clamwatch quarantine` as an admin runs it: a real process on a real store."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clamwatch import quarantine as quarantine_module
from clamwatch.files import OpenedFile, open_for_scan
from clamwatch.quarantine import QuarantineRecord, QuarantineStore
from clamwatch.testsig import EICAR_SIGNATURE

DAY = 86400.0


def clamwatch(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clamwatch", *map(str, args)],
        capture_output=True,
        text=True,
        errors="surrogateescape",
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


class Entries:
    """Puts files into a store as the daemon does: opened, then quarantined."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.uploads = root / "uploads"
        self.uploads.mkdir()
        self.store = QuarantineStore(root / "quarantine")
        self.monkeypatch = monkeypatch

    def add(
        self, name: str | bytes, content: bytes, age: float = 0.0, owner: int = 0
    ) -> QuarantineRecord:
        path = os.path.join(os.fsencode(self.uploads), os.fsencode(name))
        with open(path, "wb") as handle:
            handle.write(content)
        os.chown(path, owner, owner)
        opened = open_for_scan(os.fsdecode(path))
        assert isinstance(opened, OpenedFile)
        self.monkeypatch.setattr(quarantine_module, "_clock", lambda: time.time() - age)
        try:
            record = self.store.quarantine(
                opened,
                signature=EICAR_SIGNATURE,
                clamd_version="ClamAV 1.4.1/27470",
                watch=str(self.uploads),
                keep_original=False,
            )
        finally:
            opened.close()
        assert record is not None
        return record


@pytest.fixture
def entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Entries:
    return Entries(tmp_path, monkeypatch)


def quarantine(entries: Entries, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return clamwatch("quarantine", "--directory", entries.store.directory, *args)


def test_list_shows_a_table_oldest_first(entries: Entries, eicar: bytes) -> None:
    new = entries.add("new.com", eicar)
    old = entries.add(b"caf\xe9\nname.com", eicar + b" " * 2000, age=3 * DAY)
    result = quarantine(entries, "list")
    assert result.returncode == 0, result.stderr
    header, first, second = result.stdout.splitlines()
    assert header.split() == ["ID", "DETECTED", "SIZE", "SIGNATURE", "ORIGINAL", "PATH"]
    assert first.startswith(old.id)
    assert first.endswith(f"  2.0K  {EICAR_SIGNATURE}  {entries.uploads}/caf\\xe9\\nname.com")
    assert second.startswith(new.id)
    assert second.endswith(f"    68  {EICAR_SIGNATURE}  {entries.uploads}/new.com")


def test_list_json_has_one_object_per_entry(entries: Entries, eicar: bytes) -> None:
    record = entries.add(b"caf\xe9.com", eicar)
    result = quarantine(entries, "list", "--json")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    shown = json.loads(line)
    assert shown["id"] == record.id
    assert base64.b64decode(shown["original_path_b64"]) == os.fsencode(record.original_path)
    assert shown["original_path"] == f"{entries.uploads}/caf\\xe9.com"
    assert shown["sha256"] == record.sha256
    assert shown["data_path"] == str(entries.store.directory / record.id)


def test_list_of_an_empty_or_missing_store(entries: Entries, tmp_path: Path) -> None:
    result = quarantine(entries, "list")
    assert (result.returncode, result.stdout) == (
        0,
        f"No quarantined files in {entries.store.directory}.\n",
    )
    missing = tmp_path / "typo"
    result = clamwatch("quarantine", "--directory", missing, "list")
    assert (result.returncode, result.stdout) == (
        0,
        f"No quarantined files: {missing} does not exist.\n",
    )
    assert not missing.exists()  # looking never creates it
    assert clamwatch("quarantine", "--directory", missing, "list", "--json").stdout == ""
    # a record that cannot be read: not "no quarantined files" and status 0
    entries.store.directory.mkdir(exist_ok=True)
    (entries.store.directory / "20200101T000000Z-0badbad0.json").write_text("{")
    result = quarantine(entries, "list")
    assert result.returncode == 1
    assert result.stderr.endswith(
        "clamwatch quarantine: not listed, their records unreadable or missing:"
        " 20200101T000000Z-0badbad0 ('delete ID' removes a damaged one)\n"
    )
    result = quarantine(entries, "delete", "20200101T000000Z-0badbad0")
    assert (result.returncode, result.stdout) == (
        0,
        "deleted 20200101T000000Z-0badbad0 (its record damaged)\n",
    )
    # content whose record is gone (a crash between the move into the
    # quarantine and the record's write): listed on stderr, and deletable
    (entries.store.directory / "20200101T000000Z-0ddba11e").write_bytes(b"orphan")
    result = quarantine(entries, "list")
    assert result.returncode == 1 and "20200101T000000Z-0ddba11e" in result.stderr
    result = quarantine(entries, "delete", "20200101T000000Z-0ddba11e")
    assert (result.returncode, result.stdout) == (
        0,
        "deleted 20200101T000000Z-0ddba11e (content without its record)\n",
    )
    assert not (entries.store.directory / "20200101T000000Z-0ddba11e").exists()
    # a file given for the folder: said so, not "no quarantined files"
    (tmp_path / "a-file").write_text("x")
    result = clamwatch("quarantine", "--directory", tmp_path / "a-file", "list")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.endswith(f": {tmp_path}/a-file is not a directory\n")


def test_show(entries: Entries, eicar: bytes) -> None:
    record = entries.add("virus.com", eicar)
    result = quarantine(entries, "show", record.id)
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    fields = {name: value.strip() for name, value in fields.items()}
    assert fields["id"] == record.id
    assert fields["original path"] == f"{entries.uploads}/virus.com"
    assert fields["signature"] == EICAR_SIGNATURE
    assert fields["clamd version"] == "ClamAV 1.4.1/27470"
    assert fields["how"] == "moved (the original name was removed)"
    assert fields["mode"] == f"{stat.filemode(record.mode)} ({stat.S_IMODE(record.mode):04o})"
    assert fields["size"] == "68 bytes"
    assert fields["sha256"] == record.sha256
    assert fields["data file"] == str(entries.store.directory / record.id)

    result = quarantine(entries, "show", record.id, "--json")
    assert json.loads(result.stdout)["mtime_ns"] == record.mtime_ns


@pytest.mark.parametrize("action", ["show", "restore", "delete"])
def test_an_unknown_id_exits_1(entries: Entries, action: str) -> None:
    result = quarantine(entries, action, "20200101T000000Z-00000000")
    assert result.returncode == 1
    assert result.stderr == (
        "clamwatch quarantine: no quarantine entry 20200101T000000Z-00000000"
        f" in {entries.store.directory}\n"
    )
    result = quarantine(entries, action, "../../etc/passwd")
    assert result.returncode == 1
    assert "'../../etc/passwd' is not a quarantine entry id" in result.stderr


def test_restore(entries: Entries, eicar: bytes, tmp_path: Path) -> None:
    record = entries.add("virus.com", eicar)
    original = entries.uploads / "virus.com"
    result = quarantine(entries, "restore", record.id)
    assert (result.returncode, result.stdout) == (0, f"restored {record.id} to {original}\n")
    assert original.read_bytes() == eicar
    assert original.stat().st_mtime_ns == record.mtime_ns
    assert quarantine(entries, "show", record.id).returncode == 1

    record = entries.add("virus.com", eicar)
    original.write_bytes(b"a newer upload\n")
    result = quarantine(entries, "restore", record.id)
    assert result.returncode == 1
    assert result.stderr == (
        f"clamwatch quarantine: cannot restore {record.id}: {original} already exists"
        " (--force replaces it)\n"
    )
    assert original.read_bytes() == b"a newer upload\n"

    # "--to DIR/" where no DIR is: an error, no file named DIR
    result = quarantine(entries, "restore", record.id, "--to", f"{tmp_path}/inspect/")
    assert result.returncode == 1
    assert result.stderr.endswith(f"to {tmp_path}/inspect/: no such directory\n")
    assert not (tmp_path / "inspect").exists()

    elsewhere = tmp_path / "inspect.bin"
    result = quarantine(entries, "restore", record.id, "--to", elsewhere)
    assert (result.returncode, result.stdout) == (0, f"restored {record.id} to {elsewhere}\n")
    assert elsewhere.read_bytes() == eicar

    record = entries.add("virus.com", eicar)
    original.write_bytes(b"a newer upload\n")
    result = quarantine(entries, "restore", "--force", record.id)
    assert result.returncode == 0, result.stderr
    assert original.read_bytes() == eicar


def test_a_restore_that_cannot_set_the_owner_says_so(entries: Entries, eicar: bytes) -> None:
    """Not a bare "Operation not permitted": which part failed, and why."""
    record = entries.add("virus.com", eicar, owner=1234)
    result = subprocess.run(
        ["setpriv", "--bounding-set=-chown", sys.executable, "-m", "clamwatch", "quarantine",
         "--directory", str(entries.store.directory), "restore", record.id],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        f"clamwatch quarantine: cannot restore {record.id} to {entries.uploads}/virus.com:"
        f" cannot give it back its owner and group {record.owner}:{record.group}"
        " (that takes root)\n"
    )
    assert not (entries.uploads / "virus.com").exists()
    assert quarantine(entries, "show", record.id).returncode == 0


def test_delete(entries: Entries, eicar: bytes) -> None:
    record = entries.add("virus.com", eicar)
    kept = entries.add("other.com", eicar + b"x")
    result = quarantine(entries, "delete", record.id)
    assert (result.returncode, result.stdout) == (
        0,
        f"deleted {record.id} ({entries.uploads}/virus.com)\n",
    )
    assert entries.store.list() == [kept]
    assert not (entries.store.directory / record.id).exists()


def test_purge(entries: Entries, eicar: bytes) -> None:
    old = entries.add("old.com", eicar, age=31 * DAY)
    recent = entries.add("recent.com", eicar + b"x", age=29 * DAY)
    result = quarantine(entries, "purge", "--older-than", "30d")
    assert (result.returncode, result.stdout) == (
        0,
        f"deleted {old.id}\npurged 1 entries older than 30d\n",
    )
    assert entries.store.list() == [recent]


def test_purge_needs_a_valid_duration(entries: Entries) -> None:
    result = quarantine(entries, "purge", "--older-than", "a month")
    assert result.returncode == 2
    assert "'a month' is not a duration" in result.stderr
    assert quarantine(entries, "purge").returncode == 2


def test_the_directory_may_follow_the_action(entries: Entries, eicar: bytes) -> None:
    record = entries.add("virus.com", eicar)
    result = clamwatch("quarantine", "show", record.id, "--directory", entries.store.directory)
    assert result.returncode == 0, result.stderr
    # given relative, the paths printed are whole: a program reading --json
    # has another working directory
    relative = subprocess.run(
        [sys.executable, "-m", "clamwatch", "quarantine", "--directory", "quarantine", "list",
         "--json"],
        cwd=entries.store.directory.parent, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    (listed,) = [json.loads(line) for line in relative.stdout.splitlines()]
    assert listed["data_path"] == str(entries.store.directory / record.id)


def test_the_directory_from_the_configuration(
    entries: Entries, eicar: bytes, tmp_path: Path
) -> None:
    record = entries.add("virus.com", eicar)
    config = tmp_path / "clamwatch.toml"
    config.write_text(f'[quarantine]\ndirectory = "{entries.store.directory}"\n')
    result = clamwatch("quarantine", "--config", config, "list", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == record.id


def test_configuration_errors_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = clamwatch("quarantine", "--config", missing, "list")
    assert result.returncode == 2
    assert result.stderr == f"clamwatch quarantine: {missing}: No such file or directory\n"

    bad = tmp_path / "bad.toml"
    bad.write_text('[quarantine]\ndirectory = "relative/path"\n')
    result = clamwatch("quarantine", "--config", bad, "list")
    assert result.returncode == 2
    assert "[quarantine] directory = 'relative/path': expected an absolute path" in result.stderr

    assert clamwatch("quarantine").returncode == 2  # no action


def test_help_documents_exit_status() -> None:
    result = clamwatch("quarantine", "--help")
    assert result.returncode == 0
    assert "exit status:" in result.stdout
    for action in ("list", "show", "restore", "delete", "purge"):
        assert action in result.stdout
