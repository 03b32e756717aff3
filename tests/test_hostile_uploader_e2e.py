"""A hostile uploader against the daemon: real files, real inotify, the real clamd.

The attacker runs as ``nobody`` (setpriv), in the watched folder (its cwd:
the test's tmp_path above it is root's alone), and owns what it uploads, so
it may set a file's mtime to anything (utimensat) and reopen a file it holds
any descriptor of (/proc/self/fd) for writing. Each attack is a script that
waits for the test's word between its steps.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemonproc import DaemonProcess, StartDaemon

Start = Callable[..., DaemonProcess]
NOBODY = pwd.getpwnam("nobody")
CLEAN = b"C" * 68  # as long as EICAR: a rewrite keeps the size


@pytest.fixture
def start(start_daemon: StartDaemon, tmp_path: Path, watched: Path) -> Start:
    os.chmod(watched, 0o1777)  # an upload folder: anyone writes, the sticky bit on

    def run(**watch_options: Any) -> DaemonProcess:
        return start_daemon(
            quarantine={"directory": str(tmp_path / "quarantine")}, watch_options=watch_options
        )

    return run


class Attacker:
    """A script run as nobody in ``where``; ``step()`` lets it go on to its next step."""

    def __init__(self, where: Path, script: str) -> None:
        prelude = "import os, sys\ndef wait():\n    assert sys.stdin.readline() == 'go\\n'\n"
        self.process = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
             sys.executable, "-c", prelude + script],
            cwd=where, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def said(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the attacker ended early (status {self.process.wait()})"
        return line.strip()

    def step(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def end(self) -> None:
        assert self.process.wait(timeout=30) == 0


def event_for(daemon: DaemonProcess, path: Path, kind: str, action: str | None = None) -> bool:
    return any(
        e["event"] == kind
        and e.get("path") == str(path)
        and (action is None or e.get("action") == action)
        for e in daemon.events
    )


def test_a_rewrite_with_its_mtime_set_back_is_scanned(
    start: Start, watched: Path, eicar: bytes
) -> None:
    """Scanned once it held still while its writer kept it open (settle_time),
    the file was rewritten with EICAR, same size, its mtime set back to the
    scanned one (utimensat: the owner may), then closed: the close was taken
    for one of the scanned version, whose (inode, size, mtime) it still had,
    and skipped. The clean verdict stuck to EICAR. ctime, which no one but
    the kernel sets, now tells it from the scanned version."""
    daemon = start()
    upload = watched / "upload.bin"
    attacker = Attacker(
        watched,
        f"""
fd = os.open({upload.name!r}, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, {CLEAN!r})
print("written", flush=True)
wait()
mtime = os.fstat(fd).st_mtime_ns
os.pwrite(fd, {eicar!r}, 0)
os.utime(fd, ns=(mtime, mtime))
os.close(fd)
print("rewritten", flush=True)
""",
    )
    try:
        assert attacker.said() == "written"
        daemon.wait_until(lambda _: event_for(daemon, upload, "clean"), 30, "the settled scan")
        attacker.step()
        assert attacker.said() == "rewritten"
        attacker.end()
        daemon.wait_until(
            lambda _: event_for(daemon, upload, "action-done", "move"), 30, "EICAR quarantined"
        )
    finally:
        attacker.process.kill()
        attacker.process.wait()
    assert not upload.exists()


def test_a_released_file_cannot_be_reopened_for_writing_by_its_uploader(
    start: Start, watched: Path, tmp_path: Path, eicar: bytes
) -> None:
    """A release to the same file system was a rename: the released file was
    the uploaded inode, still the uploader's, and a descriptor the uploader
    kept of it (O_PATH, which no lease and no link count shows) reopened it
    for writing through /proc/self/fd once it was released. EICAR went into
    the release folder unscanned. Now the release is a copy, a new inode."""
    released = tmp_path / "released"
    daemon = start(on_clean=["release"], release_to=str(released))
    upload = watched / "upload.bin"
    attacker = Attacker(
        watched,
        f"""
fd = os.open({upload.name!r}, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, {CLEAN!r})
handle = os.open({upload.name!r}, os.O_PATH)
os.close(fd)
print("uploaded", flush=True)
wait()
try:
    again = os.open(f"/proc/self/fd/{{handle}}", os.O_WRONLY)
except OSError as exc:
    print("refused", exc, flush=True)
else:
    os.pwrite(again, {eicar!r}, 0)
    os.close(again)
    print("rewritten", flush=True)
""",
    )
    try:
        assert attacker.said() == "uploaded"
        daemon.wait_until(
            lambda _: event_for(daemon, upload, "action-done", "release"), 30, "the release"
        )
        attacker.step()
        attacker.said()  # rewritten (the uploaded inode, out of the tree) or refused
        attacker.end()
    finally:
        attacker.process.kill()
        attacker.process.wait()
    assert (released / upload.name).read_bytes() == CLEAN
