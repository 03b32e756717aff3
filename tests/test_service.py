"""The daemon as systemd sees it: sd_notify, reload on SIGHUP, check-config."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clamwatch.privateclamd import PrivateClamd
from daemonproc import DaemonProcess, write_config
from helpers import deny_root, without_dac_override


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str, timeout: float = 30.0) -> dict[str, str]:
        return self.wait_until(key, lambda v: v == value, f"{key}={value}", timeout)

    def wait_until(
        self, key: str, test: Callable[[str], bool], what: str, timeout: float = 30.0
    ) -> dict[str, str]:
        """The first message (taken out) whose ``key`` passes ``test``."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if key in message and test(message[key]):
                    self.messages.remove(message)
                    return message
            left = deadline - time.monotonic()
            assert left > 0, f"no {what} within {timeout} s; got {self.messages}"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.sock.close()


def test_notify_reload_and_stop(
    tmp_path: Path, clamd: PrivateClamd, notify: NotifySocket, eicar: bytes
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    config = tmp_path / "clamwatch.toml"

    def configure(*watches: Path) -> None:
        write_config(
            config,
            address=clamd.unix_address,
            watches=list(watches),
            state_directory=tmp_path / "state",
            daemon={"settle_time": "500ms"},
        )

    configure(first)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
    env.pop("WATCHDOG_PID", None)
    with DaemonProcess(config, env=env) as daemon:
        ready = notify.wait_for("READY", "1")
        assert ready["STATUS"].startswith("watching 1/1 trees; 0 scanned")
        notify.wait_for("WATCHDOG", "1", timeout=5)
        notify.wait_for("WATCHDOG", "1", timeout=5)  # at half of WATCHDOG_USEC, again and again

        # a broken configuration is refused and the old one keeps running
        config.write_text(config.read_text().replace("[daemon]", "[daemon]\nbogus = 1"))
        daemon.signal(1)  # SIGHUP
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")
        rejected = daemon.wait_event("config-rejected")
        assert f"{config}: [daemon] unknown key 'bogus'" in rejected["error"]
        bad = first / "bad"
        bad.write_bytes(eicar)
        daemon.wait_verdicts([bad])

        # a good one that adds a watch is taken at once
        configure(first, second)
        daemon.signal(1)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")
        reloaded = daemon.wait_event("config-reloaded")
        assert "2 watch(es)" in reloaded["message"]
        daemon.wait_until(
            lambda evs: sum(e["event"] == "watch-armed" for e in evs) >= 2, 15, "second watch"
        )
        also = second / "also"
        also.write_bytes(eicar)
        daemon.wait_verdicts([also])
        assert daemon.stop() == 0
    notify.wait_for("STOPPING", "1")


def test_ready_waits_for_clamd(tmp_path: Path, clamd_factory: object, notify: NotifySocket) -> None:
    server = clamd_factory()  # type: ignore[operator]
    server.stop()
    watched = tmp_path / "w"
    watched.mkdir()
    config = write_config(
        tmp_path / "c.toml",
        address=server.unix_address,
        watches=[watched],
        state_directory=tmp_path / "state",
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    with DaemonProcess(config, env=env) as daemon:
        waiting = notify.wait_for("STATUS", f"waiting for clamd at {server.unix_address}")
        assert "READY" not in waiting
        assert not any(m.get("READY") == "1" for m in notify.messages)
        server.restart()
        notify.wait_for("READY", "1", timeout=30)
        daemon.wait_event("ready")


_SYS_PIDFD_GETFD = 438  # the same number on every architecture (asm-generic/unistd.h)


def _steal_fd(pid: int, fd: int) -> socket.socket | None:
    """A duplicate of ``pid``'s descriptor ``fd`` (pidfd_getfd(2), root), as a socket;
    None for a descriptor that is not a socket or is gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        mine = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
    if mine < 0:
        code = ctypes.get_errno()
        assert code == errno.EBADF, os.strerror(code)  # gone since it was listed
        return None
    try:
        return socket.socket(fileno=mine)
    except OSError:  # ENOTSOCK
        os.close(mine)
        return None


def clamd_sessions_of(pid: int, socket_path: Path) -> list[socket.socket]:
    """Duplicates of the connections process ``pid`` holds to the clamd at ``socket_path``
    (closing one leaves the process's own; shutting one down ends the connection)."""
    found = []
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            if not os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:"):
                continue
        except FileNotFoundError:  # closed since it was listed
            continue
        sock = _steal_fd(pid, int(entry))
        if sock is None:
            continue
        try:  # sd_notify's socket of a moment (libsystemd) has no peer: ENOTCONN
            peer = sock.getpeername() if sock.family == socket.AF_UNIX else None
        except OSError:
            peer = None
        if peer == str(socket_path):
            found.append(sock)
        else:
            sock.close()
    return found


def test_status_says_how_many_sessions_are_connected(
    tmp_path: Path, clamd: PrivateClamd, notify: NotifySocket, watched: Path, eicar: bytes
) -> None:
    """sessions = 2, clamd up, but one session ended and cannot connect again (clamd's
    socket path is a link turned to nothing, as in test_engine_real's
    test_one_session_failing_to_connect_beside_another_is_not_clamd_unreachable):
    STATUS= (systemctl status) says "clamd up (1 of 2 sessions connected)" while it
    lasts, and plain "clamd up" once the second session is back."""
    link = tmp_path / "clamd.sock"
    link.symlink_to(clamd.socket_path)
    config = write_config(
        tmp_path / "c.toml",
        address=f"unix://{link}",
        watches=[watched],
        state_directory=tmp_path / "state",
        clamd={"sessions": 2},
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    env.pop("WATCHDOG_USEC", None)
    prefix = "watching 1/1 trees; 0 scanned, 0 infected; 0 waiting; clamd up"
    with DaemonProcess(config, env=env) as daemon:
        notify.wait_for("READY", "1")
        # STATUS= every 5 s (daemon._STATUS_EVERY): both sessions up
        notify.wait_for("STATUS", prefix)
        notify.messages.clear()  # older ones; those still queued came after
        sessions = clamd_sessions_of(daemon.process.pid, clamd.socket_path)
        deadline = time.monotonic() + 30
        while len(sessions) != 2:  # a connection of a moment beside them (a rotation)
            for sock in sessions:
                sock.close()
            assert time.monotonic() < deadline, f"{len(sessions)} connections to clamd, not 2"
            time.sleep(0.1)
            sessions = clamd_sessions_of(daemon.process.pid, clamd.socket_path)
        try:
            link.unlink()
            link.symlink_to(tmp_path / "gone.sock")
            sessions[0].shutdown(socket.SHUT_RDWR)  # the daemon reads EOF on it
        finally:
            for sock in sessions:
                sock.close()
        notify.wait_for("STATUS", f"{prefix} (1 of 2 sessions connected)")
        notify.messages.clear()
        # up, as it says: the remaining session scans
        bad = watched / "bad.com"
        bad.write_bytes(eicar)
        daemon.wait_verdicts([bad], timeout=30)
        assert daemon.verdicts()[str(bad)][0]["event"] == "detection"
        assert not [e for e in daemon.events if e["event"] == "clamd-lost"]
        link.unlink()
        link.symlink_to(clamd.socket_path)
        # the reconnect's backoff (at most 10 s) and the next STATUS= (5 s)
        back = notify.wait_until(
            "STATUS", lambda v: v.endswith("; clamd up"), "STATUS= with both sessions up"
        )
        assert back["STATUS"] == "watching 1/1 trees; 1 scanned, 1 infected; 0 waiting; clamd up"


def run_check(
    *args: str, timeout: float = 60, wrap: Callable[[list[str]], list[str]] = list
) -> subprocess.CompletedProcess[str]:
    """Run `clamwatch check-config ARGS...`, turned by ``wrap`` (without_dac_override)."""
    return subprocess.run(
        wrap([sys.executable, "-m", "clamwatch", "check-config", *args]),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def test_check_config_with_drop_ins_and_clamd(tmp_path: Path, clamd: PrivateClamd) -> None:
    config = tmp_path / "clamwatch.toml"
    config.write_text(f'[clamd]\naddress = "{clamd.unix_address}"\n[[watch]]\npath = "/srv/a"\n')
    dropins = tmp_path / "clamwatch.d"
    dropins.mkdir()
    (dropins / "10-more.toml").write_text(
        '[[watch]]\npath = "/srv/b"\non_infected = ["copy"]\nlog_clean = false\n'
    )
    result = run_check("--config", str(config), "--clamd")
    assert result.returncode == 0, result.stderr
    assert f"{config}, {dropins / '10-more.toml'}: valid" in result.stdout
    assert "watch /srv/a: clean -> none, infected -> move\n" in result.stdout
    assert (
        "watch /srv/b: clean -> none, infected -> copy (clean verdicts counted, not logged)"
        in result.stdout
    )
    assert f"clamd at {clamd.unix_address}: ClamAV " in result.stdout
    assert "descriptor (FILDES), at most 64 scans in flight; it found the EICAR test file" in (
        result.stdout
    )

    (dropins / "20-typo.toml").write_text("[daemon]\nsettle_tiem = '1s'\n")
    broken = run_check("--config", str(config))
    assert broken.returncode == 1
    assert f"{dropins / '20-typo.toml'}: [daemon] unknown key 'settle_tiem'" in broken.stderr


def test_in_flight_limit_stays_below_clamds_max_queue(
    tmp_path: Path, clamd_factory: object
) -> None:
    """MaxQueue from the clamd.conf the daemon reads, MaxThreads from the real clamd's
    STATS: at most MaxQueue - MaxThreads in flight, so other clients still get in."""
    server = clamd_factory(max_threads=3, max_queue=20)  # type: ignore[operator]
    config = tmp_path / "clamwatch.toml"
    config.write_text(f'[clamd]\nclamd_conf = "{server.conf_path}"\n[[watch]]\npath = "/srv"\n')
    result = run_check("--config", str(config), "--clamd")
    assert result.returncode == 0, result.stderr
    assert f"clamd at {server.unix_address}: ClamAV " in result.stdout
    assert "MaxThreads 3, files passed by descriptor (FILDES)," in result.stdout
    assert "at most 17 scans in flight" in result.stdout


def test_check_config_reports_an_unreachable_clamd(tmp_path: Path) -> None:
    config = tmp_path / "clamwatch.toml"
    config.write_text(
        f'[clamd]\naddress = "unix://{tmp_path}/none.sock"\n[[watch]]\npath = "/srv"\n'
    )
    result = run_check("--config", str(config), "--clamd")
    assert result.returncode == 1
    assert "cannot reach clamd" in result.stderr


def test_check_config_says_fildes_needs_a_unix_socket_clamd_conf_lacks(tmp_path: Path) -> None:
    """transport = 'fildes' with a clamd.conf that has TCP alone: a traceback before."""
    clamd_conf = tmp_path / "clamd.conf"
    clamd_conf.write_text("TCPSocket 3310\nTCPAddr 127.0.0.1\n")
    config = tmp_path / "clamwatch.toml"
    config.write_text(
        f'[clamd]\nclamd_conf = "{clamd_conf}"\ntransport = "fildes"\n[[watch]]\npath = "/srv"\n'
    )
    result = run_check("--config", str(config), "--clamd")
    assert result.returncode == 1
    assert result.stderr.startswith("clamwatch check-config: FILDES needs a Unix socket")
    assert "Traceback" not in result.stderr


def test_check_config_names_a_socket_it_may_not_use(tmp_path: Path, clamd_factory: object) -> None:
    server = clamd_factory(max_threads=1)  # type: ignore[operator]
    owner = deny_root(server.socket_path)
    config = tmp_path / "clamwatch.toml"
    config.write_text(f'[clamd]\naddress = "{server.unix_address}"\n[[watch]]\npath = "/srv"\n')
    # below check-config's 10 s for clamd: a denial is not waited out
    result = run_check("--config", str(config), "--clamd", wrap=without_dac_override, timeout=9)
    assert result.returncode == 1
    assert f"cannot reach clamd at {server.unix_address}: Permission denied" in result.stderr
    assert f"{server.socket_path} is srw------- {owner}" in result.stderr


def test_an_address_needs_no_clamd_conf(tmp_path: Path, clamd: PrivateClamd) -> None:
    """An explicitly named clamd.conf must exist; an address alone is enough."""
    config = tmp_path / "clamwatch.toml"
    config.write_text(
        f'[clamd]\naddress = "{clamd.tcp_address}"\nclamd_conf = "{tmp_path}/absent.conf"\n'
        '[[watch]]\npath = "/srv"\n'
    )
    broken = run_check("--config", str(config), "--clamd")
    assert broken.returncode == 1  # named explicitly: it must exist
    assert "absent.conf" in broken.stderr
    config.write_text(f'[clamd]\naddress = "{clamd.tcp_address}"\n[[watch]]\npath = "/srv"\n')
    result = run_check("--config", str(config), "--clamd")
    assert result.returncode == 0, result.stderr
    assert "stream (INSTREAM)" in result.stdout


def test_check_config_warns_of_read_only_folders(
    tmp_path: Path, tmpfs: Callable[..., None]
) -> None:
    """A read-only mount (as ProtectSystem=strict leaves what ReadWritePaths= does not
    list): each folder the daemon would write there is a warning, and exit 0."""
    ro = tmp_path / "ro"
    tmpfs(ro, "1M")
    for name in ("uploads", "readers", "quarantine"):
        (ro / name).mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    config = tmp_path / "clamwatch.toml"
    config.write_text(
        f'[daemon]\nstate_directory = "{tmp_path / "state"}"\n'
        f'[quarantine]\ndirectory = "{ro / "quarantine"}"\n'
        f'[[watch]]\npath = "{ro / "uploads"}"\non_clean = ["release"]\n'
        f'release_to = "{ro / "scanned"}"\n'
        # copy only reads the watched tree: not named
        f'[[watch]]\npath = "{ro / "readers"}"\non_infected = ["copy"]\n'
        "on_not_scanned = []\non_error = []\n"
    )
    result = run_check("--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"{config}: valid" in result.stdout
    # what follows "fail there;" depends on whether pytest runs in a service
    warnings = [line.partition(" will fail there; ")[0] for line in result.stderr.splitlines()]
    assert warnings == [
        f"clamwatch check-config: warning: [[watch]] path {ro / 'uploads'} is on a read-only"
        " file system: move, release, tag",
        f"clamwatch check-config: warning: [quarantine] directory {ro / 'quarantine'} is on a"
        " read-only file system: move, copy",
        f"clamwatch check-config: warning: release_to {ro / 'scanned'} (watch {ro / 'uploads'})"
        " is on a read-only file system: release",
    ]
