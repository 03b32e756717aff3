"""Value records, and what `clamwatch scan` imports to start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from clamwatch.clamd.protocol import Ping, ScanReply, Stats
from clamwatch.value import Value
from clamwatch.verdict import Infected, NotScanned, NotScannedReason, ScanError


class _Point(Value):
    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y


class _Labelled(_Point):
    __slots__ = ("label",)

    def __init__(self, x: int, y: int, label: str) -> None:
        super().__init__(x, y)
        self.label = label


def test_equal_by_class_and_fields() -> None:
    assert Infected("Eicar") == Infected("Eicar")
    assert Infected("Eicar") != Infected("Other")
    # same field values, other class: never equal (a verdict is not its text)
    assert Infected("x") != ScanError("x")
    assert ScanReply(1, Infected("x")) != ScanReply(1, ScanError("x"))
    assert Ping() == Ping()
    assert Ping() != Stats()


def test_hash_follows_equality() -> None:
    found = {Infected("a"), Infected("a"), ScanError("a"), Ping(), Ping()}
    assert found == {Infected("a"), ScanError("a"), Ping()}


def test_repr_names_every_field_in_order() -> None:
    assert repr(NotScanned(NotScannedReason.SYMLINK, "link")) == (
        "NotScanned(reason=<NotScannedReason.SYMLINK: 'symlink'>, detail='link')"
    )
    assert repr(Ping()) == "Ping()"


def test_inherited_fields_come_first() -> None:
    point = _Labelled(1, 2, "a")
    assert repr(point) == "_Labelled(x=1, y=2, label='a')"
    assert point == _Labelled(1, 2, "a")
    assert point != _Labelled(1, 2, "b")
    assert point != _Point(1, 2)


def test_slots_must_be_a_tuple() -> None:
    with pytest.raises(TypeError, match="tuple"):

        class _Bad(Value):
            __slots__ = "x"  # noqa: PLC0205 (the mistake under test)


def test_scan_starts_without_the_modules_it_does_not_need() -> None:
    """`clamwatch scan` is timed against clamdscan; each of these cost it 1-7 ms."""
    code = (
        "import sys\n"
        "import clamwatch.cli, clamwatch.scan_command\n"
        "clamwatch.cli.build_parser('scan').parse_args(['scan', '/'])\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('dataclasses', 'inspect', 'json', 'base64', 'shutil', 'tomllib', 'watchdog',"
        " 'typing', 'pathlib', 'urllib', 'logging', 'random'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
