"""A file handed to the clamd engine, and what came of it."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    verdict: Verdict
    transport: Transport | None  # None: the engine decided without asking clamd
    clamd_version: str | None  # "ClamAV 1.4.6/27431/..." of the session that answered
    attempts: int  # how many times the request was sent


@dataclass(eq=False, slots=True)
class ScanJob:
    """One open file to scan. The engine never closes ``file``: its owner does.

    ``on_done`` is called exactly once, on the engine's thread: keep it short
    (put the outcome on a queue).
    """

    file: OpenedFile
    on_done: Callable[[ScanJob, ScanOutcome], None]
    context: object = None
    attempts: int = 0
    last_failure: str = ""
