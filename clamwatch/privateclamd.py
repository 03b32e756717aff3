"""A private, real clamd for tests, the demo and benchmarks.

It runs Debian's /usr/sbin/clamd with a configuration of its own in a work
directory: its own socket, its own loopback TCP port, a database folder that
holds only the EICAR test signature (there is no network for the official
databases). It never reads or touches /etc/clamav or the system clamd.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from clamwatch import testsig

logger = logging.getLogger(__name__)

CLAMD_BINARY = Path("/usr/sbin/clamd")

# sun_path in struct sockaddr_un is 108 bytes on Linux, NUL included
# (unix(7)); clamd fails to bind a longer path with a cryptic message.
_MAX_SOCKET_PATH = 107

# clamd(8): SIGTERM makes it finish the running scans and exit. 10 s is
# plenty for the tiny files tests scan; after that it is stuck.
_STOP_GRACE_SECONDS = 10.0

# How often start() retries zPING while clamd loads its database.
_POLL_INTERVAL_SECONDS = 0.02

# Lines of clamd's log and output quoted in start() errors.
_TAIL_LINES = 30

# What clamd logs once a reloaded database replaces the old one (clamd 1.4,
# server-th.c), with LogTime's stamp before it.
_ACTIVATED = "Activating the newly loaded database"

# clamd.conf(5) keys are words; values end at the line break.
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The kernel picks it; another process could take it before clamd binds,
    which start() then reports with clamd's own bind error.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateClamd:
    """One clamd process with its own configuration under ``workdir``.

    Use as a context manager, or call start() and stop(). The socket path
    and TCP port stay the same across restarts, as a real clamd's would.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        max_threads: int = 4,
        tcp: bool = True,
        stream_max_length: str | None = None,
        read_timeout: int | None = None,
        command_read_timeout: int | None = None,
        max_queue: int | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir.absolute()
        self.socket_path = self.workdir / "clamd.sock"
        self.conf_path = self.workdir / "clamd.conf"
        self.log_path = self.workdir / "clamd.log"
        self.output_path = self.workdir / "clamd.out"
        self.pid_path = self.workdir / "clamd.pid"
        self.db_dir = self.workdir / "db"
        self.tmp_dir = self.workdir / "tmp"
        self.clamdscan_conf_path = self.workdir / "clamdscan.conf"
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"socket path {self.socket_path} is longer than {_MAX_SOCKET_PATH} bytes;"
                " use a shorter workdir"
            )
        self.tcp_port: int | None = free_loopback_port() if tcp else None
        self.settings = self._settings(
            max_threads=max_threads,
            stream_max_length=stream_max_length,
            read_timeout=read_timeout,
            command_read_timeout=command_read_timeout,
            max_queue=max_queue,
            extra=extra or {},
        )
        self._process: subprocess.Popen[bytes] | None = None

    def _settings(
        self,
        *,
        max_threads: int,
        stream_max_length: str | None,
        read_timeout: int | None,
        command_read_timeout: int | None,
        max_queue: int | None,
        extra: Mapping[str, str],
    ) -> dict[str, str]:
        settings = {
            # clamd must stay our child: we wait for it, signal it, and read
            # its exit status; a daemonizing clamd would orphan itself.
            "Foreground": "yes",
            "LocalSocket": str(self.socket_path),
            # Owner and group only; tests and the demo run as root.
            "LocalSocketMode": "660",
            "DatabaseDirectory": str(self.db_dir),
            "LogFile": str(self.log_path),
            "LogTime": "yes",
            "PidFile": str(self.pid_path),
            # INSTREAM spools streams to disk; keep that inside the workdir
            # so nothing is left in the system /tmp after a SIGKILL.
            "TemporaryDirectory": str(self.tmp_dir),
            "MaxThreads": str(max_threads),
        }
        if self.tcp_port is not None:
            settings["TCPSocket"] = str(self.tcp_port)
            # Never listen beyond loopback: clamd has no authentication.
            settings["TCPAddr"] = "127.0.0.1"
        optional = {
            "StreamMaxLength": stream_max_length,
            "ReadTimeout": read_timeout,
            "CommandReadTimeout": command_read_timeout,
            "MaxQueue": max_queue,
        }
        settings.update({key: str(value) for key, value in optional.items() if value is not None})
        # extra comes last so a test can override any default above.
        settings.update(extra)
        for key, value in settings.items():
            if not _KEY.fullmatch(key) or "\n" in value or "\r" in value:
                raise ValueError(f"invalid clamd.conf setting {key!r} = {value!r}")
        return settings

    @property
    def unix_address(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_address(self) -> str:
        if self.tcp_port is None:
            raise RuntimeError("this clamd was created with tcp=False")
        return f"tcp://127.0.0.1:{self.tcp_port}"

    @property
    def pid(self) -> int | None:
        """The running clamd's process id, None when it is not running."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def config_text(self) -> str:
        return "".join(f"{key} {value}\n" for key, value in self.settings.items())

    def start(self, timeout: float = 60.0) -> None:
        """Write the configuration and database, start clamd, wait for PONG."""
        if self.running:
            raise RuntimeError(f"clamd {self.pid} is already running in {self.workdir}")
        # A clamd still serving our socket (a leftover from another run)
        # would answer the readiness PING in place of ours.
        if _answers_ping(self.socket_path, timeout=1.0):
            raise RuntimeError(f"another clamd already answers on {self.socket_path}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        testsig.write_test_database(self.db_dir)
        self.conf_path.write_text(self.config_text(), encoding="utf-8")
        with self.output_path.open("ab") as output:
            self._process = subprocess.Popen(
                [str(CLAMD_BINARY), f"--config-file={self.conf_path}"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C meant for pytest must not
                # reach clamd before the fixtures stop it in order.
                start_new_session=True,
            )
        logger.debug("started clamd %d in %s", self._process.pid, self.workdir)
        self._wait_ready(self._process, timeout)

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        # Loading even a one-line database takes clamd about 0.1 s; a full
        # official one takes many seconds, hence a deadline, not a sleep.
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"clamd exited with status {process.returncode} while starting\n"
                    + self.diagnostics()
                )
            if _answers_ping(self.socket_path, timeout=1.0):
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(
                    f"clamd did not answer PING on {self.socket_path} within {timeout} s\n"
                    + self.diagnostics()
                )
            time.sleep(_POLL_INTERVAL_SECONDS)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if clamd is still there after 10 s."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("clamd %d ignored SIGTERM for %s s", process.pid, _STOP_GRACE_SECONDS)
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL clamd and reap it, as a crash would end it."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def restart(self, timeout: float = 60.0) -> None:
        """Stop (if still running) and start again on the same socket and port."""
        self.stop()
        self.start(timeout)

    def reload(self, timeout: float = 60.0) -> None:
        """Reload the database (zRELOAD) and return once clamd uses the new one.

        clamd keeps a cache of the hashes of files it found clean, and the
        cache belongs to the loaded engine: after a reload it starts empty,
        so the next scan of a file is a full scan again, not a cache hit.
        clamd answers RELOADING at once and loads in the background
        (ConcurrentDatabaseReload, the default); it logs "Activating the
        newly loaded database" when its main loop swaps engines.
        """

        def activations() -> int:
            try:
                return self.log_path.read_text(encoding="utf-8", errors="replace").count(_ACTIVATED)
            except FileNotFoundError:
                return 0

        before = activations()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(timeout)
                conn.connect(os.fspath(self.socket_path))
                conn.sendall(b"zRELOAD\0")
                reply = conn.recv(64)
        except OSError as exc:
            raise RuntimeError(f"clamd on {self.socket_path}: RELOAD failed: {exc}") from exc
        if reply != b"RELOADING\0":
            raise RuntimeError(f"clamd on {self.socket_path} answered RELOAD with {reply!r}")
        deadline = time.monotonic() + timeout
        while activations() <= before or not _answers_ping(self.socket_path, timeout=1.0):
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"clamd did not activate its reloaded database within {timeout} s\n"
                    + self.diagnostics()
                )
            time.sleep(_POLL_INTERVAL_SECONDS)

    def write_clamdscan_config(self, *, tcp: bool = False) -> Path:
        """A config for ``clamdscan --config-file=...`` that reaches this clamd.

        clamdscan uses LocalSocket when the file has one, so the TCP variant
        must leave it out.
        """
        if tcp:
            if self.tcp_port is None:
                raise RuntimeError("this clamd was created with tcp=False")
            text = f"TCPSocket {self.tcp_port}\nTCPAddr 127.0.0.1\n"
        else:
            text = f"LocalSocket {self.socket_path}\n"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.clamdscan_conf_path.write_text(text, encoding="utf-8")
        return self.clamdscan_conf_path

    def diagnostics(self) -> str:
        """The tail of clamd's log file and of its stdout/stderr."""
        parts = []
        for path in (self.log_path, self.output_path):
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except FileNotFoundError:
                lines = ["(missing)"]
            parts.append(f"--- {path} (last {_TAIL_LINES} lines)")
            parts.extend(lines[-_TAIL_LINES:])
        if _apparmor_confines_clamd():
            # Debian's profile (/etc/apparmor.d/usr.sbin.clamd) lets clamd
            # write only below /tmp, /var/lib/clamav and /var/log/clamav.
            parts.append("--- AppArmor enforces /usr/sbin/clamd: its workdir must be under /tmp")
        return "\n".join(parts)

    def __enter__(self) -> PrivateClamd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _answers_ping(path: Path, *, timeout: float) -> bool:
    """True when a clamd on ``path`` answers zPING with PONG."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(os.fspath(path))
            conn.sendall(b"zPING\0")
            reply = b""
            # Outside a session clamd answers one command, then closes.
            while chunk := conn.recv(64):
                reply += chunk
    except OSError:
        # Not there yet (ENOENT), stale (ECONNREFUSED), or too slow.
        return False
    return reply == b"PONG\0"


def _apparmor_confines_clamd() -> bool:
    try:
        profiles = Path("/sys/kernel/security/apparmor/profiles").read_text(encoding="utf-8")
    except OSError:
        return False
    return "/usr/sbin/clamd (enforce)" in profiles
