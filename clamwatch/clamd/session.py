"""One IDSESSION connection to clamd: the socket, the protocol state and what is in flight.

The engine's loop drives it: it calls :meth:`Session.on_writable` and
:meth:`Session.on_readable` when the selector says so and never blocks. The
session keeps reading replies while it writes (clamd drops a session whose
replies back up for SendBufTimeout, 500 ms by default) and keeps at most a
small buffer of outgoing bytes, so an INSTREAM body is read from disk only as
fast as the socket takes it.
"""

from __future__ import annotations

import contextlib
import enum
import os

from clamwatch.clamd.address import ClamdAddress
from clamwatch.clamd.job import ScanJob, Transport, TransportChoice, choose_transport
from clamwatch.clamd.protocol import (
    STREAM_CHUNK,
    ClamdProtocol,
    Command,
    CommandFailed,
    CommandsReply,
    ConnectionClosed,
    End,
    Event,
    Instream,
    NeedData,
    Ping,
    Pong,
    RemoteProtocolError,
    ScanReply,
    Stats,
    StatsReply,
    VersionCommands,
    VersionReply,
)
from clamwatch.clamd.transport import (
    ClamdConnectionError,
    acknowledge_now,
    finish_connect,
    open_socket,
    send_with_fd,
)
from clamwatch.files import describe_os_error
from clamwatch.testsig import eicar_bytes
from clamwatch.value import Value
from clamwatch.verdict import Infected, NotScanned, NotScannedReason, ScanError, Verdict

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from typing import Final

# Outgoing bytes we hold before we stop reading more of a streamed file; one
# chunk plus its header and a few commands.
_OUT_HIGH_WATER = 2 * STREAM_CHUNK
# Replies are short (a path-free "N: fd[12]: OK" is ~15 bytes); 64 KiB takes
# thousands per read without the mmap/munmap a larger buffer costs per recv.
_RECV_SIZE = 64 * 1024
_EICAR = eicar_bytes()
# Held clean replies (Engine._scan_reply) get a check at once when the
# session has nothing else in flight (clamd idle: a light load); while it is
# busy, once this many wait or the oldest has waited this long: one check in
# some hundred requests, verdicts held some milliseconds. Measured: 64 and
# 10 ms, or 256 and 50 ms, made no faster a scan of 10,000 files, and with 64
# a daemon's burst took 1.30 times clamdscan's time (1.12-1.13 with 128).
_CONFIRM_BATCH = 128
CONFIRM_WAIT = 0.02


def _eicar_memfd() -> int | None:
    """A memfd holding the EICAR test file, or None when none can be made."""
    try:
        fd = os.memfd_create("clamwatch-eicar", os.MFD_CLOEXEC)
    except OSError:
        return None
    try:
        os.write(fd, _EICAR)
    except OSError:
        os.close(fd)
        return None
    return fd


class SessionState(enum.Enum):
    CONNECTING = "connecting"  # nonblocking connect under way
    HANDSHAKE = "handshake"  # IDSESSION sent; waiting for VERSIONCOMMANDS and STATS
    READY = "ready"  # accepting scan requests
    DRAINING = "draining"  # END sent or clamd ending the session: replies only
    CLOSED = "closed"  # socket closed; whatever was in flight has been handed back


class InFlight:
    __slots__ = ("job", "sent_at", "transport", "local_verdict")

    def __init__(self, job: ScanJob, sent_at: float, transport: Transport) -> None:
        self.job = job
        self.sent_at = sent_at
        self.transport = transport
        # Decided on our side while streaming (read error, file grew past the
        # limit): clamd's reply for this request is then ignored.
        self.local_verdict: Verdict | None = None


class _Stream:
    __slots__ = ("request_id", "fd", "offset")

    def __init__(self, request_id: int, fd: int) -> None:
        self.request_id = request_id
        self.fd = fd
        self.offset = 0


class _OutItem:
    __slots__ = ("data", "fd", "started")

    def __init__(self, data: bytearray, fd: int | None, *, started: bool = False) -> None:
        self.data = data
        self.fd = fd  # sent with the first byte of ``data``
        self.started = started


class Capabilities(Value):
    """What the handshake learned about the clamd behind this session."""

    __slots__ = ("version", "commands", "max_threads")
    version: Final[str]
    commands: Final[frozenset[str]]
    max_threads: Final[int | None]

    def __init__(self, version: str, commands: frozenset[str], max_threads: int | None) -> None:
        self.version = version
        self.commands = commands
        self.max_threads = max_threads


class Session:
    """A clamd IDSESSION. Not thread-safe: only the engine's loop thread touches it."""

    def __init__(
        self,
        address: ClamdAddress,
        now: float,
        number: int,
        *,
        probe: bool = True,
        eicar_check: bool = False,
        transport: TransportChoice = TransportChoice.AUTO,
    ) -> None:
        self.address = address
        self.name = f"session {number}"
        self.sock, connected = open_socket(address)
        self._tcp = not address.is_unix
        self.proto = ClamdProtocol()
        self.state = SessionState.CONNECTING
        self.in_flight: dict[int, InFlight] = {}
        self.capabilities: Capabilities | None = None
        self.created = now
        self.last_send = now
        self.requests = 0
        self.end_reason = ""
        self.refused = ""  # why clamd refused a handshake command, if it did
        self.failure: RemoteProtocolError | None = None  # garbage seen after good replies
        self._out: list[_OutItem] = []
        self._stream: _Stream | None = None
        self._handshake: set[int] = set()
        self._caps_version = ""
        self._caps_commands: frozenset[str] = frozenset()
        self._max_threads: int | None = None
        # False when clamd ended a session over VERSIONCOMMANDS or STATS
        # (disabled commands end the session in clamd 1.5+): skip them.
        self._probe = probe
        # The EICAR check (Engine): clamd must find the EICAR test file in
        # the handshake, and again before held clean replies are delivered.
        self.eicar_check = eicar_check
        self._transport = transport  # the engine's choice: the check goes the same way
        self._eicar_id: int | None = None  # the check in flight
        self._eicar_fd: int | None = None  # its memfd, over FILDES
        self._ping_id: int | None = None  # a keepalive PING not answered yet
        self.ping_sent_at = now  # when it went (Engine._timers: a PONG that never comes)
        self._retiring: str | None = None  # why END goes once the last reply came (retire)
        self.eicar_sent_at = now
        self._eicar_passed = False  # the handshake's check passed
        # Clean replies held back until a check sent after them passes
        # (Engine._scan_reply); the pending check covers the first _covers.
        self.held: list[tuple[InFlight, Verdict]] = []
        self.held_since = now  # when the oldest of them came
        self._covers = 0
        # set by the engine from clamd.conf or --max-stream-size
        self.stream_limit: int | None = None
        if connected:
            self._start_session(now)

    # -- writing --------------------------------------------------------------

    def _queue(self, data: bytes, fd: int | None = None) -> None:
        """Queue ``data`` to send; ``fd`` rides on its first byte, so it starts an item.

        clamd takes a descriptor for the command whose bytes brought it:
        one that came with the bytes of a PING or an INSTREAM before the
        FILDES is "ancillary data sent without FILDES", and the FILDES then
        has none (measured). Data without one joins the last item.
        """
        if fd is None and self._out:
            self._out[-1].data += data
        else:
            self._out.append(_OutItem(bytearray(data), fd))

    def _command(self, command: Command, now: float) -> int | None:
        outgoing = self.proto.send(command)
        self._queue(outgoing.data, outgoing.fds[0] if outgoing.fds else None)
        self.last_send = now
        self.requests += 1
        return outgoing.request_id

    def _start_session(self, now: float) -> None:
        self._queue(self.proto.start_session())
        self.state = SessionState.HANDSHAKE
        if self._probe:
            for command in (VersionCommands(), Stats()):
                request_id = self._command(command, now)
                assert request_id is not None
                self._handshake.add(request_id)
        self._ready_if_done(now)

    def _ready_if_done(self, now: float) -> None:
        """HANDSHAKE -> READY once every handshake reply is in and the EICAR check passed.

        The check goes out after the other replies are in: a clamd that fails
        it may answer the next commands in its pipe oddly (measured).
        """
        if self.state is not SessionState.HANDSHAKE or self._handshake or self.refused:
            return
        if self.eicar_check and not self._eicar_passed:
            if self._eicar_id is None:
                self.check_eicar(now)
            return
        self.capabilities = Capabilities(self._caps_version, self._caps_commands, self._max_threads)
        self.state = SessionState.READY

    # -- the EICAR check ---------------------------------------------------------

    def check_eicar(self, now: float) -> None:
        """Have clamd scan the EICAR test file, the way files go: it must find it.

        clamd 1.4 answers OK, without scanning, for a file it cannot make its
        per-scan folder for (a full TemporaryDirectory): over FILDES nothing
        else tells. Over INSTREAM it closes the connection when it cannot
        make the stream's temporary file, and answers OK when that file took
        the last inode. Over
        FILDES the check is a FILDES too (of a memfd): bytes without a
        descriptor just before a FILDES can reach clamd in the same read as
        its descriptor, which clamd then refuses (measured).
        """
        transport = choose_transport(self._transport, self.address.is_unix, self._caps_commands)
        fd = _eicar_memfd() if transport is Transport.FILDES else None
        if fd is not None:
            self._eicar_fd = fd
            data, request_id = self.proto.send_fildes(fd)
            if self._out or not self._send_now(data, fd):
                self._queue(data, fd)
        else:  # INSTREAM, or no memfd to be had (out of descriptors)
            data, request_id = self.proto.send_instream(_EICAR)
            self._queue(data)
        self.last_send = self.eicar_sent_at = now
        self.requests += 1
        self._eicar_id = request_id
        self._covers = len(self.held)

    def _eicar_done(self) -> None:
        self._eicar_id = None
        if self._eicar_fd is not None:
            os.close(self._eicar_fd)
            self._eicar_fd = None

    @property
    def eicar_pending(self) -> bool:
        return self._eicar_id is not None

    def hold(self, entry: InFlight, verdict: Verdict, now: float) -> None:
        """Keep a clean reply back until a check sent after it passes."""
        if not self.held:
            self.held_since = now
        self.held.append((entry, verdict))

    def take_eicar_reply(
        self, event: ScanReply, now: float
    ) -> tuple[Verdict, list[tuple[InFlight, Verdict]]] | None:
        """The check's verdict and the held replies it confirms; None: not the check.

        A check that found EICAR confirms the clean replies held when it was
        sent, and completes the handshake (see _ready_if_done).
        """
        if event.request_id != self._eicar_id:
            return None
        self._eicar_done()
        confirmed: list[tuple[InFlight, Verdict]] = []
        if isinstance(event.verdict, Infected):
            self._eicar_passed = True
            confirmed, self.held[: self._covers] = self.held[: self._covers], []
            self.held_since = now  # the rest came while the check was out
            self._ready_if_done(now)
        return event.verdict, confirmed

    def wants_confirmation(self, now: float) -> bool:
        """Held replies wait, no check is out, and one is due (see _CONFIRM_BATCH)."""
        if not self.held or self._eicar_id is not None or not self._can_send:
            return False
        return (
            not self.in_flight
            or len(self.held) >= _CONFIRM_BATCH
            or now - self.held_since >= CONFIRM_WAIT
        )

    def _send_now(self, data: bytes, fd: int) -> bool:
        """Write a whole small request at once, bypassing the out buffer; False if it did not go.

        A failure is left for :meth:`on_writable`, which reports it: the
        request is queued as usual and sent (or found lost) from there.
        """
        try:
            sent = send_with_fd(self.sock, data, fd)
        except OSError:
            return False
        if sent == len(data):
            return True
        item = _OutItem(bytearray(data[sent:]), fd, started=sent > 0)
        self._out.append(item)
        return True

    @property
    def wants_write(self) -> bool:
        return self.state is SessionState.CONNECTING or bool(self._out)

    def on_writable(self, now: float) -> None:
        """Write what the socket takes; raises ClamdConnectionError when it is gone."""
        if self.state is SessionState.CONNECTING:
            finish_connect(self.sock)
            self._start_session(now)
        self.fill_stream(now)
        while self._out:
            item = self._out[0]
            try:
                sent = send_with_fd(self.sock, item.data, None if item.started else item.fd)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise ClamdConnectionError(describe_os_error(exc)) from exc
            item.started = True
            del item.data[:sent]
            if item.data:
                return
            self._out.pop(0)
            self.fill_stream(now)

    def _out_size(self) -> int:
        return sum(len(item.data) for item in self._out)

    def fill_stream(self, now: float) -> None:
        """Read more of the file being streamed, as far as the out buffer allows."""
        stream = self._stream
        while stream is not None and self._out_size() < _OUT_HIGH_WATER:
            entry = self.in_flight[stream.request_id]
            try:
                chunk = os.pread(stream.fd, STREAM_CHUNK, stream.offset)
            except OSError as exc:
                entry.local_verdict = ScanError(f"read failed: {describe_os_error(exc)}")
                chunk = b""
            limit = self.stream_limit
            if chunk and limit is not None and stream.offset + len(chunk) > limit:
                # The file grew past the limit after it was checked: clamd would
                # cut the session (StreamMaxLength) or answer OK unscanned
                # (MaxFileSize); end the stream here and never call it clean.
                entry.local_verdict = NotScanned(
                    NotScannedReason.TOO_LARGE,
                    f"grew past the {limit} bytes clamd takes while it was sent",
                )
                chunk = b""
            if chunk:
                self._queue(self.proto.stream_chunk(chunk))
                stream.offset += len(chunk)
            if len(chunk) < STREAM_CHUNK:
                # a short read of a regular file is its end (as it is now): no
                # second pread just to see EOF
                self._queue(self.proto.stream_end())
                self._stream = None
                stream = None
            self.last_send = now

    # -- requests ---------------------------------------------------------------

    @property
    def _can_send(self) -> bool:
        """A command may go now: no stream is being sent, no PING waits for its PONG."""
        return self.state is SessionState.READY and self._stream is None and self._ping_id is None

    @property
    def accepting(self) -> bool:
        """New scan requests may go."""
        return self._can_send and self._retiring is None

    @property
    def retiring(self) -> bool:
        """The engine is ending this session (rotated, or closing)."""
        return self._retiring is not None

    @property
    def ending(self) -> bool:
        """END sent or due: the engine connects another session in its place."""
        return self.state is SessionState.DRAINING or self._retiring is not None

    def begin(self, job: ScanJob, transport: Transport, now: float) -> None:
        """Send one scan request for ``job``."""
        job.attempts += 1
        if transport is Transport.FILDES:
            fd = job.file.fd
            data, request_id = self.proto.send_fildes(fd)
            self._sent(request_id, job, transport, now)
            if self._out or not self._send_now(data, fd):
                self._queue(data, fd)
            return
        if job.file.identity.size < STREAM_CHUNK and self._whole_stream(job, now):
            return
        stream_id = self._command(Instream(), now)
        assert stream_id is not None
        self.in_flight[stream_id] = InFlight(job, now, transport)
        self._stream = _Stream(stream_id, job.file.fd)
        self.fill_stream(now)

    def _sent(self, request_id: int, job: ScanJob, transport: Transport, now: float) -> None:
        """A scan request framed outside _command(): count it and keep it in flight."""
        self.last_send = now
        self.requests += 1
        self.in_flight[request_id] = InFlight(job, now, transport)

    def _whole_stream(self, job: ScanJob, now: float) -> bool:
        """INSTREAM a small file with one read and one queued piece; False: stream it in chunks.

        A short read is the end of a regular file as it is now; a file that
        grew past its size at open or to a full chunk, a read error or a body
        over the stream limit take the chunked path, which says what
        happened. The read asks for one byte more than that size (which
        tells growth): a whole chunk's buffer for every small file cost
        about 1 us more a file (measured).
        """
        size = job.file.identity.size
        try:
            body = os.pread(job.file.fd, min(size + 1, STREAM_CHUNK), 0)
        except OSError:
            return False
        limit = self.stream_limit
        if (
            not body
            or len(body) > size
            or len(body) >= STREAM_CHUNK
            or (limit is not None and len(body) > limit)
        ):
            return False
        data, request_id = self.proto.send_instream(body)
        self._sent(request_id, job, Transport.INSTREAM, now)
        self._queue(data)
        return True

    def ping(self, now: float) -> None:
        """Keepalive: clamd's ReadTimeout counts input idleness, even while it scans.

        No scan request follows until the PONG: clamd refuses a descriptor
        that reaches it in the same read as the PING's bytes (see check_eicar).
        """
        if self._ping_id is not None:
            # the last one is unanswered: clamd is not reading, and another
            # would push back the deadline that tells a stuck clamd
            return
        if self.state in (SessionState.READY, SessionState.HANDSHAKE) and self._stream is None:
            self._ping_id = self._command(Ping(), now)
            self.ping_sent_at = now

    @property
    def ping_pending(self) -> bool:
        """A keepalive PING waits for its PONG; no request goes until it comes."""
        return self._ping_id is not None

    def pong(self, request_id: int | None) -> None:
        if request_id == self._ping_id:
            self._ping_id = None

    def retire(self, now: float, reason: str) -> None:
        """Take no new requests; send END once the last reply came (finish_retiring).

        The check that goes before END then covers every clean reply held.
        With END sent at once, the replies to what was in flight would come
        after the last check the session can send, and go again.
        """
        if self.state is not SessionState.READY:
            self.end(now, reason)
            return
        self._retiring = reason
        self.finish_retiring(now)

    def finish_retiring(self, now: float) -> None:
        """END a retiring session whose requests all have their replies and no check is out."""
        if (
            self._retiring is not None
            and not self.in_flight
            and self._eicar_id is None
            and self._can_send
        ):
            self.end(now, self._retiring)

    def end(self, now: float, reason: str) -> None:
        """Send END: clamd answers what is pending, then closes.

        Held clean replies get a check before it; any a pending check does
        not cover are handed back at close, to be scanned again.
        """
        if self.state in (SessionState.READY, SessionState.HANDSHAKE) and self._stream is None:
            if self.held and self._eicar_id is None and self.state is SessionState.READY:
                self.check_eicar(now)
            self._queue(self.proto.send(End()).data)
            self.last_send = now
            self.state = SessionState.DRAINING
            self.end_reason = reason

    # -- reading ----------------------------------------------------------------

    def on_readable(self) -> list[Event]:
        """Read and parse what clamd sent.

        Raises ClamdConnectionError when the socket fails. A protocol error
        after good replies in the same read is kept in ``failure`` so that
        those replies still count; the engine then drops the session.
        """
        try:
            data = self.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as exc:
            raise ClamdConnectionError(describe_os_error(exc)) from exc
        self.proto.receive_data(data)
        events: list[Event] = []
        while True:
            try:
                event = self.proto.next_event()
            except RemoteProtocolError as exc:
                self.failure = exc
                return events
            if isinstance(event, NeedData):
                return events
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events

    def acknowledge(self) -> bool:
        """Replies were read, more are due and nothing of ours will go out to carry the ACK.

        Over TCP, have it sent now (see transport.acknowledge_now), and say
        so: clamd holds back its next reply until then.
        """
        if self._tcp:
            acknowledge_now(self.sock)
        return self._tcp

    def handle_handshake(self, event: Event, now: float) -> bool:
        """Take a handshake reply; True when the event was one."""
        request_id = getattr(event, "request_id", None)
        if request_id not in self._handshake:
            return False
        self._handshake.discard(request_id)
        if isinstance(event, CommandsReply):
            self._caps_version, self._caps_commands = event.version, event.commands
        elif isinstance(event, StatsReply):
            self._max_threads = event.max_threads
        elif isinstance(event, CommandFailed):
            # clamd 1.5+ answers a disabled command (EnableStatsCommand no)
            # with "N: COMMAND UNAVAILABLE" and then ends the session: this
            # one is of no use, and later ones must not ask again.
            self.refused = event.message
            self.state = SessionState.DRAINING
        elif isinstance(event, (Pong, VersionReply)):
            pass
        else:
            raise RemoteProtocolError(f"unexpected reply during the handshake: {event!r}")
        self._ready_if_done(now)
        return True

    def take(self, event: ScanReply) -> InFlight | None:
        """The request a scan reply answers.

        clamd may answer an INSTREAM before its body is all sent (StreamMaxLength
        passed: it replies, then closes). The rest of the body must not be
        sent, and the session is of no further use.
        """
        if self._stream is not None and self._stream.request_id == event.request_id:
            self._stream = None
            self._out.clear()
            self.state = SessionState.DRAINING
            self.end_reason = "clamd answered a stream before its end"
        return self.in_flight.pop(event.request_id, None)

    def close(self) -> list[InFlight]:
        """Close the socket; hand back everything that got no reply."""
        self.state = SessionState.CLOSED
        self._stream = None
        self._out.clear()
        self._eicar_done()
        with contextlib.suppress(OSError):
            self.sock.close()
        # held replies were never confirmed: they go again like the unanswered
        lost = [entry for entry, _ in self.held] + list(self.in_flight.values())
        self.held.clear()
        self.in_flight.clear()
        return lost

    def fileno(self) -> int:
        return self.sock.fileno()
