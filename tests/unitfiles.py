"""The shipped systemd units and packaging files, as the systemd tests use them.

The units start /usr/bin/clamwatch, where a package installs it. Tests use
copies that start the venv's clamwatch instead (ExecStart=, ExecReload=),
changing nothing else.
"""

from __future__ import annotations

import re
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SYSTEMD_DIR = REPO / "systemd"
PACKAGING_DIR = REPO / "packaging"
UNITS = ("clamwatch.service", "clamwatch@.service")
DROP_IN_EXAMPLE = SYSTEMD_DIR / "clamwatch.service.d" / "watched-trees.conf.example"
CATALOG = PACKAGING_DIR / "clamwatch.catalog"
SYSUSERS = PACKAGING_DIR / "sysusers.d" / "clamwatch.conf"
TMPFILES = PACKAGING_DIR / "tmpfiles.d" / "clamwatch.conf"

INSTALLED_BINARY = "/usr/bin/clamwatch"


def venv_binary() -> Path:
    """The clamwatch entry point of the running interpreter's environment."""
    return Path(sysconfig.get_path("scripts")) / "clamwatch"


def unit_text_for(name: str, binary: Path) -> str:
    """The shipped unit ``name`` with its Exec*= lines starting ``binary``
    instead of /usr/bin/clamwatch."""
    text = (SYSTEMD_DIR / name).read_text(encoding="utf-8")
    if len(re.findall(f"^ExecStart={re.escape(INSTALLED_BINARY)} ", text, re.M)) != 1:
        raise AssertionError(f"{name}: expected one ExecStart={INSTALLED_BINARY} ...")
    return re.sub(
        f"^(Exec[A-Za-z]*=){re.escape(INSTALLED_BINARY)} ",
        lambda match: f"{match.group(1)}{binary} ",
        text,
        flags=re.M,
    )


def copy_unit(name: str, directory: Path, binary: Path) -> Path:
    """Write the unit, Exec*= rewritten, into ``directory``; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(unit_text_for(name, binary), encoding="utf-8")
    return path


def settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment in a unit file, in order.

    Enough of systemd.syntax(7) for the files shipped here: comments start
    with # or ;, no line continuations.
    """
    found: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not an assignment: {raw!r}")
        found.append((section, key.strip(), value.strip()))
    return found
