"""A file handed to the clamd engine, and what came of it."""

from __future__ import annotations

import enum

from clamwatch.value import Value

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final

    from clamwatch.files import OpenedFile
    from clamwatch.verdict import Verdict


class Transport(enum.Enum):
    """How the content reaches clamd."""

    FILDES = "fildes"  # the open descriptor is passed over a Unix socket (SCM_RIGHTS)
    INSTREAM = "instream"  # the bytes are sent over the socket, in chunks


class TransportChoice(enum.Enum):
    AUTO = "auto"  # FILDES on a Unix socket when clamd offers it, else INSTREAM
    FILDES = "fildes"
    INSTREAM = "instream"


def choose_transport(choice: TransportChoice, is_unix: bool, commands: frozenset[str]) -> Transport:
    """FILDES on a Unix socket when asked for, or offered (VERSIONCOMMANDS) and not refused."""
    if choice is TransportChoice.INSTREAM or not is_unix:
        return Transport.INSTREAM
    if choice is TransportChoice.FILDES or "FILDES" in commands:
        return Transport.FILDES
    return Transport.INSTREAM


class ScanOutcome(Value):
    __slots__ = ("verdict", "transport", "clamd_version", "attempts")
    verdict: Final[Verdict]
    transport: Final[Transport | None]  # None: the engine decided without asking clamd
    clamd_version: Final[str | None]  # "ClamAV 1.4.6/27431/..." of the session that answered
    attempts: Final[int]  # how many times the request was sent

    def __init__(
        self,
        verdict: Verdict,
        transport: Transport | None,
        clamd_version: str | None,
        attempts: int,
    ) -> None:
        self.verdict = verdict
        self.transport = transport
        self.clamd_version = clamd_version
        self.attempts = attempts


class ScanJob:
    """One open file to scan. The engine never closes ``file``: its owner does.

    ``on_done`` is called exactly once, on the engine's thread: keep it short
    (put the outcome on a queue).
    """

    __slots__ = ("file", "on_done", "context", "attempts", "last_failure")

    def __init__(
        self,
        file: OpenedFile,
        on_done: Callable[[ScanJob, ScanOutcome], None],
        context: object = None,
    ) -> None:
        self.file = file
        self.on_done = on_done
        self.context = context
        self.attempts = 0  # how many times it was sent to clamd
        self.last_failure = ""  # why the last attempt got no verdict
