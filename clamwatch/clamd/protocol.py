"""The clamd protocol, with no I/O at all.

Commands go in and come out as bytes (plus the descriptors to pass with
them); bytes from clamd go in and come out as typed replies. Sockets,
selectors and timeouts live in :mod:`clamwatch.clamd.session`. The shape is
h11's: ``send()``, ``receive_data()`` (``b""`` is EOF) and ``next_event()``.

Only z-framing is produced: NUL ends a record, so paths and STATS output may
hold newlines. Facts about the real clamd come from
shared/reference/clamd-behaviour.md and clamd/session.c.
"""

from __future__ import annotations

import enum
import re
import struct

from clamwatch.value import Value
from clamwatch.verdict import (
    Clean,
    Infected,
    NotScanned,
    NotScannedReason,
    ScanError,
    Verdict,
)

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from typing import Final

# The longest legitimate record is a STATS reply: a few fixed lines plus one
# line (< 300 bytes) per queued job and per thread. 256 KiB leaves room for a
# MaxQueue of several hundred; anything longer without a terminator is garbage
# and must not grow our memory without bound.
MAX_RECORD = 256 * 1024

# clamd caps one INSTREAM chunk by StreamMaxLength only; 64 KiB keeps our own
# buffers small while amortising the 4-byte header.
STREAM_CHUNK = 64 * 1024

# Sent without an id, newline-terminated whatever the framing, then clamd
# closes (clamd/server-th.c, ReadTimeout and CommandReadTimeout).
READ_TIMED_OUT = b"COMMAND READ TIMED OUT\n"


class LocalProtocolError(Exception):
    """We asked for something the protocol does not allow in this state."""


class RemoteProtocolError(Exception):
    """clamd sent something that is not a valid reply."""


class State(enum.Enum):
    IDLE = "idle"  # connected, nothing sent yet
    SINGLE = "single"  # one command sent outside a session; clamd answers it, then closes
    SESSION = "session"  # inside IDSESSION: commands may be sent
    STREAMING = "streaming"  # inside an INSTREAM body: only chunks may be sent
    ENDING = "ending"  # END sent (or clamd ended the session): replies may still arrive
    CLOSED = "closed"  # clamd closed the connection
    ERROR = "error"  # a protocol error on either side; the connection is unusable


# -- commands ---------------------------------------------------------------


class Ping(Value):
    __slots__ = ()


class Version(Value):
    __slots__ = ()


class VersionCommands(Value):
    __slots__ = ()


class Stats(Value):
    __slots__ = ()


class Scan(Value):
    """SCAN of a path as clamd itself sees it."""

    __slots__ = ("path",)
    path: Final[bytes]

    def __init__(self, path: bytes) -> None:
        self.path = path


class Fildes(Value):
    """FILDES: clamd scans the descriptor we pass with SCM_RIGHTS."""

    __slots__ = ("fd",)
    fd: Final[int]

    def __init__(self, fd: int) -> None:
        self.fd = fd


class Instream(Value):
    """INSTREAM: the body follows as chunks (:meth:`ClamdProtocol.stream_chunk`)."""

    __slots__ = ()


class End(Value):
    __slots__ = ()


Command = Ping | Version | VersionCommands | Stats | Scan | Fildes | Instream | End


class Outgoing(Value):
    """Bytes to write; ``fds`` must travel with the first of them (SCM_RIGHTS)."""

    __slots__ = ("data", "fds", "request_id")
    data: Final[bytes]
    fds: Final[tuple[int, ...]]
    request_id: Final[int | None]

    def __init__(self, data: bytes, fds: tuple[int, ...], request_id: int | None) -> None:
        self.data = data
        self.fds = fds
        self.request_id = request_id


# -- events -----------------------------------------------------------------


class Pong(Value):
    __slots__ = ("request_id",)
    request_id: Final[int]

    def __init__(self, request_id: int) -> None:
        self.request_id = request_id


class VersionReply(Value):
    __slots__ = ("request_id", "version")
    request_id: Final[int]
    version: Final[str]  # "ClamAV 1.4.6/27431/Mon Nov 24 08:00:00 2026", or just "ClamAV 1.4.6"

    def __init__(self, request_id: int, version: str) -> None:
        self.request_id = request_id
        self.version = version


class CommandsReply(Value):
    __slots__ = ("request_id", "version", "commands")
    request_id: Final[int]
    version: Final[str]
    commands: Final[frozenset[str]]

    def __init__(self, request_id: int, version: str, commands: frozenset[str]) -> None:
        self.request_id = request_id
        self.version = version
        self.commands = commands


class StatsReply(Value):
    __slots__ = ("request_id", "text", "max_threads", "queue_items")
    request_id: Final[int]
    text: Final[str]
    max_threads: Final[int | None]  # from "THREADS: live 1  idle 0 max 12 idle-timeout 30"
    queue_items: Final[int | None]  # from "QUEUE: 0 items"

    def __init__(
        self, request_id: int, text: str, max_threads: int | None, queue_items: int | None
    ) -> None:
        self.request_id = request_id
        self.text = text
        self.max_threads = max_threads
        self.queue_items = queue_items


class ScanReply(Value):
    __slots__ = ("request_id", "verdict")
    request_id: Final[int]
    verdict: Final[Verdict]

    def __init__(self, request_id: int, verdict: Verdict) -> None:
        self.request_id = request_id
        self.verdict = verdict


class CommandFailed(Value):
    """clamd refused a non-scan command (COMMAND UNAVAILABLE, ... ERROR)."""

    __slots__ = ("request_id", "message")
    request_id: Final[int]
    message: Final[str]

    def __init__(self, request_id: int, message: str) -> None:
        self.request_id = request_id
        self.message = message


class SessionEnded(Value):
    """clamd said, without an id, that it is ending the connection."""

    __slots__ = ("reason",)
    reason: Final[str]

    def __init__(self, reason: str) -> None:
        self.reason = reason


class ConnectionClosed(Value):
    """EOF from clamd. ``unanswered`` are the ids that got no reply: never scanned."""

    __slots__ = ("unanswered",)
    unanswered: Final[tuple[int, ...]]

    def __init__(self, unanswered: tuple[int, ...]) -> None:
        self.unanswered = unanswered


class NeedData(enum.Enum):
    NEED_DATA = "need-data"


NEED_DATA = NeedData.NEED_DATA

Event = (
    Pong
    | VersionReply
    | CommandsReply
    | StatsReply
    | ScanReply
    | CommandFailed
    | SessionEnded
    | ConnectionClosed
)


class _Kind(enum.Enum):
    PING = "ping"
    VERSION = "version"
    VERSIONCOMMANDS = "versioncommands"
    STATS = "stats"
    SCAN = "scan"
    FILDES = "fildes"
    INSTREAM = "instream"


_WIRE_NAME: dict[type[Command], bytes] = {
    Ping: b"PING",
    Version: b"VERSION",
    VersionCommands: b"VERSIONCOMMANDS",
    Stats: b"STATS",
    Fildes: b"FILDES",
    Instream: b"INSTREAM",
    End: b"END",
}

_KIND: dict[type[Command], _Kind] = {
    Ping: _Kind.PING,
    Version: _Kind.VERSION,
    VersionCommands: _Kind.VERSIONCOMMANDS,
    Stats: _Kind.STATS,
    Scan: _Kind.SCAN,
    Fildes: _Kind.FILDES,
    Instream: _Kind.INSTREAM,
}

_FD_NAME = re.compile(r"^fd\[\d+\]: ")
_THREADS = re.compile(r"^THREADS:.*\bmax (\d+)", re.MULTILINE)
_QUEUE = re.compile(r"^QUEUE: (\d+) items", re.MULTILINE)


class _Pending:
    __slots__ = ("kind", "path")

    def __init__(self, kind: _Kind, path: bytes = b"") -> None:
        self.kind = kind
        self.path = path  # for SCAN: the name clamd echoes back


_PENDING_FILDES = _Pending(_Kind.FILDES)
_PENDING_INSTREAM = _Pending(_Kind.INSTREAM)
_INSTREAM_WIRE = b"zINSTREAM\0"
_LENGTH = struct.Struct(">I")  # an INSTREAM chunk's length, big-endian
_STREAM_END = b"\0\0\0\0"
# clamdscan sends the descriptor on one dummy byte after the command; clamd
# ignores that NUL (it is an empty z-record) and it does not take an id.
# Sending both in one sendmsg works the same against clamd 1.4 and saves a
# syscall.
_FILDES_WIRE = b"zFILDES\0\0"
# The replies almost every scan gets, recognised before any other parsing.
_FD_OK = re.compile(rb"fd\[\d+\]: OK")
_STREAM_OK = b"stream: OK"
CLEAN = Clean()


class ClamdProtocol:
    """One clamd connection's protocol state, z-framed."""

    def __init__(self) -> None:
        self.state = State.IDLE
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._buffer = bytearray()
        self._scanned = 0  # how much of _buffer is known to hold no NUL
        self._eof = False
        self._closed_reported = False
        self._in_session = False

    # -- sending --------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    def start_session(self) -> bytes:
        """``zIDSESSION``: every later command gets an id; the first is 1."""
        self._require(State.IDLE, "IDSESSION")
        self.state = State.SESSION
        self._in_session = True
        return b"zIDSESSION\0"

    def send(self, command: Command) -> Outgoing:
        """Frame one command. Inside a session the reply will carry ``request_id``."""
        if isinstance(command, Scan) and b"\0" in command.path:
            raise LocalProtocolError("a path cannot hold a NUL byte")
        if self.state is State.IDLE:
            if isinstance(command, End):
                raise LocalProtocolError("END outside IDSESSION")
            self.state = State.STREAMING if isinstance(command, Instream) else State.SINGLE
        elif self.state is State.SESSION:
            if isinstance(command, End):
                self.state = State.ENDING
            elif isinstance(command, Instream):
                self.state = State.STREAMING
        else:
            raise LocalProtocolError(
                f"cannot send {type(command).__name__} in state {self.state.value}"
            )
        if isinstance(command, Scan):
            data = b"zSCAN " + command.path + b"\0"
        else:
            data = b"z" + _WIRE_NAME[type(command)] + b"\0"
        request_id = self._next_id
        self._next_id += 1
        if not isinstance(command, End):
            self._pending[request_id] = _Pending(
                _KIND[type(command)], command.path if isinstance(command, Scan) else b""
            )
        if isinstance(command, Fildes):
            return Outgoing(_FILDES_WIRE, (command.fd,), request_id)
        return Outgoing(data, (), None if isinstance(command, End) else request_id)

    def send_fildes(self, fd: int) -> tuple[bytes, int]:
        """``send(Fildes(fd))`` for the hot path: the bytes (``fd`` rides on them) and the id."""
        if self.state is not State.SESSION:
            outgoing = self.send(Fildes(fd))
            assert outgoing.request_id is not None
            return outgoing.data, outgoing.request_id
        request_id = self._next_id
        self._next_id = request_id + 1
        self._pending[request_id] = _PENDING_FILDES
        return _FILDES_WIRE, request_id

    def send_instream(self, body: bytes) -> tuple[bytes, int]:
        """A whole INSTREAM request, for a body known in full: command, chunks and end.

        Returns the bytes and the request id; the state is as after
        ``stream_end()``, so further commands may follow at once.
        """
        if self.state is State.SESSION and 0 < len(body) <= STREAM_CHUNK:
            request_id = self._next_id
            self._next_id = request_id + 1
            self._pending[request_id] = _PENDING_INSTREAM
            return b"".join(
                (_INSTREAM_WIRE, _LENGTH.pack(len(body)), body, _STREAM_END)
            ), request_id
        outgoing = self.send(Instream())
        assert outgoing.request_id is not None
        parts = [outgoing.data]
        parts.extend(
            self.stream_chunk(body[at : at + STREAM_CHUNK])
            for at in range(0, len(body), STREAM_CHUNK)
        )
        parts.append(self.stream_end())
        return b"".join(parts), outgoing.request_id

    def stream_chunk(self, chunk: bytes) -> bytes:
        """One INSTREAM chunk: a 4-byte big-endian length, then the bytes."""
        self._require(State.STREAMING, "an INSTREAM chunk")
        if not chunk:
            raise LocalProtocolError("an empty chunk ends the stream: use stream_end()")
        return _LENGTH.pack(len(chunk)) + chunk

    def stream_end(self) -> bytes:
        """The zero-length chunk that ends an INSTREAM body."""
        self._require(State.STREAMING, "the end of an INSTREAM body")
        self.state = State.SESSION if self._in_session else State.SINGLE
        return _STREAM_END

    def _require(self, state: State, what: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"cannot send {what} in state {self.state.value}")

    # -- receiving ------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from clamd; ``b""`` means clamd closed the connection."""
        if self._eof:
            if data:
                raise LocalProtocolError("data after EOF")
            return
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Event | NeedData:
        """The next complete reply, or NEED_DATA."""
        if self.state is State.ERROR:
            raise RemoteProtocolError("the connection is in the error state")
        try:
            return self._next_event()
        except RemoteProtocolError:
            self.state = State.ERROR
            raise

    def _next_event(self) -> Event | NeedData:
        if self._buffer.startswith(READ_TIMED_OUT):
            del self._buffer[: len(READ_TIMED_OUT)]
            self.state = State.ENDING
            return SessionEnded(READ_TIMED_OUT.decode().strip())
        end = self._buffer.find(b"\0", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            return self._incomplete()
        if end > MAX_RECORD:
            raise RemoteProtocolError(f"reply longer than {MAX_RECORD} bytes")
        record = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        return self._parse(record)

    def _incomplete(self) -> Event | NeedData:
        if len(self._buffer) > MAX_RECORD:
            raise RemoteProtocolError(f"reply longer than {MAX_RECORD} bytes without a terminator")
        if not self._eof:
            return NEED_DATA
        if self._buffer:
            if self._buffer.rstrip(b"\n") == READ_TIMED_OUT.rstrip(b"\n"):
                # the notice without its newline: clamd closed right after it
                self._buffer.clear()
                self.state = State.ENDING
                return SessionEnded("COMMAND READ TIMED OUT")
            raise RemoteProtocolError(
                f"connection closed inside a reply: {bytes(self._buffer[:80])!r}"
            )
        if self._closed_reported:
            return NEED_DATA
        self._closed_reported = True
        self.state = State.CLOSED
        unanswered = tuple(sorted(self._pending))
        self._pending.clear()
        return ConnectionClosed(unanswered)

    def _parse(self, record: bytes) -> Event:
        if not self._in_session:
            request_id, body = self._single_id(), record
        else:
            number, sep, body = record.partition(b": ")
            if not sep or not number.isdigit():
                return self._parse_unnumbered(record)
            request_id = int(number)
        pending = self._pending.pop(request_id, None)
        if pending is None:
            raise RemoteProtocolError(
                f"reply for request {request_id}, which was not asked: {record[:80]!r}"
            )
        if (pending.kind is _Kind.FILDES and _FD_OK.fullmatch(body)) or (
            pending.kind is _Kind.INSTREAM and body == _STREAM_OK
        ):
            return ScanReply(request_id, CLEAN)
        try:
            text = body.decode("utf-8", "surrogateescape")
        except UnicodeDecodeError as exc:  # pragma: no cover - surrogateescape never fails
            raise RemoteProtocolError(str(exc)) from exc
        return _typed_reply(request_id, pending, body, text)

    def _single_id(self) -> int:
        if len(self._pending) != 1:
            raise RemoteProtocolError("a second reply outside IDSESSION")
        return next(iter(self._pending))

    def _parse_unnumbered(self, record: bytes) -> Event:
        text = record.decode("utf-8", "replace").strip()
        if text in ("COMMAND READ TIMED OUT", "COMMAND UNAVAILABLE", "UNKNOWN COMMAND"):
            # clamd ends the session with these when it cannot tell which
            # request they belong to; every pending request is unanswered.
            self.state = State.ENDING
            return SessionEnded(text)
        raise RemoteProtocolError(f"reply without a request id: {record[:80]!r}")


def _typed_reply(request_id: int, pending: _Pending, body: bytes, text: str) -> Event:
    kind = pending.kind
    if kind in (_Kind.SCAN, _Kind.FILDES, _Kind.INSTREAM):
        return ScanReply(request_id, _scan_verdict(pending, body, text))
    if text in ("COMMAND UNAVAILABLE", "UNKNOWN COMMAND") or text.endswith(" ERROR"):
        return CommandFailed(request_id, text.removesuffix(" ERROR").rstrip("."))
    if kind is _Kind.PING:
        if text != "PONG":
            raise RemoteProtocolError(f"PING answered with {text[:80]!r}")
        return Pong(request_id)
    if kind is _Kind.VERSION:
        return VersionReply(request_id, text)
    if kind is _Kind.VERSIONCOMMANDS:
        version, sep, commands = text.partition("| COMMANDS:")
        if not sep:
            raise RemoteProtocolError(f"VERSIONCOMMANDS answered with {text[:80]!r}")
        return CommandsReply(request_id, version.strip(), frozenset(commands.split()))
    if not text.endswith("END"):
        raise RemoteProtocolError(f"STATS reply does not end with END: {text[-80:]!r}")
    threads = _THREADS.search(text)
    queue = _QUEUE.search(text)
    return StatsReply(
        request_id,
        text,
        int(threads.group(1)) if threads else None,
        int(queue.group(1)) if queue else None,
    )


def _scan_status(pending: _Pending, body: bytes, text: str) -> str:
    """The status part of a scan reply, after the name clamd echoes.

    We know the name: the path we sent, ``fd[N]`` or ``stream``. Splitting at
    the first or last ``": "`` instead would break on paths and messages that
    hold one (``/x: File path check failure: No such file or directory.``).
    Replies with no name at all (``INSTREAM size limit exceeded. ERROR``) are
    all status.
    """
    if pending.kind is _Kind.SCAN:
        prefix = pending.path + b": "
        if body.startswith(prefix):
            return body[len(prefix) :].decode("utf-8", "surrogateescape")
        # clamd names the realpath() of what it scanned for FOUND and most
        # errors (scanner.c, scan_callback): split at the last ": " then.
        return text.rpartition(": ")[2] if ": " in text else text
    if pending.kind is _Kind.FILDES:
        match = _FD_NAME.match(text)
        return text[match.end() :] if match else text
    return text.removeprefix("stream: ")


def _scan_verdict(pending: _Pending, body: bytes, text: str) -> Verdict:
    status = _scan_status(pending, body, text)
    if status in {"OK", "Empty file"}:
        # clamd 1.4 answers OK for an empty file; older ones said "Empty
        # file". Either way clamd looked at every byte there was.
        return CLEAN
    if status.endswith(" FOUND"):
        signature = status[: -len(" FOUND")]
        if not signature or "\n" in signature:
            raise RemoteProtocolError(f"malformed detection: {text[:80]!r}")
        return Infected(signature)
    if status.startswith("Excluded"):
        # "Excluded" (ExcludePath) or "Excluded (another filesystem)"
        return NotScanned(NotScannedReason.EXCLUDED, f"clamd said: {status}")
    if status in ("COMMAND UNAVAILABLE", "UNKNOWN COMMAND"):
        return NotScanned(NotScannedReason.UNSUPPORTED, f"clamd answered {status}")
    if status.endswith("ERROR"):
        return _error_verdict(status.removesuffix("ERROR").rstrip())
    raise RemoteProtocolError(f"unrecognised scan reply: {text[:80]!r}")


def _error_verdict(message: str) -> Verdict:
    if message.startswith("INSTREAM size limit exceeded"):
        return NotScanned(NotScannedReason.TOO_LARGE, "larger than clamd's StreamMaxLength")
    if message in ("Not a regular file", "Not supported file type"):
        return NotScanned(NotScannedReason.NOT_REGULAR, "not a regular file")
    return ScanError(message.rstrip(".") or "clamd reported an error")
