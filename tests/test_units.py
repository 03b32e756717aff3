"""Sizes and durations as people (and clamd.conf) write them."""

from __future__ import annotations

import pytest

from clamwatch.units import parse_duration, parse_size

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1048576", MIB),
        ("100K", 100 * KIB),
        ("100k", 100 * KIB),
        ("25M", 25 * MIB),
        ("25m", 25 * MIB),
        ("25MB", 25 * MIB),
        ("25MiB", 25 * MIB),
        ("1G", GIB),
        ("4g", 4 * GIB),
        ("1T", 1024 * GIB),
        (" 25M ", 25 * MIB),
        ("25 M", 25 * MIB),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", " ", "M", "-1", "1.5M", "25X", "25 MBs", "abc", "1e6"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size") as info:
        parse_size(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("30", 30.0),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 7 * 86400.0),
        ("2H", 7200.0),
        (" 10 s ", 10.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "-1s", "1w", "abc", "1 2s", "1.s", "ms"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration") as info:
        parse_duration(text)
    assert repr(text) in str(info.value)
