"""Helpers shared by tests that talk to a real clamd."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import pytest

from clamwatch.privateclamd import PrivateClamd

CLAMDSCAN_BINARY = Path("/usr/bin/clamdscan")


class ClamdFactory(Protocol):
    """Starts a PrivateClamd; takes PrivateClamd's keyword arguments."""

    def __call__(
        self,
        *,
        max_threads: int = ...,
        tcp: bool = ...,
        stream_max_length: str | None = ...,
        read_timeout: int | None = ...,
        command_read_timeout: int | None = ...,
        max_queue: int | None = ...,
        extra: Mapping[str, str] | None = ...,
    ) -> PrivateClamd: ...


def run_clamdscan(clamd: PrivateClamd, *args: str) -> subprocess.CompletedProcess[str]:
    """Run clamdscan against ``clamd`` over its unix socket.

    clamdscan exits 0 when all is clean, 1 when something was found and 2 on
    errors, so the caller checks returncode; this helper never raises on it.
    """
    if not CLAMDSCAN_BINARY.exists():
        pytest.skip(f"{CLAMDSCAN_BINARY} is missing (Debian package clamdscan): run ./dev setup")
    config = clamd.write_clamdscan_config()
    return subprocess.run(
        [str(CLAMDSCAN_BINARY), f"--config-file={config}", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def clamd_command(address: str, command: bytes, *, timeout: float = 10.0) -> bytes:
    """Send one command outside a session and read until clamd closes.

    ``address`` is ``unix:///path`` or ``tcp://host:port`` as PrivateClamd
    gives them. Written on raw sockets so harness tests do not depend on the
    clamd engine under test.
    """
    if address.startswith("unix://"):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = address.removeprefix("unix://")
    elif address.startswith("tcp://"):
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (host, int(port))
    else:
        raise ValueError(f"unsupported address {address!r}")
    with conn:
        conn.settimeout(timeout)
        conn.connect(target)
        conn.sendall(command)
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
        return reply
