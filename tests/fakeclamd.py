"""A fake clamd for the faults a real one cannot be made to produce on demand.

It speaks clamd 1.4.6's protocol as shared/reference/clamd-behaviour.md and
clamd/session.c describe it (z/n framing, IDSESSION ids, FILDES with
SCM_RIGHTS, INSTREAM chunks, the exact error texts), checked against the
real daemon by tests/test_fakeclamd.py. On top of that a frozen `Faults`
value chooses what goes wrong: reply order, 1-byte writes, garbage, a stall,
a connection cut mid-reply or dropped, COMMAND UNAVAILABLE, no FILDES, a
small StreamMaxLength, a short ReadTimeout, slow scans.

Requests are numbered 1, 2, ... across the whole FakeClamd (every
connection), in the order they are read; every command that gets a reply is
a request, the IDSESSION that opens a session and its END are not. The
`*_after` and `*_at` fault fields count in these numbers, and each fault
fires once per FakeClamd; with `Faults.repeat` they count each connection's
requests from 1 instead and fire on every connection.

One thread accepts; each connection gets a thread of its own that reads,
"scans" and writes; there is no shared worker pool. `stop()` joins them all.

Two quirks of the real clamd 1.4.6 (seen in tests against it) the fake does
not copy, because a client must avoid them rather than survive them:

- A FILDES sent right behind an INSTREAM in one session (even with a PING
  between them), before the INSTREAM's reply came back, nearly always loses
  its descriptor: "N: No file descriptor received. ERROR", then mostly a
  reset. Sent after that reply had arrived, it never did.
- Inside a session, VERSION, VERSIONCOMMANDS and STATS replies are written
  in several pieces (session.c prints "N: " apart from the text, and each
  command name apart), while scan replies come from worker threads: a
  verdict was seen in the middle of a VERSIONCOMMANDS reply. Only PING is
  written in one piece, so only PING is safe while scans are in flight.

Usage::

    with FakeClamd(Faults(order=ReplyOrder.REVERSED, batch=3)) as fake:
        talk_to(fake.unix_address)
        fake.wait_until(lambda: fake.requests == 3)
"""

from __future__ import annotations

import array
import contextlib
import enum
import os
import random
import select
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from clamwatch.testsig import EICAR_SIGNATURE, eicar_bytes

#: What the fake answers to VERSION: the installed clamd's own answer (its
#: test database is a plain .ndb, so there is no "/<db version>/<date>").
VERSION = "ClamAV 1.4.6"

# clamd/session.c's command table, in its order (VERSIONCOMMANDS prints it
# as is; parse_command() matches prefixes in this order, which is why
# VERSIONCOMMANDS precedes VERSION). Per command: does it take an argument,
# and is it accepted without the z/n prefix ("old style")?
_COMMAND_TABLE: tuple[tuple[str, bool, bool], ...] = (
    ("SCAN", True, True),
    ("QUIT", False, True),
    ("RELOAD", False, True),
    ("PING", False, True),
    ("CONTSCAN", True, True),
    ("VERSIONCOMMANDS", False, False),
    ("VERSION", False, True),
    ("END", False, False),
    ("SHUTDOWN", False, True),
    ("MULTISCAN", True, True),
    ("FILDES", False, True),
    ("STATS", False, True),
    ("IDSESSION", False, False),
    ("INSTREAM", False, False),
    ("DETSTATSCLEAR", False, True),
    ("DETSTATS", False, True),
    ("ALLMATCHSCAN", True, False),
)

# execute_or_dispatch_command(): everything else inside a session gets
# "Command invalid inside IDSESSION." and ends the session.
_SESSION_COMMANDS = frozenset(
    {"FILDES", "SCAN", "END", "INSTREAM", "VERSION", "PING", "STATS", "VERSIONCOMMANDS"}
)

# The path scans. They, FILDES and INSTREAM are what Faults.scan_delay slows.
_SCAN_COMMANDS = frozenset({"SCAN", "CONTSCAN", "MULTISCAN", "ALLMATCHSCAN"})

# A plausible STATS body; clamd-protocol.txt says its format is not stable,
# so clients must only rely on the frame (optional id, text, final END).
_STATS_TEXT = (
    "POOLS: 1\n\nSTATE: VALID PRIMARY\nTHREADS: live 1  idle 0 max 4 idle-timeout 30\n"
    "QUEUE: 0 items\n\tSTATS 0.000000 \n\nMEMSTATS: heap N/A mmap N/A used N/A free N/A "
    "releasable N/A pools 1 pools_used 0.000M pools_total 0.000M\nEND"
)

# clamd allocates PATH_MAX + 8 bytes for a command record (fds_add() in
# clamd/clamd_others.c); a longer record can never be a valid command.
_MAX_COMMAND_BYTES = 4096 + 8

# How much one read takes in: clamd reads the same PATH_MAX + 8; more does
# no harm and saves wake-ups on long INSTREAM chunks.
_READ_BYTES = 65536

# Descriptors accepted per read. clamd takes one (CMSG_SPACE(sizeof(int)));
# a few more lets the fake close extras instead of the kernel truncating.
_MAX_FDS_PER_READ = 8

# How long stop() waits for a connection thread; they all wake at once, so
# this only trips on a real bug, which must fail loudly rather than hang.
_JOIN_SECONDS = 5.0

_EICAR = eicar_bytes()


class ReplyOrder(enum.Enum):
    """How a released batch of ready replies is ordered on the wire."""

    # By request number; with batch=1 each reply leaves as soon as it is
    # ready, so a PING overtakes a delayed scan, as it does in clamd.
    IN_ORDER = "in-order"
    # Newest request first within each batch.
    REVERSED = "reversed"
    # A seeded random permutation of each batch.
    SHUFFLED = "shuffled"


@dataclass(frozen=True, slots=True)
class Faults:
    """What the fake does differently from a healthy clamd. The default is nothing."""

    #: Order of the replies in each released batch.
    order: ReplyOrder = ReplyOrder.IN_ORDER
    #: Ready replies are held until this many are waiting, then written as
    #: one batch of exactly this many in `order`. A connection whose input
    #: has ended (END, one command outside a session, an error) writes what
    #: it holds; a client must keep at least `batch` requests in flight or
    #: end its session to see replies.
    batch: int = 1
    #: Commands whose replies leave as soon as they are ready, outside any
    #: batch: e.g. {"VERSIONCOMMANDS", "STATS"}, so that a client which waits
    #: for its handshake before it sends scans still gets going.
    unbatched: frozenset[str] = frozenset()
    #: Seed for ReplyOrder.SHUFFLED (each connection starts from it).
    seed: int = 0
    #: Write every reply one byte per send().
    byte_at_a_time: bool = False
    #: The reply to this request number is replaced by `garbage`.
    garbage_at: int | None = None
    #: What replaces it: not a valid record, or e.g. b"999: PONG\0" (an id
    #: never asked for).
    garbage: bytes = b"\xff\xfeblah\0"
    #: Once request N is complete (a FILDES has its descriptor, an INSTREAM
    #: its last chunk) and the replies ready by then are sent, the connection
    #: neither reads nor writes until release_stall() or stop(); the socket
    #: stays open.
    stall_after: int | None = None
    #: The first N requests are served; the reply to request N+1 is cut in
    #: the middle of its record and the connection closed.
    close_mid_reply_after: int | None = None
    #: The first N requests are served; when request N+1 is read the
    #: connection is closed without replying to it (or to anything pending).
    drop_after: int | None = None
    #: The four numbered faults above count each connection's requests
    #: (1, 2, ... from its first) and fire on every connection: a clamd that
    #: fails at the same point however often it is asked again.
    repeat: bool = False
    #: Commands answered with "COMMAND UNAVAILABLE", as clamd 1.5+ does for a
    #: command disabled in clamd.conf (VERSION, STATS, RELOAD, SHUTDOWN there;
    #: any name here). Inside a session the reply carries the request id and
    #: ends the session, as a disabled VERSION does in clamd 1.5.
    unavailable: frozenset[str] = frozenset()
    #: False: a clamd built without fd passing. VERSIONCOMMANDS does not list
    #: FILDES and FILDES is answered as an unknown command.
    fildes: bool = True
    #: StreamMaxLength in bytes (clamd.conf(5) default: 100M).
    stream_max_length: int = 100 * 1024 * 1024
    #: Seconds without input before "COMMAND READ TIMED OUT\n" and close;
    #: clamd's ReadTimeout (default 120), also used for the first command.
    read_timeout: float = 120.0
    #: Seconds each FILDES, INSTREAM or SCAN takes, to keep requests in flight.
    scan_delay: float = 0.0
    #: Seconds a reply may wait for the client to read before the connection
    #: is dropped. clamd's SendBufTimeout is 0.5 s; the fake is lenient so a
    #: slow CI runner is not mistaken for a dead client.
    send_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, not {self.batch}")
        if self.order is not ReplyOrder.IN_ORDER and self.batch < 2:
            raise ValueError(f"{self.order.name} needs batch >= 2 to reorder anything")
        for name in ("garbage_at", "stall_after", "close_mid_reply_after", "drop_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, not {value}")
        if self.stream_max_length < 0:
            raise ValueError("stream_max_length must not be negative")
        if self.read_timeout <= 0 or self.send_timeout <= 0 or self.scan_delay < 0:
            raise ValueError("timeouts must be positive and scan_delay not negative")


class Outcome(enum.Enum):
    """Why the fake closed a connection."""

    # The one command of a connection without IDSESSION was answered.
    ANSWERED = "answered"
    # END: every pending reply was sent, then the connection closed.
    ENDED = "ended"
    # An error reply ended it (invalid or unknown command, COMMAND
    # UNAVAILABLE, no descriptor, stream too long, protocol error).
    REFUSED = "refused"
    # The client closed its side before END; pending replies were dropped,
    # as clamd drops them.
    CLIENT_CLOSED = "client-closed"
    # The client's socket failed (reset, broken pipe).
    RESET = "reset"
    # No input for read_timeout: "COMMAND READ TIMED OUT\n" was sent.
    READ_TIMEOUT = "read-timeout"
    # The client did not read a reply within send_timeout.
    SEND_TIMEOUT = "send-timeout"
    # Faults.drop_after fired.
    DROPPED = "dropped"
    # Faults.close_mid_reply_after fired.
    CUT = "cut"
    # FakeClamd.stop() closed it.
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Received:
    """One command record the fake read."""

    #: The command name ("PING", "FILDES", ...) or the raw text if unknown.
    name: str
    #: SCAN's path; None for commands without an argument.
    argument: str | None
    #: The id its reply carries inside a session; None outside one.
    request_id: int | None
    #: Its number across the whole FakeClamd; None for IDSESSION and END.
    serial: int | None


@dataclass(frozen=True, slots=True)
class ConnectionLog:
    """What happened on one connection, as a snapshot."""

    #: 1, 2, ... in accept order.
    number: int
    #: "unix" or "tcp".
    transport: str
    #: Every command record read, in order.
    commands: tuple[Received, ...]
    #: SCM_RIGHTS descriptors received (all of them are closed again).
    descriptors: int
    #: send() calls made; with byte_at_a_time one per reply byte.
    writes: int
    #: Bytes written.
    bytes_sent: int
    #: None while the connection is open.
    outcome: Outcome | None


@dataclass(slots=True)
class _ConnState:
    # The mutable record behind a ConnectionLog; guarded by FakeClamd._cond.
    number: int
    transport: str
    commands: list[Received] = field(default_factory=list)
    descriptors: int = 0
    writes: int = 0
    bytes_sent: int = 0
    outcome: Outcome | None = None

    def snapshot(self) -> ConnectionLog:
        return ConnectionLog(
            self.number,
            self.transport,
            tuple(self.commands),
            self.descriptors,
            self.writes,
            self.bytes_sent,
            self.outcome,
        )


class _Mode(enum.Enum):
    """What the connection expects from its input next."""

    # Command records.
    COMMAND = enum.auto()
    # FILDES was read; the dummy byte carrying the descriptor comes next.
    FILDES_BYTE = enum.auto()
    # Inside INSTREAM: 4-byte lengths and chunk data.
    STREAM = enum.auto()
    # No more input is read; pending replies go out, then the socket closes.
    DONE = enum.auto()


@dataclass(frozen=True, slots=True)
class _Request:
    request_id: int | None  # the session id, None outside a session
    # The number the numbered faults count in: FakeClamd-wide, or this
    # connection's own with Faults.repeat.
    serial: int
    term: bytes  # the reply terminator this command chose
    name: str = ""  # the command (or the unknown text), for Faults.unbatched


@dataclass(frozen=True, slots=True)
class _Reply:
    seq: int  # per-connection order of creation, for sorting
    serial: int | None  # the request it answers, None for connection-level replies
    ready_at: float  # time.monotonic() when the "scan" is done
    data: bytes
    batched: bool = True  # False: leaves as soon as it is ready (Faults.unbatched)


class _Waker:
    """A self-pipe that lets other threads wake a thread blocked in poll().

    The lock makes wake() safe against a concurrent close(): writing to a
    closed descriptor number could hit whatever file reused it.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._closed = False

    def fileno(self) -> int:
        return self._read_fd

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            # A full pipe holds enough wake-ups already.
            with contextlib.suppress(BlockingIOError):
                os.write(self._write_fd, b"!")

    def drain(self) -> None:
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._read_fd)
                os.close(self._write_fd)


def _record(request_id: int | None, text: str, term: bytes) -> bytes:
    """One reply record: conn_reply_single() in clamd/session.c."""
    prefix = "" if request_id is None else f"{request_id}: "
    return (prefix + text).encode("utf-8", "surrogateescape") + term


def _verdict(head: bytes) -> str:
    # The test database's .ndb line matches EICAR at offset 0 only
    # (clamwatch.testsig; the real clamd reports "hello <EICAR>" as OK), so
    # the fake looks at the first bytes, not for the string anywhere.
    return f"{EICAR_SIGNATURE} FOUND" if head.startswith(_EICAR) else "OK"


def _scan_descriptor(fd: int) -> str:
    """FILDES: the reply text for a received descriptor (clamd's scanfd())."""
    name = f"fd[{fd}]"
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return f"{name}: Not a regular file ERROR"
    return f"{name}: {_verdict(os.pread(fd, len(_EICAR), 0))}"


def _scan_path(path: str) -> str:
    """SCAN: the reply text for a path, walked like cli_ftw() for a directory."""
    try:
        if os.path.isfile(path):
            return f"{path}: {_verdict(_read_head(path))}"
        os.stat(path)
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                child = os.path.join(root, name)
                verdict = _verdict(_read_head(child)) if os.path.isfile(child) else "OK"
                if verdict != "OK":
                    # SCAN stops at the first detection and names that file.
                    return f"{child}: {verdict}"
    except OSError as exc:
        return f"{path}: File path check failure: {os.strerror(exc.errno or 0)}. ERROR"
    return f"{path}: OK"


def _read_head(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(len(_EICAR))


def _split_record(buffer: bytearray, *, packet_start: bool) -> tuple[str, bytes, bool, int] | None:
    """The first command record in ``buffer``: (text, reply terminator,
    old style?, bytes used), or None while it is incomplete.

    get_cmd() in clamd/server-th.c: z/n records end at NUL/newline. An
    old-style (unprefixed) command is "one packet": it is only seen at the
    start of what one read brought, runs to the first newline or the end of
    that read, and is answered with a newline.
    """
    if not buffer:
        return None
    prefix = bytes(buffer[:1])
    if prefix in (b"z", b"n"):
        term = b"\0" if prefix == b"z" else b"\n"
        end = buffer.find(term, 1)
        if end < 0:
            return None
        text = bytes(buffer[1:end])
        if term == b"\n":
            text = text.rstrip(b"\r\n")  # cli_chomp()
        return _decode(text), term, False, end + 1
    if not packet_start:
        return None  # clamd waits for the next read to look at it
    end = buffer.find(b"\n")
    used = len(buffer) if end < 0 else end + 1
    # A C string: a NUL ends it early; cli_chomp() drops trailing CR/LF.
    text = bytes(buffer[:used]).split(b"\0", 1)[0].rstrip(b"\r\n")
    return _decode(text), b"\n", True, used


def _decode(text: bytes) -> str:
    # Paths are bytes; surrogateescape keeps any of them round-trippable.
    return text.decode("utf-8", "surrogateescape")


def _parse_command(text: str, oldstyle: bool) -> tuple[str | None, str | None]:
    """(command name, argument) as clamd's parse_command() sees it; name None if unknown."""
    for name, needs_argument, old_ok in _COMMAND_TABLE:
        if not text.startswith(name):
            continue
        rest = text[len(name) :]
        if needs_argument and not rest:
            return None, None
        if not needs_argument and rest:
            return None, None
        if oldstyle and not old_ok:
            return None, None
        # clamd skips the one separator byte without looking at it.
        return name, (rest[1:] if needs_argument else None)
    return None, None


class _Connection:
    """One client connection, served by its own thread."""

    def __init__(
        self, server: FakeClamd, sock: socket.socket, state: _ConnState, unix: bool
    ) -> None:
        self._server = server
        self._faults = server.faults
        self._sock = sock
        self._state = state
        self._unix = unix
        self._waker = _Waker()
        # Lets stop() shut the socket down under a blocked sendall() without
        # racing the owner thread's close() (a reused descriptor number).
        self._sock_lock = threading.Lock()
        self._sock_closed = False
        self._rng = random.Random(self._faults.seed)
        self._buffer = bytearray()
        self._fds: list[int] = []  # received, not yet claimed by a FILDES
        self._mode = _Mode.COMMAND
        self._done_outcome = Outcome.ANSWERED  # reported once DONE has flushed
        self._session = False
        self._next_id = 1
        self._term = b"\0"  # of the last command, for connection-level errors
        self._pending: list[_Reply] = []  # not ready yet (scan_delay)
        self._ready: list[_Reply] = []  # ready, held back by the batch policy
        self._seq = 0
        self._requests = 0  # this connection's requests, for Faults.repeat
        self._open_scans: set[int] = set()  # scan requests read and not answered
        self._stalled = False
        self._last_input = time.monotonic()
        self._fresh_input = False  # a read brought bytes _parse() has not seen
        self._outcome: Outcome | None = None
        # The FILDES waiting for its dummy byte, or the INSTREAM reading chunks.
        self._open_request: _Request | None = None
        self._stream_quota = 0
        self._chunk_left = 0
        self._stream_head = bytearray()

    def wake(self) -> None:
        self._waker.wake()

    def abort(self) -> None:
        """Shut the socket down from another thread (stop())."""
        with self._sock_lock:
            if not self._sock_closed:
                # OSError: not connected any more.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
        self._waker.wake()

    # The thread ------------------------------------------------------------

    def run(self) -> None:
        try:
            self._serve()
        except TimeoutError:
            self._outcome = Outcome.SEND_TIMEOUT
        except OSError:
            self._outcome = Outcome.RESET
        finally:
            self._close()

    def _serve(self) -> None:
        while self._outcome is None:
            if self._server.stopping:
                self._outcome = Outcome.STOPPED
                return
            if self._stalled and self._server.stall_released:
                self._stalled = False
                self._fresh_input = True  # resume what the stall left unparsed
                self._server.note_stall(self._state, stalled=False)
            if not self._stalled:
                self._step()
                if self._outcome is not None:
                    return
            self._wait()

    def _step(self) -> None:
        """Handle new input, then send what is ready and due."""
        if self._fresh_input:
            # Like clamd, look at the buffer only when a read brought
            # something: an old-style command left behind waits for that.
            self._fresh_input = False
            self._parse()
        if self._outcome is not None or self._stalled:
            return
        self._promote(time.monotonic())
        self._release(force=self._mode is _Mode.DONE)
        finished = self._mode is _Mode.DONE and not self._pending and not self._ready
        if finished and self._outcome is None:
            self._outcome = self._done_outcome

    def _wait(self) -> None:
        """Block until input, a wake-up, the next ready reply or the read deadline."""
        now = time.monotonic()
        poller = select.poll()
        poller.register(self._waker.fileno(), select.POLLIN)
        timeout: float | None = None
        if self._stalled:
            # Not reading, but a client that hangs up is still noticed.
            poller.register(self._sock, select.POLLRDHUP)
        else:
            if self._pending:
                timeout = max(0.0, min(r.ready_at for r in self._pending) - now)
            if self._mode is not _Mode.DONE:
                poller.register(self._sock, select.POLLIN)
                left = max(0.0, self._last_input + self._faults.read_timeout - now)
                timeout = left if timeout is None else min(timeout, left)
        events = poller.poll(None if timeout is None else timeout * 1000 + 1)
        for fd, mask in events:
            if fd == self._waker.fileno():
                self._waker.drain()
            elif self._stalled and mask & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                self._outcome = Outcome.CLIENT_CLOSED
                return
            elif mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._read()
                return
        reading = not self._stalled and self._mode is not _Mode.DONE
        if reading and time.monotonic() >= self._last_input + self._faults.read_timeout:
            self._read_timed_out()

    def _read(self) -> None:
        if self._unix:
            data, ancdata, _flags, _address = self._sock.recvmsg(
                _READ_BYTES,
                socket.CMSG_SPACE(_MAX_FDS_PER_READ * 4),
                socket.MSG_CMSG_CLOEXEC,
            )
            self._take_descriptors(ancdata)
        else:
            data = self._sock.recv(_READ_BYTES)
        if not data:
            # clamd drops every pending reply when the client shuts down its
            # side before END (clamd-behaviour.md).
            self._outcome = Outcome.CLIENT_CLOSED
            return
        self._last_input = time.monotonic()
        self._buffer += data
        self._fresh_input = True

    def _take_descriptors(self, ancdata: list[tuple[int, int, bytes]]) -> None:
        for level, kind, payload in ancdata:
            if level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS:
                continue
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            self._fds.extend(fds)
            self._server.log_io(self._state, descriptors=len(fds))

    def _read_timed_out(self) -> None:
        # server-th.c: always a newline, never an id; pending replies are lost.
        self._pending.clear()
        self._ready.clear()
        self._send(b"COMMAND READ TIMED OUT\n")
        self._outcome = Outcome.READ_TIMEOUT

    def _close(self) -> None:
        outcome = self._outcome or Outcome.STOPPED
        if self._server.stopping and outcome in (Outcome.CLIENT_CLOSED, Outcome.RESET):
            outcome = Outcome.STOPPED  # stop() shut the socket down under us
        self._close_descriptors()
        # Recorded before the socket closes: a client that saw EOF finds it.
        self._server.finish(self._state, outcome, unanswered_scans=len(self._open_scans))
        self._open_scans.clear()
        with self._sock_lock:
            self._sock_closed = True
            # OSError: the client is gone already.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        self._waker.close()

    # Input -----------------------------------------------------------------

    def _parse(self) -> None:
        packet_start = True
        while self._outcome is None and not self._stalled:
            if self._mode is _Mode.COMMAND:
                progressed = self._parse_command(packet_start)
            elif self._mode is _Mode.FILDES_BYTE:
                progressed = self._parse_fildes_byte()
            elif self._mode is _Mode.STREAM:
                progressed = self._parse_stream()
            else:
                progressed = False
            if not progressed:
                break
            packet_start = False
        if self._mode is _Mode.COMMAND and self._fds and self._outcome is None:
            # server-th.c: a descriptor that no FILDES claimed is an error;
            # it carries the id the next command would have had.
            self._close_descriptors()
            self._refuse(None, "PROTOCOL ERROR: ancillary data sent without FILDES. ERROR")

    def _parse_command(self, packet_start: bool) -> bool:
        found = _split_record(self._buffer, packet_start=packet_start)
        if found is None:
            if len(self._buffer) > _MAX_COMMAND_BYTES:
                # read_fd_data(): a full buffer is a read error; clamd closes.
                self._outcome = Outcome.REFUSED
            return False
        text, term, oldstyle, used = found
        del self._buffer[:used]
        if self._session and oldstyle:
            self._refuse_oldstyle(text)
            return False
        self._term = term
        name, argument = _parse_command(text, oldstyle)
        if name == "FILDES" and not self._faults.fildes:
            name = None  # a clamd without fd passing does not know it
        if name == "IDSESSION" and not self._session:
            self._session = True
            self._server.log_command(self._state, name, is_request=False)
            return True
        if name == "END" and self._session:
            self._server.log_command(self._state, name, is_request=False)
            self._end(Outcome.ENDED)
            return False
        request = self._new_request(name or text, argument, term)
        if request is None:
            return False
        self._dispatch(name, argument, request)
        if self._mode is _Mode.COMMAND and not self._session:
            self._end(Outcome.ANSWERED)  # one command per connection
        return self._mode is not _Mode.DONE

    def _new_request(self, name: str, argument: str | None, term: bytes) -> _Request | None:
        """Number the request, log it, and apply drop_after; None if dropped."""
        request_id = self._next_id if self._session else None
        scan = name in _SCAN_COMMANDS or name in ("FILDES", "INSTREAM")
        serial = self._server.log_command(self._state, name, argument, request_id, scan=scan)
        if self._session:
            self._next_id += 1
        self._requests += 1
        if self._faults.repeat:
            serial = self._requests
        if scan:
            self._open_scans.add(serial)
        drop = self._faults.drop_after
        if drop is not None and serial == drop + 1:
            self._flush_ready()
            self._pending.clear()
            self._ready.clear()
            self._outcome = Outcome.DROPPED
            return None
        return _Request(request_id, serial, term, name)

    def _dispatch(self, name: str | None, argument: str | None, request: _Request) -> None:
        if self._session and name not in _SESSION_COMMANDS:
            # Unknown commands land here too: the session check comes first.
            self._refuse(request, "Command invalid inside IDSESSION. ERROR")
        elif name is not None and name in self._faults.unavailable:
            self._refuse(request, "COMMAND UNAVAILABLE")
        elif name == "PING":
            self._reply(request, "PONG")
        elif name == "VERSION":
            self._reply(request, VERSION)
        elif name == "VERSIONCOMMANDS":
            self._reply(request, self._versioncommands())
        elif name == "STATS":
            self._reply(request, _STATS_TEXT)
        elif name == "FILDES":
            self._mode = _Mode.FILDES_BYTE
            self._open_request = request
        elif name == "INSTREAM":
            self._start_stream(request)
        elif name in _SCAN_COMMANDS and argument is not None:
            # CONTSCAN and friends (outside sessions only) are scanned like SCAN.
            self._reply(request, _scan_path(argument), delay=True)
        elif name == "RELOAD":
            self._reply(request, "RELOADING")
        elif name in ("SHUTDOWN", "QUIT", "DETSTATS", "DETSTATSCLEAR"):
            self._end(Outcome.ANSWERED)  # clamd closes without a word
        else:
            self._refuse(request, "UNKNOWN COMMAND")

    def _versioncommands(self) -> str:
        names = [n for n, _, _ in _COMMAND_TABLE if self._faults.fildes or n != "FILDES"]
        return f"{VERSION}| COMMANDS: {' '.join(names)}"

    def _refuse_oldstyle(self, text: str) -> None:
        # server-th.c answers twice, both with the id the command would have
        # had and the previous command's terminator (literally "\n", "\0").
        request = self._new_request(text, None, self._term)
        if request is None:
            return
        only = "Only nCMDS\\n and zCMDS\\0 are accepted inside IDSESSION. ERROR"
        self._queue(request.serial, _record(request.request_id, only, self._term))
        self._queue(
            None, _record(request.request_id, "Error processing command. ERROR", self._term)
        )
        self._end(Outcome.REFUSED)

    def _parse_fildes_byte(self) -> bool:
        if not self._buffer:
            return False
        # The dummy byte (any value) carries the descriptor; clamd eats it.
        del self._buffer[:1]
        request = self._open_request
        assert request is not None
        self._open_request = None
        self._mode = _Mode.COMMAND
        if not self._fds:
            self._refuse(request, "No file descriptor received. ERROR")
            return False
        fd = self._fds.pop(0)
        try:
            text = _scan_descriptor(fd)
        finally:
            # Closed at once, so the next descriptor reuses the number, as
            # the "fd[N]" in clamd's replies does.
            os.close(fd)
        self._reply(request, text, delay=True)
        if not self._session:
            self._end(Outcome.ANSWERED)
        return self._mode is not _Mode.DONE

    def _start_stream(self, request: _Request) -> None:
        self._mode = _Mode.STREAM
        self._open_request = request
        self._stream_quota = self._faults.stream_max_length
        self._chunk_left = 0
        self._stream_head.clear()

    def _parse_stream(self) -> bool:
        request = self._open_request
        assert request is not None
        if self._chunk_left == 0:
            if len(self._buffer) < 4:
                return False
            (size,) = struct.unpack(">I", self._buffer[:4])
            del self._buffer[:4]
            if size == 0:
                self._finish_stream(request)
                return self._mode is not _Mode.DONE
            if size > self._stream_quota:
                # handle_stream(): refused as soon as the length is read.
                self._refuse(request, "INSTREAM size limit exceeded. ERROR")
                return False
            self._stream_quota -= size
            self._chunk_left = size
        take = min(self._chunk_left, len(self._buffer))
        if take == 0:
            return False
        # Only the head decides the verdict; the rest is counted, not kept.
        want = len(_EICAR) - len(self._stream_head)
        if want > 0:
            self._stream_head += self._buffer[: min(take, want)]
        del self._buffer[:take]
        self._chunk_left -= take
        return True

    def _finish_stream(self, request: _Request) -> None:
        self._open_request = None
        self._mode = _Mode.COMMAND
        self._reply(request, f"stream: {_verdict(bytes(self._stream_head))}", delay=True)
        if not self._session:
            self._end(Outcome.ANSWERED)

    # Output ----------------------------------------------------------------

    def _reply(self, request: _Request, text: str, *, delay: bool = False) -> None:
        data = _record(request.request_id, text, request.term)
        self._queue(request.serial, data, delay=delay, batched=self._batched(request))

    def _refuse(self, request: _Request | None, text: str, term: bytes | None = None) -> None:
        """An error reply that ends the connection once pending replies are out.

        ``request`` None: a connection-level error, with the id the next
        command would have had (as clamd does) and the last terminator.
        """
        if request is None:
            request_id = self._next_id if self._session else None
            self._queue(None, _record(request_id, text, term or self._term))
        else:
            self._queue(
                request.serial,
                _record(request.request_id, text, request.term),
                batched=self._batched(request),
            )
        self._end(Outcome.REFUSED)

    def _batched(self, request: _Request) -> bool:
        return request.name not in self._faults.unbatched

    def _end(self, outcome: Outcome) -> None:
        self._mode = _Mode.DONE
        self._done_outcome = outcome

    def _queue(
        self, serial: int | None, data: bytes, *, delay: bool = False, batched: bool = True
    ) -> None:
        ready_at = time.monotonic() + (self._faults.scan_delay if delay else 0.0)
        self._seq += 1
        self._pending.append(_Reply(self._seq, serial, ready_at, data, batched))
        if serial is not None and serial == self._faults.stall_after:
            # The request is complete (a FILDES has its descriptor, an
            # INSTREAM its last chunk): send what is ready, then go silent.
            self._flush_ready()
            if self._outcome is None:
                self._stalled = True
                self._server.note_stall(self._state, stalled=True)

    def _promote(self, now: float) -> None:
        """Move replies whose scan is done from pending to ready."""
        done = [r for r in self._pending if r.ready_at <= now]
        if done:
            self._pending = [r for r in self._pending if r.ready_at > now]
            self._ready.extend(done)

    def _flush_ready(self) -> None:
        """Send everything ready now, whatever the batch size (before a fault)."""
        self._promote(time.monotonic())
        self._release(force=True)

    def _release(self, *, force: bool) -> None:
        """Write held replies in batches of exactly `batch` (a partial one if forced)."""
        size = self._faults.batch
        self._ready.sort(key=lambda r: r.seq)
        for reply in [r for r in self._ready if not r.batched]:
            self._ready.remove(reply)
            self._write(reply)
            if self._outcome is not None:
                return
        while self._ready and (len(self._ready) >= size or force):
            batch = self._ready[:size]
            del self._ready[:size]
            if self._faults.order is ReplyOrder.REVERSED:
                batch.reverse()
            elif self._faults.order is ReplyOrder.SHUFFLED:
                self._rng.shuffle(batch)
            for reply in batch:
                self._write(reply)
                if self._outcome is not None:
                    return

    def _write(self, reply: _Reply) -> None:
        faults = self._faults
        data = reply.data
        if reply.serial in self._open_scans:
            # Counted as answered before the bytes leave: the client may send
            # its next request as soon as it has read them.
            self._open_scans.discard(reply.serial)
            self._server.scan_answered()
        if reply.serial is not None and reply.serial == faults.garbage_at:
            data = faults.garbage
        cut = faults.close_mid_reply_after
        if cut is not None and reply.serial == cut + 1:
            # At least one byte, never the terminator: a record left open.
            self._send(data[: max(1, (len(data) - 1) // 2)])
            self._outcome = Outcome.CUT
            return
        self._send(data)

    def _send(self, data: bytes) -> None:
        pieces = (
            [data[i : i + 1] for i in range(len(data))] if self._faults.byte_at_a_time else [data]
        )
        for piece in pieces:
            self._sock.sendall(piece)
        self._server.log_io(self._state, writes=len(pieces), sent=len(data))

    def _close_descriptors(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


class FakeClamd:
    """A threaded fake clamd on a Unix socket (and TCP on 127.0.0.1 if asked).

    Use as a context manager, or call start() and stop(). All accessors are
    thread-safe and return snapshots.
    """

    def __init__(self, faults: Faults | None = None, *, tcp: bool = False) -> None:
        self.faults = faults or Faults()
        self._want_tcp = tcp
        self._cond = threading.Condition()  # guards everything below it
        self._states: list[_ConnState] = []
        self._counts: Counter[str] = Counter()
        self._serial = 0
        self._scans_pending = 0
        self._max_scans_pending = 0
        self._stopping = False
        self._stall_released = False
        self._stalled: set[int] = set()
        self._connections: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._directory: Path | None = None
        self._unix: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._accept_waker: _Waker | None = None
        self._accept_thread: threading.Thread | None = None

    # Lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._accept_thread is not None:
            raise RuntimeError("FakeClamd already started")
        try:
            self._listen()
            self._accept_waker = _Waker()
            self._accept_thread = threading.Thread(
                target=self._accept_loop, name="fakeclamd-accept", daemon=True
            )
            self._accept_thread.start()
        except BaseException:
            self.stop()  # close whatever was opened
            raise

    def _listen(self) -> None:
        # A short private directory: pytest's tmp_path can exceed the 107
        # bytes sun_path allows (unix(7)).
        self._directory = Path(tempfile.mkdtemp(prefix="fakeclamd-"))
        self._unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._unix.bind(str(self.socket_path))
        self._unix.listen(64)
        if self._want_tcp:
            self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._tcp.bind(("127.0.0.1", 0))
            self._tcp.listen(64)

    def stop(self) -> None:
        """Close every connection and listener and join every thread."""
        with self._cond:
            self._stopping = True
            connections = list(self._connections)
        if self._accept_waker is not None:
            self._accept_waker.wake()
        if self._accept_thread is not None:
            self._accept_thread.join(_JOIN_SECONDS)
        for connection in connections:
            connection.abort()
        with self._cond:
            threads = list(self._threads)
        stuck = [t.name for t in threads if not _joined(t)]
        if self._accept_thread is not None and self._accept_thread.is_alive():
            stuck.append(self._accept_thread.name)
        for listener in (self._unix, self._tcp):
            if listener is not None:
                listener.close()
        if self._accept_waker is not None:
            self._accept_waker.close()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        if stuck:
            raise RuntimeError(f"FakeClamd threads did not stop: {', '.join(stuck)}")

    def __enter__(self) -> FakeClamd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Addresses -------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        if self._directory is None:
            raise RuntimeError("FakeClamd is not started")
        return self._directory / "clamd.sock"

    @property
    def unix_address(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_port(self) -> int:
        if self._tcp is None:
            raise RuntimeError("FakeClamd was not started with tcp=True")
        port: int = self._tcp.getsockname()[1]
        return port

    @property
    def tcp_address(self) -> str:
        return f"tcp://127.0.0.1:{self.tcp_port}"

    # What happened ---------------------------------------------------------

    def connections(self) -> list[ConnectionLog]:
        with self._cond:
            return [state.snapshot() for state in self._states]

    def command_counts(self) -> Counter[str]:
        """How often each command name was read, over all connections."""
        with self._cond:
            return Counter(self._counts)

    @property
    def requests(self) -> int:
        """Requests read so far (the last request number handed out)."""
        with self._cond:
            return self._serial

    @property
    def scans_pending(self) -> int:
        """Scan requests (FILDES, INSTREAM, SCAN...) read and not answered, on all connections."""
        with self._cond:
            return self._scans_pending

    @property
    def max_scans_pending(self) -> int:
        """The most scan requests that were ever pending at once, on all connections."""
        with self._cond:
            return self._max_scans_pending

    @property
    def stalled(self) -> bool:
        """True while a connection sits in the stall_after fault."""
        with self._cond:
            return bool(self._stalled)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate()`` holds; it is re-checked on every change.

        Raises TimeoutError after ``timeout`` seconds. The predicate may call
        this object's accessors (the lock is reentrant).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"FakeClamd: condition not met within {timeout} s")
                self._cond.wait(left)

    def release_stall(self) -> None:
        """End the stall_after fault: the stalled connection reads and writes again."""
        with self._cond:
            self._stall_released = True
            connections = list(self._connections)
        for connection in connections:
            connection.wake()

    # Called by connections -------------------------------------------------

    @property
    def stopping(self) -> bool:
        with self._cond:
            return self._stopping

    @property
    def stall_released(self) -> bool:
        with self._cond:
            return self._stall_released

    def log_command(
        self,
        state: _ConnState,
        name: str,
        argument: str | None = None,
        request_id: int | None = None,
        *,
        is_request: bool = True,
        scan: bool = False,
    ) -> int:
        """Record a command record; a request gets the next request number (returned)."""
        with self._cond:
            serial: int | None = None
            if is_request:
                self._serial += 1
                serial = self._serial
            if scan:
                self._scans_pending += 1
                self._max_scans_pending = max(self._max_scans_pending, self._scans_pending)
            state.commands.append(Received(name, argument, request_id, serial))
            self._counts[name] += 1
            self._cond.notify_all()
            return serial or 0

    def log_io(
        self, state: _ConnState, *, descriptors: int = 0, writes: int = 0, sent: int = 0
    ) -> None:
        with self._cond:
            state.descriptors += descriptors
            state.writes += writes
            state.bytes_sent += sent
            self._cond.notify_all()

    def note_stall(self, state: _ConnState, *, stalled: bool) -> None:
        with self._cond:
            if stalled:
                self._stalled.add(state.number)
            else:
                self._stalled.discard(state.number)
            self._cond.notify_all()

    def scan_answered(self) -> None:
        with self._cond:
            self._scans_pending -= 1
            self._cond.notify_all()

    def finish(self, state: _ConnState, outcome: Outcome, *, unanswered_scans: int = 0) -> None:
        with self._cond:
            self._scans_pending -= unanswered_scans
            state.outcome = outcome
            self._stalled.discard(state.number)
            self._cond.notify_all()

    # Accepting -------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._accept_waker is not None
        listeners = {s.fileno(): s for s in (self._unix, self._tcp) if s is not None}
        poller = select.poll()
        poller.register(self._accept_waker.fileno(), select.POLLIN)
        for fd in listeners:
            poller.register(fd, select.POLLIN)
        while not self.stopping:
            for fd, _mask in poller.poll():
                listener = listeners.get(fd)
                if listener is not None:
                    self._accept(listener)

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _address = listener.accept()
        except OSError:
            return  # the client gave up before accept (ECONNABORTED)
        unix = listener.family == socket.AF_UNIX
        if not unix:
            # byte_at_a_time must reach the client as separate segments.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.faults.send_timeout)
        with self._cond:
            if self._stopping:
                sock.close()
                return
            state = _ConnState(len(self._states) + 1, "unix" if unix else "tcp")
            self._states.append(state)
            connection = _Connection(self, sock, state, unix)
            thread = threading.Thread(
                target=connection.run, name=f"fakeclamd-conn-{state.number}", daemon=True
            )
            self._connections.append(connection)
            self._threads.append(thread)
            self._cond.notify_all()
        thread.start()


def _joined(thread: threading.Thread) -> bool:
    thread.join(_JOIN_SECONDS)
    return not thread.is_alive()
