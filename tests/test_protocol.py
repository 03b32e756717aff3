"""The sans-IO clamd protocol core: framing out, typed replies in. No sockets.

Every reply is fed the ways h11's tests/test_io.py feeds its readers (whole,
one byte at a time, glued to another reply) and must give the same events.
Reply strings come from a real clamd 1.4.6 and from clamd/session.c and
clamd/scanner.c; see shared/reference/clamd-behaviour.md.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from clamwatch.clamd.protocol import (
    MAX_RECORD,
    STREAM_CHUNK,
    ClamdProtocol,
    Command,
    CommandFailed,
    CommandsReply,
    ConnectionClosed,
    End,
    Event,
    Fildes,
    Instream,
    LocalProtocolError,
    NeedData,
    Outgoing,
    Ping,
    Pong,
    RemoteProtocolError,
    Scan,
    ScanReply,
    SessionEnded,
    State,
    Stats,
    StatsReply,
    Version,
    VersionCommands,
    VersionReply,
)
from clamwatch.verdict import Clean, Infected, NotScanned, NotScannedReason, ScanError, Verdict

# -- helpers ----------------------------------------------------------------


def state(proto: ClamdProtocol) -> State:
    """``proto.state``, read through a call so mypy does not keep an old narrowing."""
    return proto.state


def drain(proto: ClamdProtocol) -> list[Event]:
    """Every event the protocol can give now, up to NEED_DATA."""
    events: list[Event] = []
    while True:
        event = proto.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)


def send_all(proto: ClamdProtocol, command: Command) -> Outgoing:
    """Send ``command``; an INSTREAM gets a one-chunk body and its end."""
    out = proto.send(command)
    if isinstance(command, Instream):
        proto.stream_chunk(b"body")
        proto.stream_end()
    return out


@dataclass(frozen=True)
class Scenario:
    """Commands sent, then the bytes clamd answers with.

    ``skip`` PINGs go first and stay unanswered, so a reply can carry the id
    of a real capture (``10: PONG`` needs nine requests before it). In a
    session the glued runs add one more PING, whose id is one past the
    scenario's: garbage scenarios use ids far from that one (99).
    """

    commands: tuple[Command, ...]
    reply: bytes
    session: bool = True
    skip: int = 0
    eof: bool = False  # clamd closes the connection after ``reply``
    step: int = 1  # the "one byte at a time" run feeds this many bytes at once

    def connect(self) -> ClamdProtocol:
        """A protocol with every command sent."""
        return self._connect(extra_ping=False)[0]

    def connect_with_ping(self) -> tuple[ClamdProtocol, int]:
        """As connect(), plus one PING sent last (before END): the id of that PING."""
        proto, ping_id = self._connect(extra_ping=True)
        assert ping_id is not None
        return proto, ping_id

    def _connect(self, *, extra_ping: bool) -> tuple[ClamdProtocol, int | None]:
        proto = ClamdProtocol()
        if self.session:
            proto.start_session()
        commands: list[Command] = [Ping()] * self.skip + list(self.commands)
        end = commands[-1:] if commands and isinstance(commands[-1], End) else []
        for command in commands[: len(commands) - len(end)]:
            send_all(proto, command)
        ping_id = proto.send(Ping()).request_id if extra_ping else None
        for command in end:
            proto.send(command)
        return proto, ping_id


def _feed(
    proto: ClamdProtocol, pieces: Sequence[bytes], eof: bool
) -> tuple[list[Event], RemoteProtocolError | None]:
    """Feed ``pieces`` (never b""), draining after each and after the EOF.

    Stops at the first remote error, keeping the events that came before it.
    """
    events: list[Event] = []
    try:
        for piece in [*pieces, b""] if eof else pieces:
            proto.receive_data(piece)
            while not isinstance(event := proto.next_event(), NeedData):
                events.append(event)
    except RemoteProtocolError as exc:
        return events, exc
    return events, None


def _whole(s: Scenario) -> list[bytes]:
    return [s.reply] if s.reply else []


def _bytewise(s: Scenario) -> list[bytes]:
    return [s.reply[i : i + s.step] for i in range(0, len(s.reply), s.step)]


def _pong(ping_id: int) -> bytes:
    return b"%d: PONG\0" % ping_id


def replies(s: Scenario) -> list[Event]:
    """The events for ``s.reply``, asserting every way of feeding it agrees.

    whole; one byte at a time; in a session glued to the next reply (after
    it, and out of order before it); outside a session, where clamd answers
    one command and closes, glued to the EOF (both read before next_event).
    """
    proto = s.connect()
    whole, error = _feed(proto, _whole(s), s.eof)
    assert error is None, error
    proto = s.connect()
    assert _feed(proto, _bytewise(s), s.eof) == (whole, None)

    if s.session:
        proto, ping_id = s.connect_with_ping()
        proto.receive_data(s.reply + _pong(ping_id))
        glued = drain(proto)
        assert glued[-1] == Pong(ping_id)
        rest, error = _feed(proto, [], s.eof)
        assert (glued[:-1] + rest, error) == (whole, None)

        proto, ping_id = s.connect_with_ping()
        assert _feed(proto, [_pong(ping_id) + s.reply], s.eof) == (
            [Pong(ping_id), *whole],
            None,
        )
    else:
        assert s.eof, "outside a session clamd always closes after its one reply"
        proto = s.connect()
        for piece in _whole(s):
            proto.receive_data(piece)
        proto.receive_data(b"")
        assert drain(proto) == whole
    return whole


def rejected(s: Scenario) -> list[Event]:
    """Assert ``s.reply`` is garbage however it arrives; the events before the error.

    After the error the protocol is in State.ERROR and next_event keeps
    raising, even when valid data follows.
    """
    runs: list[tuple[ClamdProtocol, list[bytes], int | None]] = [
        (s.connect(), _whole(s), None),
        (s.connect(), _bytewise(s), None),
    ]
    if s.session:
        # a valid reply for a later request arriving first must not hide it
        glued, extra_id = s.connect_with_ping()
        runs.append((glued, [_pong(extra_id) + s.reply], extra_id))
    outcomes = []
    for proto, pieces, ping_id in runs:
        events, error = _feed(proto, pieces, s.eof)
        assert error is not None, f"accepted: {events!r:.300}"
        assert state(proto) is State.ERROR
        with pytest.raises(RemoteProtocolError):
            proto.next_event()
        if not s.eof:
            proto.receive_data(b"1: PONG\0")
            with pytest.raises(RemoteProtocolError):
                proto.next_event()
        if ping_id is not None:
            assert events[0] == Pong(ping_id)
            events = events[1:]
        outcomes.append(events)
    assert all(events == outcomes[0] for events in outcomes), outcomes
    return outcomes[0]


def normalised(events: Sequence[Event]) -> list[Event]:
    """Drop the wording we do not pin: NotScanned details, a trailing dot."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, ScanReply) and isinstance(event.verdict, NotScanned):
            out.append(ScanReply(event.request_id, NotScanned(event.verdict.reason, "")))
        elif isinstance(event, CommandFailed):
            out.append(CommandFailed(event.request_id, event.message.rstrip(".")))
        else:
            out.append(event)
    return out


def not_scanned(reason: NotScannedReason) -> NotScanned:
    return NotScanned(reason, "")


def in_session(*commands: Command) -> ClamdProtocol:
    proto = ClamdProtocol()
    proto.start_session()
    for command in commands:
        send_all(proto, command)
    return proto


# -- framing ----------------------------------------------------------------


def test_idsession_opens_the_session() -> None:
    proto = ClamdProtocol()
    assert state(proto) is State.IDLE
    assert proto.start_session() == b"zIDSESSION\0"
    assert state(proto) is State.SESSION
    assert proto.pending == 0


@pytest.mark.parametrize(
    ("command", "data"),
    [
        pytest.param(Ping(), b"zPING\0", id="PING"),
        pytest.param(Version(), b"zVERSION\0", id="VERSION"),
        pytest.param(VersionCommands(), b"zVERSIONCOMMANDS\0", id="VERSIONCOMMANDS"),
        pytest.param(Stats(), b"zSTATS\0", id="STATS"),
        pytest.param(Scan(b"/up/a.pdf"), b"zSCAN /up/a.pdf\0", id="SCAN"),
        pytest.param(Scan(b"/up/a: b.pdf"), b"zSCAN /up/a: b.pdf\0", id="SCAN-colon"),
        pytest.param(Scan(b"/up/two\nlines"), b"zSCAN /up/two\nlines\0", id="SCAN-newline"),
        pytest.param(Scan(b"/up/\xff\xfe.bin"), b"zSCAN /up/\xff\xfe.bin\0", id="SCAN-not-utf8"),
        pytest.param(Instream(), b"zINSTREAM\0", id="INSTREAM"),
    ],
)
def test_command_framing(command: Command, data: bytes) -> None:
    proto = in_session()
    assert proto.send(command) == Outgoing(data, (), 1)
    assert proto.pending == 1


def test_fildes_passes_the_descriptor_with_a_dummy_nul() -> None:
    proto = in_session()
    out = proto.send(Fildes(17))
    # clamdscan sends the descriptor on one extra byte; clamd takes it as an
    # empty record without an id.
    assert out == Outgoing(b"zFILDES\0\0", (17,), 1)


def test_send_fildes_is_send_of_fildes() -> None:
    fast, slow = in_session(Ping()), in_session(Ping())
    for fd in (4, 5):
        out = slow.send(Fildes(fd))
        assert fast.send_fildes(fd) == (out.data, out.request_id)
    assert fast.pending == slow.pending == 3
    assert fast.send(Ping()).request_id == 4
    outside = ClamdProtocol()  # outside a session: the general path, same rules
    assert outside.send_fildes(9) == (b"zFILDES\0\0", 1)
    with pytest.raises(LocalProtocolError):
        outside.send_fildes(9)


@pytest.mark.parametrize("size", [1, 3, STREAM_CHUNK - 1, STREAM_CHUNK, STREAM_CHUNK + 1, 200_000])
def test_send_instream_is_command_chunks_and_end(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    slow = in_session()
    expected = slow.send(Instream())
    starts = range(0, size, STREAM_CHUNK)
    chunks = [slow.stream_chunk(body[at : at + STREAM_CHUNK]) for at in starts]
    wire = expected.data + b"".join(chunks) + slow.stream_end()
    fast = in_session()
    assert fast.send_instream(body) == (wire, expected.request_id)
    assert state(fast) is State.SESSION
    assert fast.send(Ping()).request_id == 2


def test_send_instream_of_nothing_is_an_empty_stream() -> None:
    proto = in_session()
    assert proto.send_instream(b"") == (b"zINSTREAM\0\0\0\0\0", 1)


@pytest.mark.parametrize(
    ("kind", "reply", "verdict"),
    [
        (Fildes(3), b"fd[7]: OK", Clean()),
        (Fildes(3), b"fd[]: OK", None),  # no descriptor number: not clamd's
        (Fildes(3), b"fd[7]: x: OK", None),
        (Fildes(3), b"fd[7]: OK ", None),
        (Instream(), b"stream: OK", Clean()),
        (Instream(), b"stream: OKAY", None),
        (Instream(), b"fd[7]: OK", None),
    ],
)
def test_clean_replies_are_recognised_exactly(
    kind: Command, reply: bytes, verdict: Verdict | None
) -> None:
    # the short cut for the common reply must take nothing else for clean
    proto = in_session()
    send_all(proto, kind)
    proto.receive_data(b"1: " + reply + b"\0")
    if verdict is None:
        with pytest.raises(RemoteProtocolError):
            proto.next_event()
    else:
        assert proto.next_event() == ScanReply(1, verdict)


def test_end_frames_and_takes_no_reply() -> None:
    proto = in_session(Ping())
    out = proto.send(End())
    assert out == Outgoing(b"zEND\0", (), None)
    assert state(proto) is State.ENDING
    assert proto.pending == 1  # the PING is still unanswered


def test_ids_start_at_one_after_idsession_and_increase() -> None:
    proto = in_session()
    commands: list[Command] = [Ping(), Fildes(5), Instream(), Scan(b"/x"), Version()]
    commands += [Fildes(6), VersionCommands(), Stats(), Instream(), Ping()]
    ids = [send_all(proto, command).request_id for command in commands]
    assert ids == list(range(1, 11))
    assert proto.pending == 10


def test_instream_chunks_are_length_prefixed_big_endian() -> None:
    proto = in_session()
    assert proto.send(Instream()).data == b"zINSTREAM\0"
    assert state(proto) is State.STREAMING
    assert proto.stream_chunk(b"abc") == b"\x00\x00\x00\x03abc"
    big = bytes(70_000)
    assert proto.stream_chunk(big) == b"\x00\x01\x11\x70" + big
    assert proto.stream_chunk(b"\0") == struct.pack(">I", 1) + b"\0"
    assert proto.stream_end() == b"\0\0\0\0"
    assert state(proto) is State.SESSION
    assert proto.send(Ping()).request_id == 2  # chunks take no ids


def test_single_command_outside_a_session() -> None:
    proto = ClamdProtocol()
    assert proto.send(Ping()) == Outgoing(b"zPING\0", (), 1)
    assert state(proto) is State.SINGLE


def test_single_instream_outside_a_session() -> None:
    proto = ClamdProtocol()
    proto.send(Instream())
    assert state(proto) is State.STREAMING
    proto.stream_chunk(b"x")
    proto.stream_end()
    assert state(proto) is State.SINGLE


# -- local misuse -------------------------------------------------------------


def _streaming() -> ClamdProtocol:
    proto = in_session()
    proto.send(Instream())
    return proto


def _single() -> ClamdProtocol:
    proto = ClamdProtocol()
    proto.send(Ping())
    return proto


def _ended() -> ClamdProtocol:
    proto = in_session()
    proto.send(End())
    return proto


@pytest.mark.parametrize("command", [Ping(), Version(), Scan(b"/x"), Fildes(3), Instream(), End()])
def test_no_command_while_streaming(command: Command) -> None:
    proto = _streaming()
    with pytest.raises(LocalProtocolError):
        proto.send(command)
    assert state(proto) is State.STREAMING
    proto.stream_chunk(b"still fine")
    proto.stream_end()
    assert proto.send(Ping()).request_id == 2


@pytest.mark.parametrize("make", [ClamdProtocol, in_session, _single, _ended])
def test_no_chunk_outside_a_stream(make: Callable[[], ClamdProtocol]) -> None:
    proto = make()
    with pytest.raises(LocalProtocolError):
        proto.stream_chunk(b"data")
    with pytest.raises(LocalProtocolError):
        proto.stream_end()


def test_an_empty_chunk_is_refused() -> None:
    # b"" would be the zero-length chunk that ends the stream
    proto = _streaming()
    with pytest.raises(LocalProtocolError):
        proto.stream_chunk(b"")
    assert state(proto) is State.STREAMING


@pytest.mark.parametrize("make", [ClamdProtocol, _single, _ended])
def test_end_only_inside_a_session(make: Callable[[], ClamdProtocol]) -> None:
    with pytest.raises(LocalProtocolError):
        make().send(End())


@pytest.mark.parametrize("make", [_single, _ended])
def test_nothing_after_a_single_command_or_end(make: Callable[[], ClamdProtocol]) -> None:
    with pytest.raises(LocalProtocolError):
        make().send(Ping())


@pytest.mark.parametrize("make", [in_session, _single, _streaming])
def test_idsession_only_once_and_first(make: Callable[[], ClamdProtocol]) -> None:
    with pytest.raises(LocalProtocolError):
        make().start_session()


def test_nul_in_a_path_is_refused_in_a_session() -> None:
    proto = in_session()
    with pytest.raises(LocalProtocolError):
        proto.send(Scan(b"/srv/a\0b"))
    assert state(proto) is State.SESSION
    assert proto.pending == 0
    assert proto.send(Ping()).request_id == 1  # the refused command took no id


def test_nul_in_a_path_is_refused_before_anything_is_sent() -> None:
    proto = ClamdProtocol()
    with pytest.raises(LocalProtocolError):
        proto.send(Scan(b"/srv/a\0b"))
    # nothing went out: the connection can still open a session
    assert state(proto) is State.IDLE
    assert proto.pending == 0
    assert proto.start_session() == b"zIDSESSION\0"


def test_no_data_after_eof() -> None:
    proto = in_session(Ping())
    proto.receive_data(b"")
    proto.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(LocalProtocolError):
        proto.receive_data(b"1: PONG\0")


@pytest.mark.parametrize("command", [Ping(), Scan(b"/x"), End()])
def test_no_command_after_clamd_closed(command: Command) -> None:
    proto = in_session(Fildes(3))
    proto.receive_data(b"")
    assert drain(proto) == [ConnectionClosed((1,))]
    assert state(proto) is State.CLOSED
    with pytest.raises(LocalProtocolError):
        proto.send(command)


# -- replies in a session -------------------------------------------------------

SIG = "Eicar-Test-Signature.UNOFFICIAL"

VERSIONCOMMANDS = (
    b"ClamAV 1.4.6| COMMANDS: SCAN QUIT RELOAD PING CONTSCAN VERSIONCOMMANDS VERSION END"
    b" SHUTDOWN MULTISCAN FILDES STATS IDSESSION INSTREAM DETSTATSCLEAR DETSTATS ALLMATCHSCAN"
)
COMMANDS = (
    frozenset({"SCAN", "QUIT", "RELOAD", "PING", "CONTSCAN", "VERSIONCOMMANDS", "VERSION", "END"})
    | {"SHUTDOWN", "MULTISCAN", "FILDES", "STATS", "IDSESSION", "INSTREAM"}
    | {"DETSTATSCLEAR", "DETSTATS", "ALLMATCHSCAN"}
)

# clamd/thrmgr.c thrmgr_printstats, as clamd 1.4.6 printed it with a queue
STATS_BODY = (
    b"POOLS: 1\n\nSTATE: VALID PRIMARY\n"
    b"THREADS: live 4  idle 1 max 4 idle-timeout 30\n"
    b"QUEUE: 5 items min_wait: 0.000012 max_wait: 0.000345 avg_wait: 0.000100\n"
    b"\tSTATS 0.000014 \n\tFILDES 0.012000 fd[12]\n\tFILDES 0.011000 fd[13]\n\n"
    b"MEMSTATS: heap N/A mmap N/A used N/A free N/A releasable N/A pools 1"
    b" pools_used 1281.773M pools_total 1281.827M\n"
    b"END"
)


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        pytest.param(
            Scenario((Fildes(3),), b"1: fd[12]: Eicar-Test-Signature.UNOFFICIAL FOUND\0"),
            [ScanReply(1, Infected(SIG))],
            id="fildes-found",
        ),
        pytest.param(
            Scenario((Fildes(3),), b"2: fd[13]: OK\0", skip=1),
            [ScanReply(2, Clean())],
            id="fildes-ok",
        ),
        pytest.param(Scenario((Ping(),), b"10: PONG\0", skip=9), [Pong(10)], id="pong"),
        pytest.param(
            Scenario((Version(),), b"14: ClamAV 1.4.6\0", skip=13),
            [VersionReply(14, "ClamAV 1.4.6")],
            id="version",
        ),
        pytest.param(
            Scenario((Version(),), b"1: ClamAV 1.4.6/27431/Mon Nov 24 08:00:00 2025\0"),
            [VersionReply(1, "ClamAV 1.4.6/27431/Mon Nov 24 08:00:00 2025")],
            id="version-with-database",
        ),
        pytest.param(
            Scenario((Fildes(3),), b"11: fd[15]: Not a regular file ERROR\0", skip=10),
            [ScanReply(11, not_scanned(NotScannedReason.NOT_REGULAR))],
            id="fildes-not-regular",
        ),
        pytest.param(
            Scenario((Scan(b"/tmp/cx/empty.txt"),), b"12: /tmp/cx/empty.txt: OK\0", skip=11),
            [ScanReply(12, Clean())],
            id="scan-ok",
        ),
        pytest.param(
            Scenario(
                (Scan(b"/tmp/cx/nonexist"),),
                b"13: /tmp/cx/nonexist: File path check failure:"
                b" No such file or directory. ERROR\0",
                skip=12,
            ),
            [ScanReply(13, ScanError("File path check failure: No such file or directory"))],
            id="scan-nonexistent",
        ),
        pytest.param(
            Scenario((Instream(),), b"1: stream: OK\0"),
            [ScanReply(1, Clean())],
            id="stream-ok",
        ),
        pytest.param(
            Scenario((Instream(),), b"1: stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0"),
            [ScanReply(1, Infected(SIG))],
            id="stream-found",
        ),
        pytest.param(
            Scenario((Instream(),), b"1: INSTREAM size limit exceeded. ERROR\0", eof=True),
            [ScanReply(1, not_scanned(NotScannedReason.TOO_LARGE)), ConnectionClosed(())],
            id="stream-too-large",
        ),
        pytest.param(
            Scenario((Fildes(3),), b"1: No file descriptor received. ERROR\0"),
            [ScanReply(1, ScanError("No file descriptor received"))],
            id="fildes-without-descriptor",
        ),
        pytest.param(
            Scenario((Ping(),), b"1: PROTOCOL ERROR: ancillary data sent without FILDES. ERROR\0"),
            [CommandFailed(1, "PROTOCOL ERROR: ancillary data sent without FILDES")],
            id="descriptor-without-fildes-ping",
        ),
        pytest.param(
            Scenario(
                (Instream(),), b"1: PROTOCOL ERROR: ancillary data sent without FILDES. ERROR\0"
            ),
            [ScanReply(1, ScanError("PROTOCOL ERROR: ancillary data sent without FILDES"))],
            id="descriptor-without-fildes-stream",
        ),
        pytest.param(
            Scenario(
                (Ping(), Fildes(3)), b"1: Command invalid inside IDSESSION. ERROR\0", eof=True
            ),
            [CommandFailed(1, "Command invalid inside IDSESSION"), ConnectionClosed((2,))],
            id="invalid-inside-idsession",
        ),
        pytest.param(
            Scenario((Fildes(3), Ping()), b"COMMAND READ TIMED OUT\n", eof=True),
            [SessionEnded("COMMAND READ TIMED OUT"), ConnectionClosed((1, 2))],
            id="read-timed-out",
        ),
        pytest.param(
            Scenario(
                (Ping(), Fildes(3), Instream()),
                b"1: PONG\x003: stream: OK\0COMMAND READ TIMED OUT\n",
                eof=True,
            ),
            [
                Pong(1),
                ScanReply(3, Clean()),
                SessionEnded("COMMAND READ TIMED OUT"),
                ConnectionClosed((2,)),
            ],
            id="read-timed-out-after-replies",
        ),
        pytest.param(
            Scenario((Fildes(3),), b"1: COMMAND UNAVAILABLE\0"),
            [ScanReply(1, not_scanned(NotScannedReason.UNSUPPORTED))],
            id="unavailable-fildes",
        ),
        pytest.param(
            Scenario((Instream(),), b"1: COMMAND UNAVAILABLE\0"),
            [ScanReply(1, not_scanned(NotScannedReason.UNSUPPORTED))],
            id="unavailable-instream",
        ),
        pytest.param(
            Scenario((Scan(b"/srv/a"),), b"1: COMMAND UNAVAILABLE\0"),
            [ScanReply(1, not_scanned(NotScannedReason.UNSUPPORTED))],
            id="unavailable-scan",
        ),
        pytest.param(
            Scenario((Version(),), b"1: COMMAND UNAVAILABLE\0"),
            [CommandFailed(1, "COMMAND UNAVAILABLE")],
            id="unavailable-version",
        ),
        pytest.param(
            # clamd 1.5 with VERSION disabled ends the session
            Scenario((Fildes(3), Version()), b"COMMAND UNAVAILABLE\0", eof=True),
            [SessionEnded("COMMAND UNAVAILABLE"), ConnectionClosed((1, 2))],
            id="unavailable-without-id",
        ),
        pytest.param(
            Scenario((Stats(),), b"15: " + STATS_BODY + b"\0", skip=14),
            [StatsReply(15, STATS_BODY.decode(), max_threads=4, queue_items=5)],
            id="stats",
        ),
        pytest.param(
            Scenario((VersionCommands(),), b"1: " + VERSIONCOMMANDS + b"\0"),
            [CommandsReply(1, "ClamAV 1.4.6", COMMANDS)],
            id="versioncommands",
        ),
        pytest.param(
            Scenario(
                (VersionCommands(),),
                b"1: ENGINE VERSION MISMATCH: 1.4.5 != 1.4.6. ERROR\0",
            ),
            [CommandFailed(1, "ENGINE VERSION MISMATCH: 1.4.5 != 1.4.6")],
            id="versioncommands-mismatch",
        ),
        pytest.param(
            Scenario((Ping(), End()), b"1: PONG\0", eof=True),
            [Pong(1), ConnectionClosed(())],
            id="end-then-close",
        ),
    ],
)
def test_reply_in_session(scenario: Scenario, expected: list[Event]) -> None:
    assert normalised(replies(scenario)) == expected


def test_replies_out_of_order_as_clamd_sends_them() -> None:
    # A real capture: FILDES, FILDES, INSTREAM, INSTREAM, PING, VERSION.
    scenario = Scenario(
        (Fildes(3), Fildes(4), Instream(), Instream(), Ping(), Version()),
        b"5: PONG\x006: ClamAV 1.4.6\x001: fd[12]: Sig FOUND\x002: fd[13]: OK\0"
        b"4: stream: OK\x003: stream: Sig FOUND\0",
        eof=True,
    )
    assert replies(scenario) == [
        Pong(5),
        VersionReply(6, "ClamAV 1.4.6"),
        ScanReply(1, Infected("Sig")),
        ScanReply(2, Clean()),
        ScanReply(4, Clean()),
        ScanReply(3, Infected("Sig")),
        ConnectionClosed(()),
    ]


def test_pending_counts_down_as_replies_arrive() -> None:
    proto = in_session(Fildes(3), Fildes(4), Ping())
    assert proto.pending == 3
    proto.receive_data(b"2: fd[13]: OK\0")
    assert drain(proto) == [ScanReply(2, Clean())]
    assert proto.pending == 2


def test_nothing_yet_is_need_data() -> None:
    proto = in_session(Ping())
    assert isinstance(proto.next_event(), NeedData)
    proto.receive_data(b"1: PO")
    assert isinstance(proto.next_event(), NeedData)
    proto.receive_data(b"NG\0")
    assert proto.next_event() == Pong(1)


def test_a_reply_can_arrive_while_we_still_stream() -> None:
    # clamd answers as soon as StreamMaxLength is passed, then closes
    proto = in_session()
    proto.send(Instream())
    proto.stream_chunk(b"x" * 100)
    proto.receive_data(b"1: INSTREAM size limit exceeded. ERROR\0")
    proto.receive_data(b"")
    assert normalised(drain(proto)) == [
        ScanReply(1, not_scanned(NotScannedReason.TOO_LARGE)),
        ConnectionClosed(()),
    ]


def test_stats_without_the_lines_it_reads() -> None:
    body = b"POOLS: 1\n\nSTATE: VALID PRIMARY\nMEMSTATS: heap N/A\nEND"
    assert replies(Scenario((Stats(),), b"1: " + body + b"\0")) == [
        StatsReply(1, body.decode(), None, None)
    ]


def test_stats_at_the_size_limit_is_accepted() -> None:
    body = b"POOLS: 1\n" + b"\tFILDES 0.000100 fd[12]\n" * 20_000
    body = body[: MAX_RECORD - len(b"1: END")] + b"END"
    record = b"1: " + body
    assert len(record) == MAX_RECORD
    (event,) = replies(Scenario((Stats(),), record + b"\0", step=4096))
    assert isinstance(event, StatsReply)
    assert event.text == body.decode()


# -- scan statuses --------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        (b"fd[12]: OK", Clean()),
        (b"fd[12]: Empty file", Clean()),
        (b"fd[12]: Win.Test.EICAR_HDB-1 FOUND", Infected("Win.Test.EICAR_HDB-1")),
        (b"fd[12]: Eicar-Test-Signature.UNOFFICIAL FOUND", Infected(SIG)),
        (
            b"fd[12]: Heuristics.Phishing.Email.SpoofedDomain FOUND",
            Infected("Heuristics.Phishing.Email.SpoofedDomain"),
        ),
        (b"fd[12]: A Sig With Spaces.UNOFFICIAL FOUND", Infected("A Sig With Spaces.UNOFFICIAL")),
        (b"fd[12]: OK FOUND", Infected("OK")),
        (b"fd[12]: Sig.\xff.UNOFFICIAL FOUND", Infected("Sig.\udcff.UNOFFICIAL")),
        (b"fd[12]: Not a regular file ERROR", not_scanned(NotScannedReason.NOT_REGULAR)),
        (b"fd[12]: Can't allocate memory ERROR", ScanError("Can't allocate memory")),
        (b"fd[12]: Excluded", not_scanned(NotScannedReason.EXCLUDED)),
        (
            b"FILDES: didn't receive file descriptor. ERROR",
            ScanError("FILDES: didn't receive file descriptor"),
        ),
    ],
)
def test_fildes_status(reply: bytes, verdict: Verdict) -> None:
    scenario = Scenario((Fildes(3),), b"1: " + reply + b"\0")
    assert normalised(replies(scenario)) == [ScanReply(1, verdict)]


@pytest.mark.parametrize(
    ("path", "status", "verdict"),
    [
        (b"/up/a: b.txt", b"OK", Clean()),
        (b"/up/a: b.txt", b"Eicar FOUND", Infected("Eicar")),
        (b"/up/report: OK", b"Eicar FOUND", Infected("Eicar")),
        (b"/up/x: Sig FOUND", b"OK", Clean()),
        (b"/up/Sig FOUND", b"OK", Clean()),
        (b"/up/a: Access denied. ERROR", b"OK", Clean()),
        (b"/up/a: b", b"Access denied. ERROR", ScanError("Access denied")),
        (b"/up/two\nlines", b"OK", Clean()),
        (b"/up/two\nlines", b"Eicar FOUND", Infected("Eicar")),
        (b"/up/\xff\xfe.bin", b"Eicar FOUND", Infected("Eicar")),
        (b"/up/\xff: \xfe", b"OK", Clean()),
        (b"/up/sub", b"Excluded", not_scanned(NotScannedReason.EXCLUDED)),
    ],
)
def test_scan_status_after_a_path_holding_anything(
    path: bytes, status: bytes, verdict: Verdict
) -> None:
    scenario = Scenario((Scan(path),), b"1: " + path + b": " + status + b"\0")
    assert normalised(replies(scenario)) == [ScanReply(1, verdict)]


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        # clamd/scanner.c scan_callback replies with cli_realpath() of the path
        # for these, so a path through a symlink (or with // or /./) comes
        # back under another name than the one we sent.
        (b"Eicar FOUND", Infected("Eicar")),
        (b"Empty file", Clean()),
        (b"Access denied. ERROR", ScanError("Access denied")),
    ],
)
def test_scan_status_when_clamd_names_the_resolved_path(status: bytes, verdict: Verdict) -> None:
    scenario = Scenario(
        (Scan(b"/srv/upload/link/x.bin"),), b"1: /srv/data/x.bin: " + status + b"\0"
    )
    assert normalised(replies(scenario)) == [ScanReply(1, verdict)]


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        # clamd/scanner.c scan_pathchk, CrossFilesystems no
        (b"Excluded (another filesystem)", NotScannedReason.EXCLUDED),
        # clamd/scanner.c scan_callback, SCAN of a fifo, socket or device
        (b"Not supported file type ERROR", NotScannedReason.NOT_REGULAR),
    ],
)
def test_scan_of_something_clamd_skips(status: bytes, reason: NotScannedReason) -> None:
    scenario = Scenario((Scan(b"/srv/upload/x"),), b"1: /srv/upload/x: " + status + b"\0")
    assert normalised(replies(scenario)) == [ScanReply(1, not_scanned(reason))]


def test_a_detection_is_an_event_never_an_exception() -> None:
    proto = in_session(Fildes(3))
    proto.receive_data(b"1: fd[12]: Eicar-Test-Signature.UNOFFICIAL FOUND\0")
    event = proto.next_event()
    assert event == ScanReply(1, Infected(SIG))
    assert state(proto) is State.SESSION


# -- garbage --------------------------------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(Scenario((Ping(),), b"99: PONG\0"), id="unknown-id"),
        pytest.param(Scenario((Ping(),), b"PONG\0"), id="no-id"),
        pytest.param(Scenario((Fildes(3),), b"fd[12]: OK\0"), id="no-id-scan"),
        pytest.param(Scenario((Version(),), b"ClamAV 1.4.6\0"), id="no-id-version"),
        pytest.param(Scenario((Ping(),), b"x: PONG\0"), id="id-not-a-number"),
        pytest.param(Scenario((Ping(),), b"-1: PONG\0"), id="negative-id"),
        pytest.param(Scenario((Ping(),), b"1:PONG\0"), id="id-without-space"),
        pytest.param(Scenario((Ping(),), b"\0"), id="empty-record"),
        pytest.param(Scenario((Ping(),), b"1: PANG\0"), id="ping-not-pong"),
        pytest.param(Scenario((Fildes(3),), b"1: fd[12]: MAYBE\0"), id="status-unknown"),
        pytest.param(Scenario((Fildes(3),), b"1: fd[12]: \0"), id="status-empty"),
        pytest.param(Scenario((Fildes(3),), b"1: fd[12]: FOUND\0"), id="found-without-name"),
        pytest.param(Scenario((Fildes(3),), b"1: fd[12]: a\nb FOUND\0"), id="found-newline"),
        pytest.param(Scenario((Instream(),), b"1: stream: ok\0"), id="status-lowercase"),
        pytest.param(Scenario((Scan(b"/x"),), b"1: /x: CLEAN\0"), id="scan-status-unknown"),
        pytest.param(
            Scenario((VersionCommands(),), b"1: ClamAV 1.4.6\0"), id="versioncommands-no-list"
        ),
        pytest.param(Scenario((Stats(),), b"1: POOLS: 1\n\0"), id="stats-without-end"),
        pytest.param(
            Scenario((Stats(),), b"1: " + b"A" * MAX_RECORD, step=4096), id="record-too-long"
        ),
        pytest.param(Scenario((Ping(),), b"1: PO", eof=True), id="eof-in-record"),
        pytest.param(
            Scenario((Fildes(3),), b"1: fd[12]: Eicar FOU", eof=True), id="eof-in-verdict"
        ),
        pytest.param(Scenario((Stats(),), b"1: " + STATS_BODY[:60], eof=True), id="eof-in-stats"),
    ],
)
def test_garbage_in_a_session(scenario: Scenario) -> None:
    assert rejected(scenario) == []


@pytest.mark.parametrize(
    ("scenario", "before"),
    [
        pytest.param(Scenario((Ping(),), b"1: PONG\x001: PONG\0"), [Pong(1)], id="answered-twice"),
        pytest.param(
            Scenario((Fildes(3), Ping()), b"2: PONG\x001: fd[12]: Eicar FOUND\x0099: PONG\0"),
            [Pong(2), ScanReply(1, Infected("Eicar"))],
            id="unknown-id-after-replies",
        ),
        pytest.param(
            Scenario((Fildes(3), Ping()), b"2: PONG\x001: fd[12]: Eicar FOU", eof=True),
            [Pong(2)],
            id="eof-in-record-after-replies",
        ),
    ],
)
def test_garbage_after_good_replies_keeps_them(scenario: Scenario, before: list[Event]) -> None:
    assert rejected(scenario) == before


def test_a_record_over_the_limit_is_refused_however_it_arrives() -> None:
    # Whether a reply is valid must not depend on how the kernel split it.
    record = b"1: " + b"\tFILDES 0.000100 fd[12]\n" * (MAX_RECORD // 20) + b"END\0"
    assert len(record) > MAX_RECORD
    rejected(Scenario((Stats(),), record, step=4096))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"COMMAND READ TIMED OUT", [SessionEnded("COMMAND READ TIMED OUT")]),
        (b"COMMAND READ TIMED OUT\0", [SessionEnded("COMMAND READ TIMED OUT")]),
        (b"UNKNOWN COMMAND\0", [SessionEnded("UNKNOWN COMMAND")]),
    ],
)
def test_session_ending_notices_without_an_id(data: bytes, expected: list[Event]) -> None:
    proto = in_session(Fildes(3))
    proto.receive_data(data)
    proto.receive_data(b"")
    assert drain(proto) == [*expected, ConnectionClosed((1,))]


# -- EOF ------------------------------------------------------------------------


def test_eof_with_requests_pending_reports_them_unanswered() -> None:
    scenario = Scenario((Fildes(3), Fildes(4), Instream(), Ping()), b"2: fd[13]: OK\0", eof=True)
    events = replies(scenario)
    assert events == [ScanReply(2, Clean()), ConnectionClosed((1, 3, 4))]
    # an unanswered request is never a verdict
    assert not any(isinstance(e, ScanReply) and e.request_id in (1, 3) for e in events)


def test_connection_closed_is_reported_once() -> None:
    proto = in_session(Fildes(3))
    proto.receive_data(b"")
    assert proto.next_event() == ConnectionClosed((1,))
    assert state(proto) is State.CLOSED
    assert proto.pending == 0
    assert isinstance(proto.next_event(), NeedData)
    assert isinstance(proto.next_event(), NeedData)


def test_eof_before_anything_was_sent() -> None:
    proto = ClamdProtocol()
    proto.receive_data(b"")
    assert drain(proto) == [ConnectionClosed(())]


def test_remote_error_state_sticks() -> None:
    proto = in_session(Ping())
    proto.receive_data(b"7: PONG\0")
    with pytest.raises(RemoteProtocolError):
        proto.next_event()
    assert state(proto) is State.ERROR
    proto.receive_data(b"")
    for _ in range(3):
        with pytest.raises(RemoteProtocolError):
            proto.next_event()
    assert state(proto) is State.ERROR


# -- one command outside a session ------------------------------------------------


@pytest.mark.parametrize(
    ("command", "reply", "expected"),
    [
        (Ping(), b"PONG\0", Pong(1)),
        (Version(), b"ClamAV 1.4.6\0", VersionReply(1, "ClamAV 1.4.6")),
        (VersionCommands(), VERSIONCOMMANDS + b"\0", CommandsReply(1, "ClamAV 1.4.6", COMMANDS)),
        (Stats(), STATS_BODY + b"\0", StatsReply(1, STATS_BODY.decode(), 4, 5)),
        (Fildes(3), b"fd[12]: Eicar FOUND\0", ScanReply(1, Infected("Eicar"))),
        (Fildes(3), b"fd[12]: OK\0", ScanReply(1, Clean())),
        (Instream(), b"stream: OK\0", ScanReply(1, Clean())),
        (Instream(), b"stream: Eicar FOUND\0", ScanReply(1, Infected("Eicar"))),
        (
            Instream(),
            b"INSTREAM size limit exceeded. ERROR\0",
            ScanReply(1, not_scanned(NotScannedReason.TOO_LARGE)),
        ),
        (Scan(b"/tmp/a: b"), b"/tmp/a: b: OK\0", ScanReply(1, Clean())),
        (Scan(b"/tmp/cx/empty.txt"), b"/tmp/cx/empty.txt: OK\0", ScanReply(1, Clean())),
        (
            Fildes(3),
            b"COMMAND UNAVAILABLE\0",
            ScanReply(1, not_scanned(NotScannedReason.UNSUPPORTED)),
        ),
        (Version(), b"COMMAND UNAVAILABLE\0", CommandFailed(1, "COMMAND UNAVAILABLE")),
        (Ping(), b"UNKNOWN COMMAND\0", CommandFailed(1, "UNKNOWN COMMAND")),
    ],
)
def test_single_command_reply_has_no_id(command: Command, reply: bytes, expected: Event) -> None:
    scenario = Scenario((command,), reply, session=False, eof=True)
    assert normalised(replies(scenario)) == [expected, ConnectionClosed(())]


@pytest.mark.parametrize("command", [Ping(), Instream()])
def test_single_command_timed_out(command: Command) -> None:
    # ReadTimeout: the request is left unanswered, never a verdict
    scenario = Scenario((command,), b"COMMAND READ TIMED OUT\n", session=False, eof=True)
    assert replies(scenario) == [SessionEnded("COMMAND READ TIMED OUT"), ConnectionClosed((1,))]


def test_timed_out_before_the_first_command() -> None:
    # CommandReadTimeout: nothing sent at all
    scenario = Scenario((), b"COMMAND READ TIMED OUT\n", session=False, eof=True)
    assert replies(scenario) == [SessionEnded("COMMAND READ TIMED OUT"), ConnectionClosed(())]


def test_single_command_closed_without_a_reply() -> None:
    # INSTREAM temp file cannot be created: clamd closes, no reply at all
    scenario = Scenario((Instream(),), b"", session=False, eof=True)
    assert replies(scenario) == [ConnectionClosed((1,))]


@pytest.mark.parametrize(
    "scenario",
    [
        pytest.param(Scenario((Ping(),), b"PONG\x00PONG\0", session=False), id="second-reply"),
        pytest.param(Scenario((Ping(),), b"1: PONG\0", session=False), id="id-outside-session"),
        pytest.param(Scenario((Ping(),), b"PO", session=False, eof=True), id="eof-in-record"),
        pytest.param(Scenario((), b"PONG\0", session=False), id="reply-to-nothing"),
    ],
)
def test_garbage_outside_a_session(scenario: Scenario) -> None:
    rejected(scenario)
