"""What a scan concluded about one file.

Four kinds, and only two of them say anything about the content: a file that
was not scanned (too large, a symlink, clamd lost) is never clean and never
infected. A detection is data, never an exception.
"""

from __future__ import annotations

import enum

from clamwatch.value import Value

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from typing import Final


class NotScannedReason(enum.Enum):
    """Why a file was not scanned although nothing went wrong."""

    TOO_LARGE = "too-large"  # over clamd's StreamMaxLength (INSTREAM) or our own limit
    NOT_REGULAR = "not-regular"  # fifo, socket, device or directory
    SYMLINK = "symlink"  # never followed: the target may be outside the tree
    VANISHED = "vanished"  # not there to be opened: removed meanwhile, or never there
    UNSUPPORTED = "unsupported"  # clamd cannot do what was asked (command unavailable)
    EXCLUDED = "excluded"  # clamd's own ExcludePath matched
    TIME_LIMIT = "time-limit"  # clamd's OK came as late as its MaxScanTime: perhaps cut short


class Clean(Value):
    """clamd scanned the content and found nothing."""

    __slots__ = ()
    kind = "clean"


class Infected(Value):
    """clamd scanned the content and reported a signature."""

    __slots__ = ("signature",)
    signature: Final[str]
    kind = "infected"

    def __init__(self, signature: str) -> None:
        self.signature = signature


class NotScanned(Value):
    """The content was not scanned, for a reason that is not a failure."""

    __slots__ = ("reason", "detail")
    reason: Final[NotScannedReason]
    detail: Final[str]
    kind = "not-scanned"

    def __init__(self, reason: NotScannedReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class ScanError(Value):
    """Scanning failed: clamd's error reply, an I/O error, or clamd unreachable."""

    __slots__ = ("message",)
    message: Final[str]
    kind = "error"

    def __init__(self, message: str) -> None:
        self.message = message


Verdict = Clean | Infected | NotScanned | ScanError


def describe(verdict: Verdict) -> str:
    """The status part of a clamdscan-style line: ``OK``, ``Sig FOUND``, ``... ERROR``."""
    match verdict:
        case Clean():
            return "OK"
        case Infected(signature=signature):
            return f"{signature} FOUND"
        case NotScanned(detail=detail):
            return f"Not scanned: {detail} ERROR"
        case ScanError(message=message):
            return f"{message} ERROR"
