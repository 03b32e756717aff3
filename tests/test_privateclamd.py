"""The private clamd harness works against the real /usr/sbin/clamd."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from clamwatch.privateclamd import PrivateClamd
from clamwatch.testsig import EICAR_SIGNATURE
from helpers import ClamdFactory, clamd_command, run_clamdscan


def test_ping_over_unix_socket(clamd: PrivateClamd) -> None:
    assert clamd.unix_address == f"unix://{clamd.socket_path}"
    assert clamd.socket_path.is_absolute()
    assert clamd_command(clamd.unix_address, b"zPING\0") == b"PONG\0"


def test_ping_over_tcp(clamd: PrivateClamd) -> None:
    assert clamd.tcp_address == f"tcp://127.0.0.1:{clamd.tcp_port}"
    assert clamd_command(clamd.tcp_address, b"nPING\n") == b"PONG\n"


def test_version_names_clamav(clamd: PrivateClamd) -> None:
    assert clamd_command(clamd.unix_address, b"zVERSION\0").startswith(b"ClamAV ")


def test_clamdscan_finds_eicar(clamd: PrivateClamd, eicar: bytes, tmp_path: Path) -> None:
    infected = tmp_path / "eicar.txt"
    infected.write_bytes(eicar)
    clean = tmp_path / "clean.txt"
    clean.write_bytes(b"nothing to see here\n")

    result = run_clamdscan(clamd, "--no-summary", "--fdpass", str(infected), str(clean))

    # clamdscan(1): exit status 1 means "virus(es) found".
    assert result.returncode == 1, result.stderr
    assert f"{infected}: {EICAR_SIGNATURE} FOUND" in result.stdout.splitlines()
    assert f"{clean}: OK" in result.stdout.splitlines()


def test_kill_then_restart_keeps_socket_and_port(clamd_factory: ClamdFactory) -> None:
    server = clamd_factory()
    first_pid = server.pid
    port = server.tcp_port
    assert first_pid is not None
    # clamd closes first, so these leave TIME_WAIT entries on its port; the
    # restarted clamd must still be able to bind it.
    for _ in range(3):
        assert clamd_command(server.tcp_address, b"zPING\0") == b"PONG\0"

    server.kill()
    assert server.pid is None
    # SIGKILL leaves the socket file behind with nobody listening on it.
    with pytest.raises(ConnectionRefusedError):
        clamd_command(server.unix_address, b"zPING\0")

    # clamd removes the stale socket itself (FixStaleSocket, clamd.conf(5)).
    server.restart()
    assert server.pid not in (None, first_pid)
    assert server.tcp_port == port
    assert clamd_command(server.unix_address, b"zPING\0") == b"PONG\0"
    assert clamd_command(server.tcp_address, b"zPING\0") == b"PONG\0"


def test_stop_is_idempotent(clamd_factory: ClamdFactory) -> None:
    server = clamd_factory(tcp=False)
    server.stop()
    server.stop()
    server.kill()
    assert server.pid is None
    assert not server.socket_path.exists()  # clamd removes it on a clean exit


def test_settings_are_written_to_clamd_conf(clamd_factory: ClamdFactory) -> None:
    server = clamd_factory(
        max_threads=2,
        stream_max_length="1K",
        read_timeout=7,
        command_read_timeout=3,
        max_queue=20,
        extra={"MaxFileSize": "2M", "LocalSocketMode": "666"},
    )
    lines = server.conf_path.read_text(encoding="utf-8").splitlines()
    for line in (
        "Foreground yes",
        f"LocalSocket {server.socket_path}",
        f"TCPSocket {server.tcp_port}",
        "TCPAddr 127.0.0.1",
        f"DatabaseDirectory {server.db_dir}",
        "MaxThreads 2",
        "StreamMaxLength 1K",
        "ReadTimeout 7",
        "CommandReadTimeout 3",
        "MaxQueue 20",
        "MaxFileSize 2M",
    ):
        assert line in lines
    # extra overrides a default instead of adding a second line.
    assert [line for line in lines if line.startswith("LocalSocketMode ")] == [
        "LocalSocketMode 666"
    ]


def test_stream_max_length_is_enforced_by_clamd(clamd_factory: ClamdFactory) -> None:
    server = clamd_factory(stream_max_length="1K")

    def instream(size: int) -> bytes:
        chunk = struct.pack(">I", size) + b"a" * size
        return clamd_command(server.tcp_address, b"zINSTREAM\0" + chunk + struct.pack(">I", 0))

    assert instream(1024) == b"stream: OK\0"
    assert instream(1025) == b"INSTREAM size limit exceeded. ERROR\0"


def test_tcp_off_writes_no_tcp_socket(clamd_factory: ClamdFactory) -> None:
    server = clamd_factory(tcp=False)
    assert server.tcp_port is None
    assert "TCPSocket" not in server.conf_path.read_text(encoding="utf-8")
    with pytest.raises(RuntimeError):
        _ = server.tcp_address


def test_failed_start_reports_clamd_log(clamd_factory: ClamdFactory) -> None:
    with pytest.raises(RuntimeError, match="NoSuchOption"):
        clamd_factory(extra={"NoSuchOption": "yes"})


def test_too_long_socket_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shorter workdir"):
        PrivateClamd(tmp_path / ("x" * 100))


def test_config_values_cannot_inject_lines(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"invalid clamd\.conf setting"):
        PrivateClamd(tmp_path, extra={"MaxThreads": "2\nUser nobody"})


def test_reload_returns_once_the_new_database_is_in_use(
    clamd_factory: ClamdFactory, tmp_path: Path
) -> None:
    server = clamd_factory()
    sample = tmp_path / "sample.bin"
    sample.write_bytes(b"clamwatch reload probe " * 8)
    assert run_clamdscan(server, "--no-summary", "--fdpass", str(sample)).returncode == 0
    # A signature for exactly that content: the old engine (and its cache
    # of clean hashes) would still say OK, the reloaded one must find it.
    with (server.db_dir / "probe.ndb").open("w", encoding="ascii") as db:
        db.write(f"Reload-Probe:0:0:{sample.read_bytes().hex()}\n")
    server.reload()
    result = run_clamdscan(server, "--no-summary", "--fdpass", str(sample))
    assert result.stdout.splitlines() == [f"{sample}: Reload-Probe.UNOFFICIAL FOUND"]
    server.reload()  # a second reload waits for its own activation, not the first's
    assert clamd_command(server.unix_address, b"zPING\0") == b"PONG\0"
