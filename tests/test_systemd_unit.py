"""Lint of the systemd units and packaging files, with systemd's own tools.

`systemd-analyze verify` and `systemd-analyze security --offline=yes` need no
running systemd (design.md, "Real parts in tests"); the catalog goes through
`journalctl --update-catalog` in a scratch root, sysusers.d and tmpfiles.d
through systemd-sysusers and systemd-tmpfiles there. The units as they
behave under a real systemd: test_systemd_nspawn.py.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from clamwatch.config import DaemonSettings, QuarantineSettings
from clamwatch.eventkind import EventKind
from clamwatch.events import MESSAGE_IDS
from unitfiles import (
    CATALOG,
    DROP_IN_EXAMPLE,
    INSTALLED_BINARY,
    SYSTEMD_DIR,
    SYSUSERS,
    TMPFILES,
    UNITS,
    copy_unit,
    settings,
    venv_binary,
)

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is missing (Debian package systemd): run ./dev setup",
)

# The bar set by issue 5; systemd calls up to 3.9 "OK" and up to 5.9 "MEDIUM".
MAX_EXPOSURE = 2.5

_EXPOSURE = re.compile(r"^→ Overall exposure level for (\S+): (\d+\.\d+) ", re.MULTILINE)

# What an instance of the template may do differently from clamwatch.service.
_PER_INSTANCE = {"Description", "Documentation", "ExecStart", "ExecReload", "StateDirectory"}


def _run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def _binary() -> Path:
    binary = venv_binary()
    assert binary.exists(), f"{binary} is missing: run ./dev setup"
    return binary


def _unit_settings(name: str) -> list[tuple[str, str, str]]:
    return settings((SYSTEMD_DIR / name).read_text(encoding="utf-8"))


def _all(name: str, key: str) -> list[str]:
    return [value for _, k, value in _unit_settings(name) if k == key]


def _one(name: str, key: str) -> str:
    values = _all(name, key)
    assert len(values) == 1, f"{name}: {key}= set {len(values)} times"
    return values[0]


def _microseconds(timespan: str) -> int:
    """A systemd time span in µs, as systemd itself parses it."""
    result = _run("systemd-analyze", "timespan", timespan)
    assert result.returncode == 0, result.stderr
    match = re.search(r"μs: (\d+)", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def _exposure(unit: Path) -> float:
    result = _run("systemd-analyze", "security", "--offline=yes", unit)
    assert result.returncode == 0, result.stdout + result.stderr
    match = _EXPOSURE.search(result.stdout)
    assert match, f"no overall exposure level in:\n{result.stdout}"
    return float(match.group(2))


def _uncommented_example() -> str:
    """The drop-in example with its commented-out settings switched on too."""
    return re.sub(r"^#([A-Z]\w*=)", r"\1", DROP_IN_EXAMPLE.read_text(encoding="utf-8"), flags=re.M)


# -- the units --------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNITS)
def test_verify_prints_nothing(tmp_path: Path, name: str) -> None:
    # verify insists that ExecStart= exists, hence a copy that starts the
    # venv's clamwatch; it loads the template as the instance clamwatch@i.
    unit = copy_unit(name, tmp_path, _binary())
    result = _run("systemd-analyze", "verify", unit)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("name", UNITS)
def test_security_exposure(tmp_path: Path, name: str) -> None:
    unit = copy_unit(name, tmp_path, _binary())
    exposure = _exposure(unit)
    print(f"{name}: overall exposure {exposure}")
    assert exposure <= MAX_EXPOSURE
    if name == "clamwatch.service":
        readme = (SYSTEMD_DIR.parent / "README.md").read_text(encoding="utf-8")
        assert f"`systemd-analyze security clamwatch` rates it {exposure} " in readme


def test_drop_in_example_verifies_and_keeps_the_score(tmp_path: Path) -> None:
    # A drop-in directory beside the unit is read by both tools, like one
    # in /etc/systemd/system/clamwatch.service.d/.
    unit = copy_unit("clamwatch.service", tmp_path, _binary())
    drop_ins = tmp_path / "clamwatch.service.d"
    drop_ins.mkdir()
    (drop_ins / "watched-trees.conf").write_text(_uncommented_example(), encoding="utf-8")
    result = _run("systemd-analyze", "verify", unit)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    assert _exposure(unit) <= MAX_EXPOSURE


def test_the_template_has_the_same_sandbox() -> None:
    main = [s for s in _unit_settings("clamwatch.service") if s[1] not in _PER_INSTANCE]
    template = [s for s in _unit_settings("clamwatch@.service") if s[1] not in _PER_INSTANCE]
    assert template == main
    assert _one("clamwatch@.service", "StateDirectory") == "clamwatch/%i"
    config = "--config /etc/clamwatch/%i.toml"
    assert _one("clamwatch@.service", "ExecStart") == f"{INSTALLED_BINARY} run {config}"
    assert _all("clamwatch@.service", "ExecReload") == [
        f"{INSTALLED_BINARY} check-config {config}",
        "/bin/kill -HUP $MAINPID",
    ]


def test_the_unit_fits_the_daemon() -> None:
    name = "clamwatch.service"
    assert _one(name, "ExecStart") == f"{INSTALLED_BINARY} run"
    assert _one(name, "Type") == "notify"
    # a broken configuration fails `systemctl reload` before any SIGHUP
    assert _all(name, "ExecReload") == [
        f"{INSTALLED_BINARY} check-config",
        "/bin/kill -HUP $MAINPID",
    ]
    # The daemon's default state directory and quarantine are what
    # StateDirectory= makes writable; the rest of /var/lib is read-only.
    state = Path("/var/lib") / _one(name, "StateDirectory")
    assert DaemonSettings().state_directory == state
    assert QuarantineSettings().directory.parent == state
    # SIGTERM: the scans in flight get stop_timeout, then the state is saved;
    # systemd must not SIGKILL it before.
    stop_timeout_us = int(DaemonSettings().stop_timeout * 1_000_000)
    assert _microseconds(_one(name, "TimeoutStopSec")) >= stop_timeout_us + 5_000_000
    assert _microseconds(_one(name, "WatchdogSec")) > 0


# -- the journal catalog ----------------------------------------------------------------

_ENTRY_HEADER = re.compile(r"^-- ([0-9a-f]{32})$")
_FIELD_REFERENCE = re.compile(r"@([^@\s]*)@")


def _catalog_entries() -> dict[str, list[tuple[dict[str, str], str]]]:
    """Each MESSAGE_ID's entries, (header fields, body), split as catalog.c does:
    an entry starts at a "-- ID" line, its header ends at the first empty line."""
    lines = CATALOG.read_text(encoding="utf-8").splitlines()
    starts = [number for number, line in enumerate(lines) if line.startswith("-- ")]
    assert starts, f"{CATALOG}: no entries"
    for line in lines[: starts[0]]:
        assert not line or line.startswith("#"), f"{CATALOG}: text before the first entry"
    entries: dict[str, list[tuple[dict[str, str], str]]] = {}
    for start, end in zip(starts, [*starts[1:], len(lines)], strict=True):
        match = _ENTRY_HEADER.match(lines[start])
        assert match, f"{CATALOG}:{start + 1}: malformed entry line {lines[start]!r}"
        block = lines[start + 1 : end]
        blank = block.index("") if "" in block else len(block)
        header: dict[str, str] = {}
        for offset, line in enumerate(block[:blank], start + 2):
            key, sep, value = line.partition(": ")
            assert sep and re.fullmatch(r"[A-Z][A-Za-z-]*", key), (
                f"{CATALOG}:{offset}: header line {line!r} is not 'Key: value'"
            )
            header[key] = value
        body = "\n".join(block[blank + 1 :]).strip()
        entries.setdefault(match.group(1), []).append((header, body))
    return entries


def test_catalog_has_one_well_formed_entry_per_message_id() -> None:
    # every kind of event has a MESSAGE_ID of its own, and nothing else does
    assert set(MESSAGE_IDS) == set(EventKind)
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)
    entries = _catalog_entries()
    assert sorted(entries) == sorted(MESSAGE_IDS.values())
    for kind, ident in MESSAGE_IDS.items():
        assert len(entries[ident]) == 1, f"{kind.name} ({ident}) has {len(entries[ident])} entries"
        header, body = entries[ident][0]
        assert header.get("Subject"), f"{kind.name}: no Subject:"
        assert header.get("Defined-By") == "clamwatch", f"{kind.name}: Defined-By: {header}"
        assert body, f"{kind.name}: no explanation"
        # journalctl -x replaces @FIELD@ with the entry's field: only ours
        for text in (header["Subject"], body):
            for field in _FIELD_REFERENCE.findall(text):
                assert re.fullmatch(r"CLAMWATCH_[A-Z_]+", field), f"{kind.name}: @{field}@"


def test_journalctl_reads_the_catalog(tmp_path: Path) -> None:
    # --root makes journalctl read <root>/usr/lib/systemd/catalog/*.catalog
    # and write <root>/var/lib/systemd/catalog/database, as a package's
    # postinst does with the real root.
    sources = tmp_path / "usr/lib/systemd/catalog"
    sources.mkdir(parents=True)
    shutil.copy(CATALOG, sources)
    update = _run("journalctl", f"--root={tmp_path}", "--update-catalog")
    assert (update.returncode, update.stdout + update.stderr) == (0, "")
    listed = _run("journalctl", f"--root={tmp_path}", "--list-catalog")
    assert listed.returncode == 0, listed.stderr
    subjects = dict(line.split(" ", 1) for line in listed.stdout.splitlines())
    expected = {
        ident: f"clamwatch: {entries[0][0]['Subject']}"
        for ident, entries in _catalog_entries().items()
    }
    assert subjects == expected
    for ident in MESSAGE_IDS.values():
        dumped = _run("journalctl", f"--root={tmp_path}", "--dump-catalog", ident)
        assert dumped.returncode == 0, dumped.stderr
        assert dumped.stdout.startswith(f"-- {ident}\n")
        assert "\nDefined-By: clamwatch\n" in dumped.stdout


# -- sysusers.d and tmpfiles.d --------------------------------------------------------


def _passwd_uid(root: Path, user: str) -> int:
    for line in (root / "etc/passwd").read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2])
    raise AssertionError(f"{user} is not in {root}/etc/passwd")


def test_tmpfiles_lines_never_age() -> None:
    # systemd-tmpfiles-clean deletes by age: never in the quarantine.
    for line in TMPFILES.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            columns = line.split()
            assert len(columns) == 7 and columns[5] == "-", line


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles sets owners: needs root")
def test_sysusers_and_tmpfiles_create_the_state_directory(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    users = _run("systemd-sysusers", f"--root={tmp_path}", SYSUSERS)
    assert users.returncode == 0, users.stderr
    uid = _passwd_uid(tmp_path, "clamwatch")
    assert 0 < uid < 1000  # a system user
    files = _run("systemd-tmpfiles", "--create", f"--root={tmp_path}", TMPFILES)
    assert (files.returncode, files.stdout + files.stderr) == (0, "")

    expected = {
        "etc/clamwatch/clamwatch.d": (0o755, 0),
        str(DaemonSettings().state_directory).lstrip("/"): (0o700, uid),
        str(QuarantineSettings().directory).lstrip("/"): (0o700, uid),
    }
    for relative, (mode, owner) in expected.items():
        st = (tmp_path / relative).lstat()
        assert stat.S_ISDIR(st.st_mode), relative
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, owner, owner), relative
