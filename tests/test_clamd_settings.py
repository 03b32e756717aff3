"""From the admin's clamd settings and clamd.conf to the engine's: clamd's limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from clamwatch.clamd import settings as settings_module
from clamwatch.clamd.address import ClamdConf
from clamwatch.clamd.settings import (
    CLAMD_LARGEST_SCANNED,
    UNLIMITED,
    ClamdSettings,
    resolve_engine,
    scanned_size_limit,
)

M = 1024 * 1024


def conf(max_file_size: int | None = None, max_scan_size: int | None = None) -> ClamdConf:
    return ClamdConf(
        "/etc/clamav/clamd.conf", max_file_size=max_file_size, max_scan_size=max_scan_size
    )


@pytest.mark.parametrize(
    ("clamd_conf", "expected"),
    [
        (None, (100 * M, "clamd's default MaxFileSize")),
        (conf(), (100 * M, "clamd's default MaxFileSize")),
        # Debian's clamd.conf
        (conf(25 * M, 100 * M), (25 * M, "MaxFileSize in /etc/clamav/clamd.conf")),
        (conf(None, 5 * M), (5 * M, "MaxScanSize in /etc/clamav/clamd.conf")),
        (conf(0), (400 * M, "clamd's default MaxScanSize")),  # 0: no limit
        (conf(0, 0), (CLAMD_LARGEST_SCANNED, "the largest file clamd scans at all")),
        (conf(4000 * M, 4000 * M), (CLAMD_LARGEST_SCANNED, "the largest file clamd scans at all")),
    ],
)
def test_the_largest_file_clamd_scans(
    clamd_conf: ClamdConf | None, expected: tuple[int, str]
) -> None:
    assert scanned_size_limit(clamd_conf) == expected


def system_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> str:
    """``text`` as the system's clamd.conf, as resolve_engine finds it."""
    path = tmp_path / "clamd.conf"
    path.write_text(text)
    monkeypatch.setattr(settings_module, "DEFAULT_CLAMD_CONF", str(path))
    return str(path)


@pytest.mark.parametrize(
    ("address", "text", "read"),
    [
        ("unix:///run/clamav/clamd.ctl", "LocalSocket /run/clamav/clamd.ctl\n", True),
        ("unix:///run/other.ctl", "LocalSocket /run/clamav/clamd.ctl\n", False),
        ("tcp://127.0.0.1:3310", "TCPSocket 3310\n", True),
        ("tcp://localhost:3310", "TCPSocket 3310\n", True),
        ("tcp://10.0.0.5:3310", "TCPSocket 3310\nTCPAddr 10.0.0.5\n", True),
        ("tcp://127.0.0.1:3310", "TCPSocket 3310\nTCPAddr 10.0.0.5\n", False),
        ("tcp://127.0.0.1:3311", "TCPSocket 3310\n", False),
        ("tcp://192.0.2.7:3310", "TCPSocket 3310\n", False),  # another machine's clamd
    ],
)
def test_the_system_clamd_conf_gives_the_limits_of_the_clamd_it_configures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, address: str, text: str, read: bool
) -> None:
    path = system_conf(tmp_path, monkeypatch, text + "MaxFileSize 25M\nStreamMaxLength 20M\n")
    _, engine = resolve_engine(ClamdSettings(address=address, clamd_conf=path), give_up_after=None)
    if read:
        assert (engine.max_file_size, engine.max_stream_size) == (25 * M, 20 * M)
        assert engine.max_file_size_from == f"MaxFileSize in {path}"
    else:
        assert (engine.max_file_size, engine.max_stream_size) == (100 * M, None)
        assert engine.max_file_size_from == "clamd's default MaxFileSize"


def test_a_missing_or_broken_system_clamd_conf_leaves_clamds_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = system_conf(tmp_path, monkeypatch, "LocalSocket /run/c.ctl\nMaxFileSize lots\n")
    _, engine = resolve_engine(
        ClamdSettings(address="unix:///run/c.ctl", clamd_conf=path), give_up_after=None
    )
    assert engine.max_file_size == 100 * M
    monkeypatch.setattr(settings_module, "DEFAULT_CLAMD_CONF", str(tmp_path / "none.conf"))
    _, engine = resolve_engine(
        ClamdSettings(address="unix:///run/c.ctl", clamd_conf=tmp_path / "none.conf"),
        give_up_after=None,
    )
    assert engine.max_file_size == 100 * M


def test_max_file_size_as_set_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = system_conf(tmp_path, monkeypatch, "LocalSocket /run/c.ctl\nMaxFileSize 25M\n")
    _, engine = resolve_engine(
        ClamdSettings(address="unix:///run/c.ctl", clamd_conf=path, max_file_size=5 * M),
        give_up_after=None,
    )
    assert (engine.max_file_size, engine.max_file_size_from) == (5 * M, "as given to clamwatch")


def test_a_clamd_conf_named_by_the_admin_is_read_with_an_address(tmp_path: Path) -> None:
    path = tmp_path / "private.conf"
    path.write_text("LocalSocket /elsewhere.ctl\nMaxScanSize 7M\n")
    _, engine = resolve_engine(
        ClamdSettings(address="unix:///run/c.ctl", clamd_conf=path), give_up_after=None
    )
    assert (engine.max_file_size, engine.max_file_size_from) == (7 * M, f"MaxScanSize in {path}")


@pytest.mark.parametrize(
    ("text", "expected"), [("", 120.0), ("MaxScanTime 30000\n", 30.0), ("MaxScanTime 0\n", None)]
)
def test_max_scan_time_comes_from_clamd_conf_in_milliseconds(
    tmp_path: Path, text: str, expected: float | None
) -> None:
    path = tmp_path / "clamd.conf"
    path.write_text("LocalSocket /run/c.ctl\n" + text)
    _, engine = resolve_engine(ClamdSettings(clamd_conf=path), give_up_after=None)
    assert engine.max_scan_time == expected


@pytest.mark.parametrize(
    ("text", "given", "expected"),
    [
        ("", None, 180.0),  # clamd's default MaxScanTime, 120 s
        ("MaxScanTime 600000\n", None, 660.0),
        ("MaxScanTime 30000\n", None, 180.0),
        ("MaxScanTime 0\n", None, 3600.0),  # no limit in clamd
        ("MaxScanTime 600000\n", 90.0, 90.0),
    ],
)
def test_a_requests_deadline_stays_above_clamds_max_scan_time(
    tmp_path: Path, text: str, given: float | None, expected: float
) -> None:
    path = tmp_path / "clamd.conf"
    path.write_text("LocalSocket /run/c.ctl\n" + text)
    _, engine = resolve_engine(
        ClamdSettings(clamd_conf=path, request_timeout=given), give_up_after=None
    )
    assert engine.request_timeout == expected


def test_with_alert_exceeds_max_clamd_reports_its_limits_itself(tmp_path: Path) -> None:
    path = tmp_path / "clamd.conf"
    path.write_text(
        "LocalSocket /run/c.ctl\nMaxFileSize 1M\nMaxScanTime 5000\nAlertExceedsMax yes\n"
    )
    _, engine = resolve_engine(ClamdSettings(clamd_conf=path), give_up_after=None)
    assert (engine.max_file_size, engine.max_file_size_from) == (
        UNLIMITED,
        f"AlertExceedsMax in {path}",
    )
    assert engine.max_scan_time is None
    # a limit the admin states still holds
    _, engine = resolve_engine(
        ClamdSettings(clamd_conf=path, max_file_size=5 * M), give_up_after=None
    )
    assert engine.max_file_size == 5 * M


def test_limits_read_again_replace_only_the_limits(tmp_path: Path) -> None:
    """With clamd restarted, its limits (and the request deadline MaxScanTime sets)
    come from clamd.conf again; what the admin set for clamwatch stays."""
    path = tmp_path / "clamd.conf"
    path.write_text("LocalSocket /run/c.ctl\nMaxFileSize 50M\nMaxScanTime 600000\n")
    _, before = resolve_engine(ClamdSettings(clamd_conf=path, sessions=3), give_up_after=None)
    path.write_text("LocalSocket /run/c.ctl\nMaxFileSize 5M\nStreamMaxLength 2M\n")
    _, fresh = resolve_engine(ClamdSettings(clamd_conf=path), give_up_after=None)
    after = before.with_limits_of(fresh)
    assert after.limits == fresh.limits == (2 * M, 5 * M, f"MaxFileSize in {path}", 120.0, 180.0)
    assert before.limits == (None, 50 * M, f"MaxFileSize in {path}", 600.0, 660.0)
    assert after.sessions == 3
    assert after.with_limits_of(before) == before  # every other field kept
