"""clamwatch.service under a real systemd, in a throwaway container.

systemd-nspawn boots this machine's own /usr with an empty tmpfs as root
(--volatile=yes), as design.md describes; never the host's root itself,
whose tmpfiles would wipe the host's /tmp. Into it go, at the same paths,
the checkout and its venv (read-only; the venv's scripts and the editable
install name them by absolute path), and at their installed places the
shipped unit (ExecStart= rewritten to the venv's clamwatch, nothing else
changed), the drop-in example as the drop-in, sysusers.d, tmpfiles.d and the
journal catalog. systemd-sysusers and systemd-tmpfiles create the user and
/var/lib/clamwatch at boot, as on an installed machine.

clamd is the session's private clamd, running on the host: its folder
appears as /run/clamav, and a one-line /etc/clamav/clamd.conf names the
socket there, so clamwatch finds it the way it finds Debian's
clamav-daemon. The watched tree /srv/uploads is a host folder: files are
dropped in from the host and inotify sees them inside.

Commands run inside with nsenter into the container's leader (its PID 1);
--register=no and --keep-unit keep systemd-machined and the host's systemd
out of it, so this also runs where systemd is not PID 1.

Shown here: `systemctl start` returns once READY=1 came, with the daemon
running as its own user with exactly its four capabilities; EICAR from
another user in a sticky folder is logged with its MESSAGE_ID and fields,
explained by `journalctl -x`, and quarantined; a broken configuration fails
`systemctl reload` and is refused by the daemon on SIGHUP while it keeps
scanning; a frozen daemon is killed by the watchdog (with faulthandler's
stacks in the journal) and restarted; `systemctl stop` is clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from clamwatch.eventkind import EventKind
from clamwatch.events import MESSAGE_IDS
from clamwatch.privateclamd import PrivateClamd
from clamwatch.testsig import EICAR_SIGNATURE, eicar_bytes
from unitfiles import CATALOG, DROP_IN_EXAMPLE, REPO, SYSUSERS, TMPFILES, unit_text_for, venv_binary

NSPAWN = shutil.which("systemd-nspawn")
NSENTER = shutil.which("nsenter")

# Folders the unit hides from the service (PrivateTmp=, ProtectHome=): a
# checkout there (CI may clone anywhere) is bound into the service by a
# test-only drop-in, see checkout_drop_in().
_HIDDEN_FROM_SERVICE = ("/tmp", "/var/tmp", "/home", "/root", "/run/user")


def _hidden_prefix() -> str | None:
    for hidden in _HIDDEN_FROM_SERVICE:
        for path in (REPO, Path(sys.prefix)):
            if path == Path(hidden) or Path(hidden) in path.parents:
                return hidden
    return None


def checkout_drop_in() -> str | None:
    """Service settings that let the unit see a checkout in a folder it hides.

    Only the test environment needs this: an installed clamwatch lives in /usr.
    """
    hidden = _hidden_prefix()
    if hidden is None:
        return None
    lines = ["[Service]", f"BindReadOnlyPaths={REPO} {sys.prefix}"]
    if hidden in ("/home", "/root", "/run/user"):
        lines.append("ProtectHome=tmpfs")  # =yes makes binds under /home impossible
    return "\n".join(lines) + "\n"


def _unusable_checkout() -> str | None:
    interpreter = Path(sys.executable).resolve()
    if Path("/usr") not in interpreter.parents:
        return (
            f"the venv's interpreter {interpreter} is not under /usr, the only part of this"
            " machine the container sees (./dev setup builds the venv from /usr/bin/python3)"
        )
    return None


_UNUSABLE_CHECKOUT = _unusable_checkout()

pytestmark = [
    pytest.mark.skipif(
        NSPAWN is None, reason="systemd-nspawn is missing (Debian package systemd-container)"
    ),
    pytest.mark.skipif(NSENTER is None, reason="nsenter is missing (Debian package util-linux)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="systemd-nspawn needs root"),
    pytest.mark.skipif(_UNUSABLE_CHECKOUT is not None, reason=f"{_UNUSABLE_CHECKOUT}"),
]

# Booting takes about a second here; these are deadlines, not expectations.
_BOOT_TIMEOUT = 60.0
_COMMAND_TIMEOUT = 60.0
_EVENT_TIMEOUT = 30.0
_SHUTDOWN_TIMEOUT = 30.0

# Inside the container.
_WATCHED = "/srv/uploads"
_UNIT = "clamwatch.service"
_INSTANCE_UNIT = "clamwatch@.service"
_UNIT_DIR = "/etc/systemd/system"
_SPARE_CLAMD = "/run/clamav-spare"

# A file owner that is neither root nor clamwatch: the service must act on
# files it does not own, in a sticky folder, through its capabilities.
_UPLOADER_UID = 4242

_T = TypeVar("_T")


def _eventually(
    probe: Callable[[], _T | None],
    timeout: float,
    what: str,
    context: Callable[[], str] = lambda: "",
) -> _T:
    """Poll ``probe`` until it returns something other than None; a timeout's
    message ends with ``context()``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, (
            f"timed out after {timeout} s waiting for {what}\n{context()}"
        )
        time.sleep(0.1)


def _sequence_number(entry: dict[str, Any]) -> int:
    """The entry's place in the journal, from its cursor's i= part.

    Not --after-cursor: journalctl 252 combines it badly with matches (it
    skips the first matching entry when the cursor's own entry does not
    match), and this journal is one volatile file set with one sequence.
    """
    parts = dict(part.split("=", 1) for part in str(entry["__CURSOR"]).split(";"))
    return int(parts["i"], 16)


class Container:
    """A booted systemd-nspawn container; commands run in it with nsenter."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log
        self.leader: int | None = None
        try:
            self.leader = _eventually(
                self._find_leader, _BOOT_TIMEOUT, "the container's PID 1", self.log_tail
            )
        except BaseException:
            self.shut_down()
            raise

    def _find_leader(self) -> int | None:
        # nspawn's child is the container's PID 1 (systemd) as the host sees it.
        if self.process.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited early\n{self.log_tail()}")
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children and Path(f"/proc/{children[0]}/comm").read_text().strip() == "systemd":
                return int(children[0])
        except OSError:
            pass
        return None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join([f"--- {self.log} (last {lines} lines)", *text[-lines:]])

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(NSENTER), "-t", str(self.leader), "-a", *argv],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=_COMMAND_TIMEOUT,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}{result.stderr}"
            )
        return result

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "--property", prop, "--value", unit).stdout.strip()

    def journal(self, *args: str, after: int = 0) -> list[dict[str, Any]]:
        """Journal entries as `journalctl -o json` gives them, oldest first,
        those after the mark ``after`` only."""
        out = self.run("journalctl", "--no-pager", "-o", "json", *args).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [entry for entry in entries if _sequence_number(entry) > after]

    def mark(self) -> int:
        """Where the journal ends now: journal(after=mark) reads what came later."""
        entries = self.journal("-n", "1")
        return _sequence_number(entries[-1]) if entries else 0

    def shut_down(self) -> None:
        """SIGTERM makes nspawn power the container off cleanly (systemd-nspawn(1));
        past the deadline its PID 1 is killed, which ends every process in it
        (a SIGKILL to nspawn alone would leave the container running)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=_SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            if self.leader is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"the container did not shut down within {_SHUTDOWN_TIMEOUT} s\n{self.log_tail()}"
            ) from None


class Machine:
    """The host side: folders bound into the container, and the container."""

    def __init__(self, root: Path, clamd: PrivateClamd) -> None:
        self.root = root
        self.uploads = root / "uploads"
        self.etc_clamwatch = root / "etc-clamwatch"
        # for a clamd of a test's own (one it may stop), seen at _SPARE_CLAMD inside
        self.spare_clamd = root / "spare-clamd"
        self.spare_clamd.mkdir()
        self.units = root / "units"
        self.drop_ins = self.units / f"{_UNIT}.d"
        self.uploads.mkdir()
        self.etc_clamwatch.mkdir()
        self.drop_ins.mkdir(parents=True)
        self.write_config(good=True)
        for unit in (_UNIT, _INSTANCE_UNIT):
            (self.units / unit).write_text(unit_text_for(unit, venv_binary()), encoding="utf-8")
        shutil.copy(DROP_IN_EXAMPLE, self.drop_ins / "watched-trees.conf")
        instance_drop_ins = self.units / f"{_INSTANCE_UNIT}.d"
        instance_drop_ins.mkdir()
        if (extra := checkout_drop_in()) is not None:
            for folder in (self.drop_ins, instance_drop_ins):
                (folder / "zz-test-checkout.conf").write_text(extra, encoding="utf-8")
        (self.units / "notify-probe.service").write_text(
            "[Unit]\nDescription=the smallest Type=notify service\n"
            "[Service]\nType=notify\n"
            "ExecStart=/bin/sh -c 'systemd-notify --ready; exec sleep infinity'\n",
            encoding="utf-8",
        )
        clamd_conf = root / "clamd.conf"
        clamd_conf.write_text(f"LocalSocket /run/clamav/{clamd.socket_path.name}\n")
        catalog_root = root / "catalog"
        (catalog_root / "usr/lib/systemd/catalog").mkdir(parents=True)
        shutil.copy(CATALOG, catalog_root / "usr/lib/systemd/catalog")
        subprocess.run(
            ["journalctl", f"--root={catalog_root}", "--update-catalog"], check=True, timeout=60
        )

        binds = {
            str(clamd.workdir): "/run/clamav",
            str(self.spare_clamd): _SPARE_CLAMD,
            str(clamd_conf): "/etc/clamav/clamd.conf",
            str(self.etc_clamwatch): "/etc/clamwatch",
            str(self.units / _UNIT): f"{_UNIT_DIR}/{_UNIT}",
            str(self.units / _INSTANCE_UNIT): f"{_UNIT_DIR}/{_INSTANCE_UNIT}",
            str(instance_drop_ins): f"{_UNIT_DIR}/{_INSTANCE_UNIT}.d",
            str(self.drop_ins): f"{_UNIT_DIR}/{_UNIT}.d",
            str(self.units / "notify-probe.service"): f"{_UNIT_DIR}/notify-probe.service",
            str(SYSUSERS): "/etc/sysusers.d/clamwatch.conf",
            str(TMPFILES): "/etc/tmpfiles.d/clamwatch.conf",
            str(catalog_root / "var/lib/systemd/catalog"): "/var/lib/systemd/catalog",
        }
        # the checkout, and the venv unless it lies inside it
        same_path = {REPO, Path(sys.prefix)}
        same_path = {p for p in same_path if not any(o in p.parents for o in same_path)}
        argv = [
            str(NSPAWN),
            "--directory=/",
            "--volatile=yes",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--private-network",
            f"--machine=clamwatch-test-{os.getpid()}",
            *(f"--bind-ro={path}" for path in sorted(same_path)),
            *(f"--bind-ro={source}:{target}" for source, target in binds.items()),
            f"--bind={self.uploads}:{_WATCHED}",
            "systemd.firstboot=off",
            "systemd.unit=basic.target",
        ]
        log = root / "nspawn.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        self.container = Container(process, log)
        try:
            state = _eventually(
                self._booted, _BOOT_TIMEOUT, "the container to boot", self.container.log_tail
            )
            # degraded: some unit of the host's /usr failed in a container; not ours
            assert state in ("running", "degraded"), (
                f"the container did not boot: {state}\n{self.container.log_tail()}"
            )
        except BaseException:
            self.container.shut_down()
            raise

    def _booted(self) -> str | None:
        """The state the boot ended in; None while PID 1 does not answer yet.

        systemctl says "offline" without asking PID 1 while /run/systemd/system
        is missing (sd_booted(3)), and PID 1 makes that folder only after its
        exec: a probe sent the moment the leader appears can see it.
        """
        state = self.container.run("systemctl", "is-system-running", "--wait", check=False)
        answer = state.stdout.strip()
        # "unknown": its query of PID 1 failed, as it can before the bus is up
        return None if answer in ("", "offline", "unknown") else answer

    def write_config(self, *, good: bool) -> None:
        # Everything else is the default: clamd from /etc/clamav/clamd.conf,
        # state and quarantine in /var/lib/clamwatch.
        text = f'[daemon]\nsettle_time = "500ms"\n\n[[watch]]\npath = "{_WATCHED}"\n'
        if not good:
            text += "no_such_key = true\n"
        (self.etc_clamwatch / "clamwatch.toml").write_text(text, encoding="utf-8")

    def drop_file(
        self, relative: str, content: bytes, *, owner: int = 0, times: tuple[int, int] | None = None
    ) -> Path:
        """A finished upload, as another user's process would leave it.

        ``times``: its atime and mtime in ns, set before the close that the
        service sees.
        """
        path = self.uploads / relative
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchown(fd, owner, owner)
            os.write(fd, content)
            if times is not None:
                os.utime(fd, ns=times)
        finally:
            os.close(fd)
        return path


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, clamd: PrivateClamd) -> Iterator[Machine]:
    host = Machine(tmp_path_factory.mktemp("nspawn"), clamd)
    try:
        yield host
    finally:
        host.container.shut_down()


@pytest.fixture
def container(machine: Machine) -> Container:
    return machine.container


@pytest.fixture
def started(machine: Machine) -> Iterator[Container]:
    """clamwatch.service freshly started with the good configuration."""
    machine.write_config(good=True)
    box = machine.container
    box.systemctl("reset-failed", _UNIT, check=False)
    box.systemctl("restart", _UNIT)
    yield box
    # Left running for the next test to restart. Printed for the report of a
    # test that failed (pytest shows captured output only then).
    print(box.systemctl("status", "--lines=0", _UNIT, check=False).stdout)
    print(box.run("journalctl", "--no-pager", "-n", "30", "-u", _UNIT, check=False).stdout)


def _events(box: Container, kind: EventKind, after: int, *matches: str) -> list[dict[str, Any]]:
    return box.journal("-u", _UNIT, f"MESSAGE_ID={MESSAGE_IDS[kind]}", *matches, after=after)


def _wait_event(box: Container, kind: EventKind, after: int, *matches: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        found = _events(box, kind, after, *matches)
        return found[0] if found else None

    return _eventually(probe, _EVENT_TIMEOUT, f"a {kind.value} event {' '.join(matches)}")


def _wait_event_of(box: Container, unit: str, kind: EventKind, after: int) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        found = box.journal("-u", unit, f"MESSAGE_ID={MESSAGE_IDS[kind]}", after=after)
        return found[0] if found else None

    return _eventually(probe, _EVENT_TIMEOUT, f"a {kind.value} event of {unit}")


def _wait_messages(
    box: Container, after: int, *wanted: Callable[[str], bool], what: str
) -> list[str]:
    """The unit's messages after the mark, once each of ``wanted`` matches one.

    What a process prints reaches the journal through journald's stream,
    in journald's own time: the command that printed it may have returned.
    """

    def messages() -> list[str]:
        return [str(e.get("MESSAGE", "")) for e in box.journal("-u", _UNIT, after=after)]

    def probe() -> list[str] | None:
        said = messages()
        return said if all(any(test(m) for m in said) for test in wanted) else None

    return _eventually(probe, _EVENT_TIMEOUT, what, lambda: "\n".join(messages()))


def _wait_active(box: Container) -> None:
    """systemd shows "reloading" until it has taken the READY=1 that ends a reload."""
    _eventually(
        lambda: True if box.show(_UNIT, "ActiveState") == "active" else None,
        _EVENT_TIMEOUT,
        f"{_UNIT} to be active",
    )


# -- the smallest proof: a container whose systemd runs a Type=notify unit ----------


def test_a_notify_service_starts_and_stops(container: Container) -> None:
    container.systemctl("start", "notify-probe.service")
    assert container.show("notify-probe.service", "ActiveState") == "active"
    assert container.show("notify-probe.service", "SubState") == "running"
    container.systemctl("stop", "notify-probe.service")
    assert container.show("notify-probe.service", "ActiveState") == "inactive"


# -- clamwatch.service --------------------------------------------------------------


def test_start_returns_once_ready(machine: Machine) -> None:
    box = machine.container
    box.systemctl("reset-failed", _UNIT, check=False)
    box.systemctl("stop", _UNIT)
    before = box.mark()
    box.systemctl("start", _UNIT)  # Type=notify: returns after READY=1
    assert box.show(_UNIT, "ActiveState") == "active"
    assert box.show(_UNIT, "StatusText").startswith("watching 1/1 trees")
    _wait_event(box, EventKind.READY, before)
    # the sandbox as the kernel sees it
    pid = box.show(_UNIT, "MainPID")
    status = dict(
        line.split(":\t", 1)
        for line in box.run("cat", f"/proc/{pid}/status").stdout.splitlines()
        if ":\t" in line
    )
    uid = box.run("id", "-u", "clamwatch").stdout.strip()
    assert status["Uid"].split()[:2] == [uid, uid]
    # CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2), CAP_FOWNER (3), CAP_LEASE (28)
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0b1110 | 1 << 28
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # a filter is installed
    # each thread's name reaches the kernel from inside the sandbox (top -H)
    expected = {"cw-dispatch", "cw-clamd", "cw-inotify", "cw-walk", "cw-watch-roots"}
    names: set[str] = set()
    deadline = time.monotonic() + 10
    while not expected <= names and time.monotonic() < deadline:
        comms = box.run("sh", "-c", f"cat /proc/{pid}/task/*/comm", check=False).stdout
        names = set(comms.split())
    assert expected <= names, f"missing {sorted(expected - names)} in {sorted(names)}"


def test_eicar_is_logged_and_quarantined(machine: Machine, started: Container) -> None:
    box = started
    incoming = machine.uploads / "incoming"
    incoming.mkdir(mode=0o1777, exist_ok=True)
    incoming.chmod(0o1777)  # a sticky upload folder, like /tmp
    name = f"incoming/invoice-{time.monotonic_ns()}.pdf.exe"
    inside = f"{_WATCHED}/{name}"
    before = box.mark()
    host_path = machine.drop_file(name, eicar_bytes(), owner=_UPLOADER_UID)
    # an access time that any read would update (older than its mtime):
    # the service opens with O_NOATIME through its CAP_FOWNER
    now = time.time_ns()
    aged = (now - 2 * 86_400 * 10**9, now - 86_400 * 10**9)
    text = machine.drop_file(f"{name}.txt", b"just text\n", owner=_UPLOADER_UID, times=aged)

    found = _wait_event(box, EventKind.DETECTION, before, f"CLAMWATCH_PATH={inside}")
    assert found["CLAMWATCH_SIGNATURE"] == EICAR_SIGNATURE
    assert found["CLAMWATCH_VERDICT"] == "infected"
    assert found["CLAMWATCH_WATCH"] == _WATCHED
    assert found["PRIORITY"] == "4"
    done = _wait_event(box, EventKind.ACTION_DONE, before, f"CLAMWATCH_PATH={inside}")
    assert done["CLAMWATCH_ACTION"] == "move"
    clean = _wait_event(box, EventKind.CLEAN, before, f"CLAMWATCH_PATH={inside}.txt")
    assert clean["CLAMWATCH_VERDICT"] == "clean"

    assert not host_path.exists()
    assert os.stat(text).st_atime_ns == aged[0]
    listing = box.run(str(venv_binary()), "quarantine", "list", "--json").stdout
    entries = {e["id"]: e for e in map(json.loads, listing.splitlines())}
    entry = entries[done["CLAMWATCH_QUARANTINE_ID"]]
    assert (entry["original_path"], entry["signature"]) == (inside, EICAR_SIGNATURE)
    assert entry["owner"] == _UPLOADER_UID

    # journalctl -x explains it with the catalog, fields filled in
    explained = box.run(
        "journalctl", "--no-pager", "-x", "-u", _UNIT,
        f"MESSAGE_ID={MESSAGE_IDS[EventKind.DETECTION]}", f"CLAMWATCH_PATH={inside}",
    ).stdout  # fmt: skip
    assert f"Subject: Malware found: {EICAR_SIGNATURE} in {inside}" in explained
    assert "Defined-By: clamwatch" in explained


def test_reload_with_a_broken_config_keeps_running(machine: Machine, started: Container) -> None:
    box = started
    pid = box.show(_UNIT, "MainPID")
    before = box.mark()
    machine.write_config(good=False)
    # ExecReload= runs check-config first: the reload fails, saying why
    reload = box.systemctl("reload", _UNIT, check=False)
    assert reload.returncode != 0
    _wait_messages(box, before, lambda m: "no_such_key" in m, what="check-config's complaint")
    _wait_active(box)
    assert box.show(_UNIT, "MainPID") == pid

    # SIGHUP straight to the daemon: it refuses the configuration itself
    box.systemctl("kill", "--kill-who=main", "--signal=SIGHUP", _UNIT)
    rejected = _wait_event(box, EventKind.CONFIG_REJECTED, before)
    assert "no_such_key" in rejected["CLAMWATCH_ERROR"]
    assert "no_such_key" in rejected["MESSAGE"]
    assert rejected["PRIORITY"] == "3"
    _wait_active(box)
    assert box.show(_UNIT, "MainPID") == pid

    # the configuration it had still works
    name = f"after-rejected-{time.monotonic_ns()}.exe"
    machine.drop_file(name, eicar_bytes())
    _wait_event(box, EventKind.DETECTION, before, f"CLAMWATCH_PATH={_WATCHED}/{name}")

    before = box.mark()
    machine.write_config(good=True)
    box.systemctl("reload", _UNIT)
    _wait_event(box, EventKind.CONFIG_RELOADED, before)
    assert box.show(_UNIT, "MainPID") == pid


def test_a_hung_daemon_is_restarted_by_the_watchdog(machine: Machine, started: Container) -> None:
    box = started
    override = machine.drop_ins / "zz-test-watchdog.conf"
    # The shipped 60 s, shortened, with pings every 2 s: a daemon that a busy
    # machine stalls for a second must not be restarted before the test's
    # SIGSTOP. No core file from the SIGABRT.
    override.write_text("[Service]\nWatchdogSec=4s\nRestartSec=1s\nLimitCORE=0\n")
    try:
        box.systemctl("daemon-reload")
        box.systemctl("restart", _UNIT)
        pid = box.show(_UNIT, "MainPID")
        restarts = int(box.show(_UNIT, "NRestarts"))
        before = box.mark()
        box.run("kill", "-STOP", pid)  # hung: no more WATCHDOG=1

        def restarted() -> bool | None:
            again = box.show(_UNIT, "MainPID") not in ("0", pid)
            return True if again and box.show(_UNIT, "ActiveState") == "active" else None

        _eventually(restarted, _EVENT_TIMEOUT, "a restart by the watchdog")
        assert int(box.show(_UNIT, "NRestarts")) == restarts + 1
        # SIGABRT: faulthandler (PYTHONFAULTHANDLER=1) shows where each thread was
        _wait_messages(
            box,
            before,
            lambda m: "Watchdog timeout" in m,
            lambda m: m.startswith("Fatal Python error: Aborted"),
            what="the watchdog's timeout and faulthandler's report",
        )
    finally:
        override.unlink()
        box.systemctl("daemon-reload")


def test_a_hung_clamd_does_not_get_the_daemon_restarted(
    machine: Machine, started: Container
) -> None:
    """README: a clamd that hangs is not clamwatch hung. A real clamd SIGSTOPped with
    a scan in flight: the scan loses its session after request_timeout and waits to be
    sent again, the daemon keeps sending WATCHDOG=1, and after SIGCONT the file gets
    its true verdict, all in the one process systemd started."""
    box = started
    spare = PrivateClamd(machine.spare_clamd, tcp=False)  # stopped here: not the shared one
    override = machine.drop_ins / "zz-test-watchdog.conf"
    # Short enough that a few periods pass while clamd is stopped; the pings come
    # every 1.5 s, so a busy machine stalling the daemon for a second is no timeout.
    watchdog_sec = 3.0
    override.write_text(f"[Service]\nWatchdogSec={watchdog_sec:g}s\nRestartSec=1s\nLimitCORE=0\n")
    config = machine.etc_clamwatch / "clamwatch.toml"
    try:
        spare.start()
        config.write_text(
            f'[clamd]\naddress = "unix://{_SPARE_CLAMD}/{spare.socket_path.name}"\n'
            'request_timeout = "2s"\n'
            f'[daemon]\nsettle_time = "500ms"\n\n[[watch]]\npath = "{_WATCHED}"\n',
            encoding="utf-8",
        )
        box.systemctl("daemon-reload")
        box.systemctl("restart", _UNIT)
        assert box.show(_UNIT, "WatchdogUSec") == "3s"
        pid = box.show(_UNIT, "MainPID")
        restarts = box.show(_UNIT, "NRestarts")
        before = box.mark()
        assert spare.pid is not None
        os.kill(spare.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        name = f"while-clamd-hangs-{time.monotonic_ns()}.exe"
        inside = f"{_WATCHED}/{name}"
        try:
            machine.drop_file(name, eicar_bytes())
            _wait_messages(
                box,
                before,
                lambda m: (
                    "lost (no reply within 2 s (clamd stuck?)); 1 request(s) will be"
                    " sent again" in m
                ),
                what="the scan clamd holds to lose its session",
            )
            # "Not restarted" is the absence of an event, seen only by letting time
            # pass: three watchdog periods from the SIGSTOP, no more.
            time.sleep(max(0.0, stopped_at + 3 * watchdog_sec - time.monotonic()))
            assert box.show(_UNIT, "ActiveState") == "active"
            assert box.show(_UNIT, "MainPID") == pid
            assert box.show(_UNIT, "NRestarts") == restarts
            said = [str(e.get("MESSAGE", "")) for e in box.journal("-u", _UNIT, after=before)]
            assert not [m for m in said if "Watchdog timeout" in m], said
            assert not [m for m in said if "has not run for" in m], said  # daemon._watchdog
            assert _events(box, EventKind.DETECTION, before, f"CLAMWATCH_PATH={inside}") == []
        finally:
            os.kill(spare.pid, signal.SIGCONT)
        # a reconnect's backoff (10 s at most) and handshake, then the scan
        found = _eventually(
            lambda: next(
                iter(_events(box, EventKind.DETECTION, before, f"CLAMWATCH_PATH={inside}")), None
            ),
            60,
            "the file's verdict after SIGCONT",
        )
        assert found["CLAMWATCH_SIGNATURE"] == EICAR_SIGNATURE
        assert box.show(_UNIT, "MainPID") == pid
        assert box.show(_UNIT, "NRestarts") == restarts
    finally:
        if spare.pid is not None:
            os.kill(spare.pid, signal.SIGCONT)
        override.unlink()
        machine.write_config(good=True)
        box.systemctl("daemon-reload")
        box.systemctl("restart", _UNIT)  # off the spare clamd, stopped next
        spare.stop()


def test_stop_is_clean(machine: Machine, started: Container) -> None:
    box = started
    before = box.mark()
    began = time.monotonic()
    box.systemctl("stop", _UNIT)
    took = time.monotonic() - began
    assert box.show(_UNIT, "ActiveState") == "inactive"
    assert box.show(_UNIT, "Result") == "success"
    assert box.show(_UNIT, "ExecMainStatus") == "0"
    assert took < 20, f"stopping took {took:.1f} s"
    _wait_event(box, EventKind.STOPPING, before)
    _wait_event(box, EventKind.STOPPED, before)
    box.run("test", "-f", "/var/lib/clamwatch/state.json")


# -- folders the sandbox leaves read-only -------------------------------------------


def test_a_read_only_watch_or_release_to_is_named_with_the_setting_to_change(
    machine: Machine, started: Container
) -> None:
    box = started
    # /srv/outside and /srv/released: not in ReadWritePaths= (the drop-in
    # lists /srv/uploads), so ProtectSystem=strict mounts them read-only
    box.run("mkdir", "-p", "/srv/outside", "/srv/released")
    before = box.mark()
    config = machine.etc_clamwatch / "clamwatch.toml"
    config.write_text(
        config.read_text(encoding="utf-8")
        + 'on_clean = ["release"]\nrelease_to = "/srv/released"\n'
        + '\n[[watch]]\npath = "/srv/outside"\n',
        encoding="utf-8",
    )
    box.systemctl("reload", _UNIT)
    root = _wait_event(box, EventKind.READ_ONLY, before, "CLAMWATCH_PATH=/srv/outside")
    assert root["CLAMWATCH_SETTING"] == "[[watch]] path"
    assert root["CLAMWATCH_WATCH"] == "/srv/outside"
    assert root["PRIORITY"] == "3"
    assert "move, tag will fail there" in root["MESSAGE"]
    assert f"ReadWritePaths= with `systemctl edit {_UNIT}`" in root["MESSAGE"]
    release = _wait_event(box, EventKind.READ_ONLY, before, "CLAMWATCH_PATH=/srv/released")
    assert release["CLAMWATCH_SETTING"] == "release_to"
    assert release["CLAMWATCH_WATCH"] == _WATCHED
    # the writable ones are not named
    named = {e["CLAMWATCH_PATH"] for e in _events(box, EventKind.READ_ONLY, before)}
    assert named == {"/srv/outside", "/srv/released"}
    # journalctl -x explains it
    explained = box.run(
        "journalctl", "--no-pager", "-x", "-u", _UNIT,
        f"MESSAGE_ID={MESSAGE_IDS[EventKind.READ_ONLY]}", "CLAMWATCH_PATH=/srv/outside",
    ).stdout  # fmt: skip
    assert "Subject: [[watch]] path /srv/outside is read-only to clamwatch" in explained
    _wait_active(box)


def test_an_instance_with_the_default_state_directory_says_it_is_read_only(
    machine: Machine, container: Container
) -> None:
    box = container
    instance = "clamwatch@tenant.service"
    box.run("mkdir", "-p", "/srv/tenant")
    config = machine.etc_clamwatch / "tenant.toml"
    # rules that only read the tree (no move, no tag): it is not named
    watch = (
        '[[watch]]\npath = "/srv/tenant"\nhook = ["/bin/true"]\n'
        'on_infected = ["hook"]\non_not_scanned = ["hook"]\non_error = ["hook"]\n'
    )
    config.write_text(watch)
    before = box.mark()
    try:
        box.systemctl("start", instance)
        match = f"MESSAGE_ID={MESSAGE_IDS[EventKind.READ_ONLY]}"
        found = _eventually(
            lambda: box.journal("-u", instance, match, after=before) or None,
            _EVENT_TIMEOUT,
            "a read-only event",
        )
        assert [e["CLAMWATCH_PATH"] for e in found] == ["/var/lib/clamwatch"]
        assert found[0]["CLAMWATCH_SETTING"] == "[daemon] state_directory"
        assert "systemd gives this service /var/lib/clamwatch/tenant" in found[0]["MESSAGE"]
        box.systemctl("stop", instance, check=False)

        # as the unit's header says: it works once the configuration names its own
        config.write_text(
            '[daemon]\nstate_directory = "/var/lib/clamwatch/tenant"\n'
            '[quarantine]\ndirectory = "/var/lib/clamwatch/tenant/quarantine"\n' + watch
        )
        before = box.mark()
        box.systemctl("start", instance)
        box.systemctl("stop", instance)
        assert box.show(instance, "Result") == "success"
        # the stop's event came after any the start made
        _wait_event_of(box, instance, EventKind.STOPPED, before)
        assert box.journal("-u", instance, match, after=before) == []
        box.run("test", "-f", "/var/lib/clamwatch/tenant/state.json")
    finally:
        box.systemctl("stop", instance, check=False)
        box.systemctl("reset-failed", instance, check=False)
