"""A journaled ext4 for the benchmarks' work folder, where the host's file system would skew them.

ext4 without a journal (some VM images are made so; the machines this
project is developed and tested on are) looks at the deletion time of every
free inode it considers for a new file or folder, and skips the inodes freed
in the last 60 s, or 360 s while their inode-table block is dirty
(fs/ext4/ialloc.c: ``recently_deleted()``, called from ``find_inode_bit()``
only when the file system has no journal). After a benchmark round has
removed its 10,000 files, or clamd has made and removed a folder for each of
10,000 scans, every new file walks past all of those inodes first: the
writers' and clamd's time then depends on what the benchmark did in the
minutes before, not on the tools.

Measured on such a root file system: the burst's two writers took 0.16 to
1.7 s (0.3 to 3.4 CPU-s, nearly all in ``recently_deleted``) for the same
10,000 files, run after run with nothing else going on; on a journaled ext4
image on the same disk, 0.114 to 0.121 s (0.21 to 0.23 CPU-s) six times in a
row. Debian's installer and mkfs.ext4 make a journal, so the image is what a
server's upload folder is on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CHOICES = ("auto", "yes", "no")

# Sparse: only what is written takes room on the disk under it. mkfs.ext4's
# default of one inode per 16 KiB gives this a million inodes, enough for the
# memory phase's 200,000 files and everything else of one run.
_IMAGE_BYTES = 16 * 1024**3
_IMAGE_NAME = "ext4.img"
_MOUNT_NAME = "fs"
# what a warning adds when the benchmark goes on without the image
_SKEWED = (
    "the writers' and clamd's times will depend on what was deleted there in the last"
    " minutes (benchmarks/README.md)"
)


@dataclass(frozen=True, slots=True)
class Scratch:
    folder: Path  # where the benchmark puts its files, clamd and daemons
    description: str  # for the report: what file system that is, and why


def add_ext4_image_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ext4-image",
        choices=CHOICES,
        default="auto",
        help="put the files, clamd and the daemons on a journaled ext4 image loop-mounted in the"
        " work folder: auto (default) when the work folder is on an ext4 with no journal, where"
        " every new file's time depends on what was deleted in the minutes before"
        " (benchmarks/README.md); yes: always (needs root); no: never",
    )


def ext4_without_journal(path: Path) -> str | None:
    """The block device's name when ``path`` is on an ext4 that has no journal, else None."""
    device = os.stat(path).st_dev
    link = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    if not link.exists():
        return None  # not on a block device (tmpfs, overlay, btrfs subvolume...)
    name = link.resolve().name
    ext4 = Path("/sys/fs/ext4") / name
    if not ext4.is_dir():
        return None
    try:  # Linux 5.16 and later
        return name if (ext4 / "journal_task").read_text().strip() == "<none>" else None
    except OSError:
        jbd2 = Path("/proc/fs/jbd2")  # one entry per journal: "vda-8"
        journals = os.listdir(jbd2) if jbd2.is_dir() else []
        return None if any(entry.startswith(f"{name}-") for entry in journals) else name


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


def _unmount(mountpoint: Path) -> None:
    """Unmount; a process that is slow to go away gets a few seconds first."""
    for _ in range(20):
        done = subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
        if done.returncode == 0:
            return
        time.sleep(0.25)
    _run(["umount", "--lazy", str(mountpoint)])


@contextlib.contextmanager
def scratch_folder(parent: Path, choice: str, say: Callable[[str], None]) -> Iterator[Scratch]:
    """Yield the folder to work in: ``parent`` itself, or a journaled ext4 mounted inside it.

    ``choice`` is ``auto`` (an image when ``parent`` is on an ext4 with no
    journal), ``yes`` or ``no``. The image is unmounted at the end and left
    in ``parent`` (as ``ext4.img``), which the caller removes or keeps.
    """
    device = ext4_without_journal(parent)
    where = f"{parent}, on {device}: ext4 with no journal" if device else str(parent)
    if choice == "no" or (choice == "auto" and device is None):
        yield Scratch(parent, where)
        return
    if os.geteuid() != 0:
        if choice == "yes":
            raise RuntimeError("--ext4-image yes needs root (mkfs.ext4 and mount)")
        say(f"warning: {where}, and only root can mount a journaled image instead; {_SKEWED}")
        yield Scratch(parent, where)
        return
    image, mountpoint = parent / _IMAGE_NAME, parent / _MOUNT_NAME
    try:
        with open(image, "wb") as sparse:
            sparse.truncate(_IMAGE_BYTES)
        _run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(image)])
        mountpoint.mkdir(exist_ok=True)
        # noinit_itable: no background zeroing of inode tables during the
        # timing (a sparse image reads as zeros anyway)
        _run(["mount", "-o", "loop,noinit_itable", str(image), str(mountpoint)])
    except (OSError, RuntimeError) as exc:
        if choice == "yes":
            raise RuntimeError(f"cannot make the ext4 image: {exc}") from exc
        say(f"warning: {where}, and no journaled image could be mounted instead ({exc}); {_SKEWED}")
        with contextlib.suppress(OSError):
            image.unlink()
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
        yield Scratch(parent, where)
        return
    try:
        mountpoint.chmod(0o755)
        why = f" instead of {where}" if device else ""
        yield Scratch(mountpoint, f"a journaled ext4 image loop-mounted at {mountpoint}{why}")
    finally:
        _unmount(mountpoint)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
