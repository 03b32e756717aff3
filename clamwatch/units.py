"""Sizes and durations written the human way: "25M", "512K", "30s", "2m"."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str) -> int:
    """Bytes from "1048576", "100K", "25M", "1G" (binary multiples, as clamd.conf reads them)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a size (expected a number with an optional K, M, G or T)"
        )
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2).lower()]


def parse_duration(text: str) -> float:
    """Seconds from "250ms", "30", "30s", "5m", "1h", "7d"."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (expected e.g. 250ms, 30s, 5m, 1h, 7d)")
    return float(match.group(1)) * _DURATION_FACTORS[(match.group(2) or "s").lower()]
