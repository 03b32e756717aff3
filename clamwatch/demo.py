"""`clamwatch demo`: the quick start, with nothing to configure.

A private clamd (its own socket and database folder holding the bundled test
signature) is started, a demo upload folder is written with clean files and
one EICAR test file, and the folder is scanned with the same engine as
`clamwatch scan`. clamd is stopped again at the end.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from clamwatch.privateclamd import PrivateClamd
from clamwatch.scan_command import ScanOptions, run_scan
from clamwatch.testsig import eicar_bytes


def write_demo_uploads(folder: Path) -> None:
    """Clean files in a small tree, and one file holding the EICAR test string."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    (folder / "docs").mkdir()
    (folder / "README.txt").write_text("An upload folder for the clamwatch demo.\n")
    for number in range(20):
        (folder / "images" / f"photo-{number:02}.jpg").write_bytes(bytes([number]) * 4096)
    (folder / "docs" / "report.csv").write_text("id,name\n1,alpha\n2,beta\n")
    (folder / "docs" / "eicar-test-file.com").write_bytes(eicar_bytes())


def run_demo(workdir: Path) -> int:
    workdir = workdir.absolute()
    uploads = workdir / "uploads"
    write_demo_uploads(uploads)
    files = sum(1 for path in uploads.rglob("*") if path.is_file())
    print(f"clamwatch demo: wrote {uploads}: {files - 1} clean files and one EICAR test file")
    clamd = PrivateClamd(workdir / "clamd", max_threads=2, tcp=False)
    print(f"clamwatch demo: starting a private clamd at {clamd.unix_address}")
    with clamd:
        print(f"clamwatch demo: clamwatch scan --address {clamd.unix_address} {uploads}\n")
        sys.stdout.flush()
        code = run_scan(ScanOptions(paths=[str(uploads)], address=clamd.unix_address))
    print(f"\nclamwatch demo: scan exit status {code} (1: an infected file was found, as expected)")
    print("clamwatch demo: private clamd stopped")
    return 0 if code == 1 else 1
