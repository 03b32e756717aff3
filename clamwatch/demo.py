"""`clamwatch demo`: the quick start, with nothing to configure.

A private clamd (its own socket and database folder holding the bundled test
signature) is started, and the clamwatch daemon watches a demo upload folder
with it. Once the watch is armed, demo uploads arrive: clean files in a small
tree and one EICAR test file. Drop more files in yourself; Ctrl-C (or
``--for``) stops the daemon, then clamd.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path

from clamwatch.clamd.settings import ClamdSettings
from clamwatch.config import Config, DaemonSettings, QuarantineSettings, WatchConfig
from clamwatch.daemon import Daemon, setup_logging
from clamwatch.privateclamd import PrivateClamd
from clamwatch.testsig import eicar_bytes


def write_demo_uploads(folder: Path) -> int:
    """Clean files in a small tree, and one file holding the EICAR test string."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "docs").mkdir(exist_ok=True)
    (folder / "README.txt").write_text("An upload folder for the clamwatch demo.\n")
    for number in range(20):
        (folder / "images" / f"photo-{number:02}.jpg").write_bytes(bytes([number]) * 4096)
    (folder / "docs" / "report.csv").write_text("id,name\n1,alpha\n2,beta\n")
    (folder / "docs" / "eicar-test-file.com").write_bytes(eicar_bytes())
    return 23


def _upload_when_armed(daemon: Daemon, uploads: Path, stop: threading.Event) -> None:
    deadline = time.monotonic() + 60
    while daemon.watcher.armed == 0:
        if stop.wait(0.05) or time.monotonic() > deadline:
            return
    count = write_demo_uploads(uploads)
    print(
        f"clamwatch demo: uploaded {count} files into {uploads} ({count - 1} clean, one EICAR)",
        file=sys.stderr,
        flush=True,
    )


def run_demo(workdir: Path, duration: float | None) -> int:
    workdir = workdir.absolute()
    uploads = workdir / "uploads"
    if uploads.exists():
        shutil.rmtree(uploads)
    uploads.mkdir(parents=True)
    clamd = PrivateClamd(workdir / "clamd", max_threads=2, tcp=False)
    config = Config(
        source=Path("(clamwatch demo)"),
        clamd=ClamdSettings(address=clamd.unix_address),
        daemon=DaemonSettings(
            state_directory=workdir / "state", settle_time=1.0, startup_scan="all"
        ),
        watches=(WatchConfig(uploads, "demo uploads"),),
        # its own: the default is the real service's, /var/lib/clamwatch/quarantine
        quarantine=QuarantineSettings(directory=workdir / "quarantine"),
    )
    say = sys.stderr
    say.write(f"clamwatch demo: starting a private clamd at {clamd.unix_address}\n")
    say.write(
        f"clamwatch demo: infected files go to {workdir / 'quarantine'}"
        f" (clamwatch quarantine --directory {workdir / 'quarantine'} list)\n"
    )
    with clamd:
        setup_logging("text")
        daemon = Daemon(config)
        say.write(
            f"clamwatch demo: watching {uploads}; drop files in to see them scanned,"
            f" {'Ctrl-C' if duration is None else f'stopping after {duration:g} s, or Ctrl-C'}"
            " to stop\n"
        )
        stop = threading.Event()
        uploader = threading.Thread(target=_upload_when_armed, args=(daemon, uploads, stop))
        timer = threading.Timer(duration or 0, daemon.stop_requested.set)
        uploader.start()
        if duration is not None:
            timer.start()
        try:
            code = daemon.run()
        finally:
            stop.set()
            timer.cancel()
            uploader.join()
    say.write("clamwatch demo: private clamd stopped\n")
    return code
