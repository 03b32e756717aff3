"""The fake clamd answers like the real clamd 1.4.6, and each fault knob works.

The first half sends the same raw bytes to the real clamd (conftest's
``clamd`` and ``clamd_factory``) and to a FakeClamd and compares the replies:
descriptor numbers ("fd[12]") and version strings are normalised, session
replies are compared as a set because clamd answers out of order. The second
half drives each fault of `Faults` with raw sockets. Nothing here uses
clamwatch's own engine, so a bug there cannot hide one in the fake.
"""

from __future__ import annotations

import array
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from clamwatch.privateclamd import PrivateClamd
from clamwatch.testsig import EICAR_SIGNATURE, eicar_bytes
from fakeclamd import FakeClamd, Faults, Outcome, Received, ReplyOrder
from helpers import ClamdFactory

# Upper bound for every wait below; each wait ends as soon as its condition
# holds, so a passing test never sits this long.
DEADLINE = 10.0

# How long "nothing arrives" is watched for. Proving an absence needs some
# window; this one is short because the fake has nothing else to do.
QUIET_SECONDS = 0.3

FOUND = f"{EICAR_SIGNATURE} FOUND"


@dataclass(frozen=True)
class Await:
    """A step that reads this many NUL-terminated replies before going on:
    it makes clamd see what follows in a read of its own."""

    count: int


# A step is bytes to send, (bytes, file) to send with the file's descriptor
# attached as SCM_RIGHTS, or Await.
Step = bytes | tuple[bytes, Path] | Await


# Raw client ----------------------------------------------------------------


class RawClient:
    """A clamd client on a bare socket."""

    def __init__(self, address: str) -> None:
        if address.startswith("unix://"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[str, int] = address.removeprefix("unix://")
        else:
            host, _, port = address.removeprefix("tcp://").rpartition(":")
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = (host, int(port))
        self.sock.settimeout(DEADLINE)
        self.sock.connect(target)
        self._received = bytearray()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.sock.close()

    def send(self, step: bytes | tuple[bytes, Path]) -> bool:
        """Send bytes, or bytes with a descriptor; False when the server has closed already."""
        try:
            if isinstance(step, bytes):
                self.sock.sendall(step)
            else:
                data, path = step
                fd = os.open(path, os.O_RDONLY)
                try:
                    rights = array.array("i", [fd])
                    self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
                finally:
                    os.close(fd)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def read_records(self, count: int, term: bytes = b"\0") -> list[bytes]:
        """The next ``count`` records, terminators included."""
        deadline = time.monotonic() + DEADLINE
        while self._received.count(term) < count:
            if not self._recv(deadline):
                raise AssertionError(f"closed after {bytes(self._received)!r}")
        records = []
        for _ in range(count):
            end = self._received.index(term) + 1
            records.append(bytes(self._received[:end]))
            del self._received[:end]
        return records

    def read_until_closed(self) -> bytes:
        deadline = time.monotonic() + DEADLINE
        while self._recv(deadline):
            pass
        data = bytes(self._received)
        self._received.clear()
        return data

    def quiet_for(self, seconds: float) -> bool:
        """True if no byte (and no EOF) arrives within ``seconds``."""
        readable, _, _ = select.select([self.sock], [], [], seconds)
        return not readable and not self._received

    def _recv(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no end of reply within {DEADLINE} s: {bytes(self._received)!r}")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            # clamd resets when it closes with our bytes still unread; what
            # it wrote before is already here.
            return False
        self._received += data
        return bool(data)


def exchange(address: str, steps: list[Step]) -> bytes:
    """Send the steps (stopping if the server closes) and read until closed."""
    replies = b""
    with RawClient(address) as client:
        for step in steps:
            if isinstance(step, Await):
                replies += b"".join(client.read_records(step.count))
            elif not client.send(step):
                break
        return replies + client.read_until_closed()


def chunk(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def instream(*chunks: bytes) -> bytes:
    return b"zINSTREAM\0" + b"".join(chunk(c) for c in chunks) + chunk(b"")


def fildes(path: Path) -> tuple[bytes, Path]:
    # Command and dummy byte in one sendmsg(): clamd takes that reliably.
    return (b"zFILDES\0\0", path)


def scan(path: Path) -> bytes:
    return b"zSCAN " + os.fsencode(path) + b"\0"


IDSESSION = b"zIDSESSION\0"
END = b"zEND\0"
PING = b"zPING\0"


# Normalising ---------------------------------------------------------------


def normalise(raw: bytes) -> bytes:
    """Blank out what legitimately differs: descriptor numbers, versions, STATS."""
    raw = re.sub(rb"fd\[\d+\]", b"fd[N]", raw)
    raw = re.sub(rb"ClamAV [0-9][^|\0\n]*", b"ClamAV <version>", raw)
    # clamd-protocol.txt: STATS "is not stable"; only its frame is compared.
    return re.sub(rb"POOLS: .*?\nEND", b"<stats>", raw, flags=re.DOTALL)


def records(raw: bytes) -> list[bytes]:
    """Normalised records, terminator included, sorted (clamd's order is arbitrary)."""
    return sorted(re.findall(rb"[^\0\n]*[\0\n]|[^\0\n]+$", normalise(raw)))


def terms(*texts: str, term: str = "\0") -> list[bytes]:
    return sorted((text + term).encode() for text in texts)


# Test files ----------------------------------------------------------------


@dataclass(frozen=True)
class Files:
    eicar: Path
    eicar_then_more: Path
    eicar_not_at_start: Path
    clean: Path
    empty: Path
    infected_dir: Path
    infected_member: Path
    clean_dir: Path
    missing: Path


@pytest.fixture
def files(tmp_path: Path) -> Files:
    eicar = eicar_bytes()
    infected_dir = tmp_path / "infected"
    (infected_dir / "sub").mkdir(parents=True)
    (infected_dir / "a.txt").write_bytes(b"hello\n")
    member = infected_dir / "sub" / "x.bin"
    member.write_bytes(eicar)
    clean_dir = tmp_path / "cleandir"
    clean_dir.mkdir()
    (clean_dir / "a.txt").write_bytes(b"hello\n")
    made = Files(
        eicar=tmp_path / "eicar.com",
        eicar_then_more=tmp_path / "eicar-then-more.bin",
        eicar_not_at_start=tmp_path / "eicar-not-at-start.bin",
        clean=tmp_path / "clean.txt",
        empty=tmp_path / "empty.txt",
        infected_dir=infected_dir,
        infected_member=member,
        clean_dir=clean_dir,
        missing=tmp_path / "missing",
    )
    made.eicar.write_bytes(eicar)
    made.eicar_then_more.write_bytes(eicar + b" and more\n")
    made.eicar_not_at_start.write_bytes(b"hello " + eicar)
    made.clean.write_bytes(b"nothing to see here\n")
    made.empty.write_bytes(b"")
    return made


@pytest.fixture
def fake() -> Iterator[FakeClamd]:
    with FakeClamd(tcp=True) as server:
        yield server


# The fake matches the real clamd -------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    steps: Callable[[Files], list[Step]]
    expected: Callable[[Files], bytes]


COMMANDS = (
    "SCAN QUIT RELOAD PING CONTSCAN VERSIONCOMMANDS VERSION END SHUTDOWN MULTISCAN FILDES "
    "STATS IDSESSION INSTREAM DETSTATSCLEAR DETSTATS ALLMATCHSCAN"
)

SINGLE_COMMANDS = [
    Case("ping", lambda f: [PING], lambda f: b"PONG\0"),
    Case("ping-newline", lambda f: [b"nPING\n"], lambda f: b"PONG\n"),
    Case("ping-old-style", lambda f: [b"PING\n"], lambda f: b"PONG\n"),
    Case("version", lambda f: [b"zVERSION\0"], lambda f: b"ClamAV <version>\0"),
    Case(
        "versioncommands",
        lambda f: [b"zVERSIONCOMMANDS\0"],
        lambda f: f"ClamAV <version>| COMMANDS: {COMMANDS}\0".encode(),
    ),
    Case("stats", lambda f: [b"zSTATS\0"], lambda f: b"<stats>\0"),
    Case("unknown", lambda f: [b"zHELLO\0"], lambda f: b"UNKNOWN COMMAND\0"),
    Case("ping-with-argument", lambda f: [b"zPING x\0"], lambda f: b"UNKNOWN COMMAND\0"),
    Case("end-outside-session", lambda f: [END], lambda f: b"UNKNOWN COMMAND\0"),
    Case("idsession-old-style", lambda f: [b"IDSESSION\n"], lambda f: b"UNKNOWN COMMAND\n"),
    Case("detstats-says-nothing", lambda f: [b"zDETSTATS\0"], lambda f: b""),
    Case("fildes-eicar", lambda f: [fildes(f.eicar)], lambda f: f"fd[N]: {FOUND}\0".encode()),
    Case(
        "fildes-dummy-byte-sent-later",
        lambda f: [b"zFILDES\0", (b"\0", f.eicar)],
        lambda f: f"fd[N]: {FOUND}\0".encode(),
    ),
    Case(
        "fildes-eicar-then-more",
        lambda f: [fildes(f.eicar_then_more)],
        lambda f: f"fd[N]: {FOUND}\0".encode(),
    ),
    # The test database matches EICAR at offset 0 only.
    Case(
        "fildes-eicar-not-at-start",
        lambda f: [fildes(f.eicar_not_at_start)],
        lambda f: b"fd[N]: OK\0",
    ),
    Case("fildes-clean", lambda f: [fildes(f.clean)], lambda f: b"fd[N]: OK\0"),
    Case("fildes-empty", lambda f: [fildes(f.empty)], lambda f: b"fd[N]: OK\0"),
    Case(
        "fildes-directory",
        lambda f: [fildes(f.clean_dir)],
        lambda f: b"fd[N]: Not a regular file ERROR\0",
    ),
    Case(
        "fildes-without-descriptor",
        lambda f: [b"zFILDES\0", b"\0"],
        lambda f: b"No file descriptor received. ERROR\0",
    ),
    Case(
        "instream-eicar-in-two-chunks",
        lambda f: [instream(eicar_bytes()[:30], eicar_bytes()[30:])],
        lambda f: f"stream: {FOUND}\0".encode(),
    ),
    Case("instream-clean", lambda f: [instream(b"hello\n")], lambda f: b"stream: OK\0"),
    Case("instream-empty", lambda f: [instream()], lambda f: b"stream: OK\0"),
    Case("scan-file", lambda f: [scan(f.eicar)], lambda f: f"{f.eicar}: {FOUND}\0".encode()),
    Case(
        "scan-missing",
        lambda f: [scan(f.missing)],
        lambda f: (
            f"{f.missing}: File path check failure: No such file or directory. ERROR\0".encode()
        ),
    ),
    Case(
        "scan-directory-with-eicar",
        lambda f: [scan(f.infected_dir)],
        lambda f: f"{f.infected_member}: {FOUND}\0".encode(),
    ),
    Case(
        "scan-clean-directory",
        lambda f: [scan(f.clean_dir)],
        lambda f: f"{f.clean_dir}: OK\0".encode(),
    ),
]


@pytest.mark.parametrize("case", SINGLE_COMMANDS, ids=lambda c: c.name)
def test_one_command_matches_real_clamd(
    case: Case, clamd: PrivateClamd, fake: FakeClamd, files: Files
) -> None:
    steps = case.steps(files)
    real = normalise(exchange(clamd.unix_address, steps))
    assert real == case.expected(files)
    assert normalise(exchange(fake.unix_address, steps)) == real


@dataclass(frozen=True)
class SessionCase:
    name: str
    steps: Callable[[Files], list[Step]]
    expected: Callable[[Files], list[bytes]]


SESSIONS = [
    SessionCase(
        "scans",
        # INSTREAM goes last: clamd 1.4.6 loses a descriptor sent right
        # behind an INSTREAM (fakeclamd's docstring has the details).
        lambda f: [
            IDSESSION,
            PING,
            fildes(f.eicar),
            fildes(f.clean),
            scan(f.missing),
            fildes(f.clean_dir),
            instream(b"hello\n"),
            END,
        ],
        lambda f: terms(
            "1: PONG",
            f"2: fd[N]: {FOUND}",
            "3: fd[N]: OK",
            f"4: {f.missing}: File path check failure: No such file or directory. ERROR",
            "5: fd[N]: Not a regular file ERROR",
            "6: stream: OK",
        ),
    ),
    SessionCase(
        "control-commands",
        # Without scans in flight: clamd writes these replies in pieces, and
        # a scan's reply can land in between (fakeclamd's docstring).
        lambda f: [IDSESSION, PING, b"zVERSION\0", b"zVERSIONCOMMANDS\0", b"zSTATS\0", END],
        lambda f: terms(
            "1: PONG",
            "2: ClamAV <version>",
            f"3: ClamAV <version>| COMMANDS: {COMMANDS}",
            "4: <stats>",
        ),
    ),
    SessionCase(
        "newline-framing",
        lambda f: [b"nIDSESSION\n", b"nPING\n", b"nVERSION\n", b"nEND\n"],
        lambda f: terms("1: PONG", "2: ClamAV <version>", term="\n"),
    ),
    SessionCase(
        "each-reply-uses-its-commands-terminator",
        lambda f: [IDSESSION, b"nPING\n", PING, END],
        lambda f: terms("1: PONG", term="\n") + terms("2: PONG"),
    ),
    SessionCase(
        "dummy-byte-sent-later",
        lambda f: [IDSESSION, b"zFILDES\0", (b"\0", f.eicar), PING, END],
        lambda f: terms(f"1: fd[N]: {FOUND}", "2: PONG"),
    ),
    SessionCase("end-at-once", lambda f: [IDSESSION, END], lambda f: []),
    SessionCase(
        "invalid-command-ends-it",
        lambda f: [IDSESSION, PING, b"zCONTSCAN /tmp\0"],
        lambda f: terms("1: PONG", "2: Command invalid inside IDSESSION. ERROR"),
    ),
    SessionCase(
        "unknown-command-ends-it",
        lambda f: [IDSESSION, PING, b"zHELLO\0"],
        lambda f: terms("1: PONG", "2: Command invalid inside IDSESSION. ERROR"),
    ),
    SessionCase(
        "nested-idsession-ends-it",
        lambda f: [IDSESSION, IDSESSION],
        lambda f: terms("1: Command invalid inside IDSESSION. ERROR"),
    ),
    SessionCase(
        "old-style-command-ends-it",
        # Its own packet: clamd only sees an unprefixed command at the start
        # of a read (get_cmd()), and waits for more input otherwise.
        lambda f: [IDSESSION, PING, Await(1), b"PING\n"],
        lambda f: terms(
            "1: PONG",
            "2: Only nCMDS\\n and zCMDS\\0 are accepted inside IDSESSION. ERROR",
            "2: Error processing command. ERROR",
        ),
    ),
    SessionCase(
        "descriptor-without-fildes-ends-it",
        lambda f: [IDSESSION, PING, (PING, f.clean)],
        lambda f: terms(
            "1: PONG", "2: PONG", "3: PROTOCOL ERROR: ancillary data sent without FILDES. ERROR"
        ),
    ),
    SessionCase(
        "fildes-without-descriptor-ends-it",
        lambda f: [IDSESSION, b"zFILDES\0", b"\0", PING, END],
        lambda f: terms("1: No file descriptor received. ERROR"),
    ),
]


@pytest.mark.parametrize("case", SESSIONS, ids=lambda c: c.name)
def test_session_matches_real_clamd(
    case: SessionCase, clamd: PrivateClamd, fake: FakeClamd, files: Files
) -> None:
    steps = case.steps(files)
    real = records(exchange(clamd.unix_address, steps))
    assert real == sorted(case.expected(files))
    assert records(exchange(fake.unix_address, steps)) == real


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([PING], b"PONG\0"),
        # No SCM_RIGHTS over TCP: the dummy byte arrives alone.
        ([b"zFILDES\0\0"], b"No file descriptor received. ERROR\0"),
        ([instream(eicar_bytes())], f"stream: {FOUND}\0".encode()),
    ],
    ids=["ping", "fildes", "instream"],
)
def test_tcp_matches_real_clamd(
    steps: list[Step], expected: bytes, clamd: PrivateClamd, fake: FakeClamd
) -> None:
    real = exchange(clamd.tcp_address, steps)
    assert real == expected
    assert exchange(fake.tcp_address, steps) == real


def test_stream_limit_matches_real_clamd(clamd_factory: ClamdFactory) -> None:
    real = clamd_factory(stream_max_length="1K", tcp=False)
    too_long = b"INSTREAM size limit exceeded. ERROR\0"
    cases: list[tuple[list[Step], list[bytes]]] = [
        ([instream(b"x" * 1024)], [b"stream: OK\0"]),
        ([instream(b"x" * 1025)], [too_long]),
        ([instream(b"x" * 600, b"x" * 600)], [too_long]),
        ([IDSESSION, PING, instream(b"x" * 1025)], [b"1: PONG\0", b"2: " + too_long]),
    ]
    with FakeClamd(Faults(stream_max_length=1024)) as fake:
        for steps, expected in cases:
            from_real = records(exchange(real.unix_address, steps))
            assert from_real == sorted(expected)
            assert records(exchange(fake.unix_address, steps)) == from_real


def test_read_timeout_matches_real_clamd(clamd_factory: ClamdFactory) -> None:
    # clamd counts in whole seconds; 1 is its shortest timeout.
    real = clamd_factory(read_timeout=1, command_read_timeout=1, tcp=False)
    timed_out = b"COMMAND READ TIMED OUT\n"
    cases: list[tuple[list[Step], bytes]] = [
        ([], timed_out),
        ([IDSESSION, PING], b"1: PONG\0" + timed_out),
        ([b"zINSTREAM\0", chunk(b"abc")], timed_out),
    ]
    with FakeClamd(Faults(read_timeout=1.0)) as fake, ThreadPoolExecutor() as pool:
        # All at once: each one only waits for its timeout.
        runs = [
            (pool.submit(exchange, address, steps), expected)
            for steps, expected in cases
            for address in (real.unix_address, fake.unix_address)
        ]
        assert [run.result() for run, _ in runs] == [expected for _, expected in runs]


# Fault knobs ---------------------------------------------------------------


def session(fake: FakeClamd, *steps: bytes | tuple[bytes, Path]) -> RawClient:
    """A RawClient in an IDSESSION that has sent ``steps``."""
    client = RawClient(fake.unix_address)
    try:
        for step in (IDSESSION, *steps):
            assert client.send(step), f"closed before {step!r} was sent"
    except BaseException:
        client.sock.close()
        raise
    return client


def ids(replies: list[bytes]) -> list[int]:
    return [int(reply.split(b":", 1)[0]) for reply in replies]


def test_faults_reject_settings_that_would_test_nothing() -> None:
    with pytest.raises(ValueError, match="batch"):
        Faults(order=ReplyOrder.REVERSED)
    with pytest.raises(ValueError, match="batch"):
        Faults(batch=0)
    with pytest.raises(ValueError, match="drop_after"):
        Faults(drop_after=-1)


def test_default_order_is_request_order() -> None:
    with FakeClamd() as fake, session(fake, *[PING] * 5, END) as client:
        assert ids(client.read_records(5)) == [1, 2, 3, 4, 5]
        assert client.read_until_closed() == b""


def test_reversed_releases_each_batch_newest_first() -> None:
    with (
        FakeClamd(Faults(order=ReplyOrder.REVERSED, batch=3)) as fake,
        session(fake, *[PING] * 8, END) as client,
    ):
        # Two full batches, then END releases the partial third.
        assert ids(client.read_records(8)) == [3, 2, 1, 6, 5, 4, 8, 7]
        assert client.read_until_closed() == b""


def test_batch_holds_replies_until_enough_are_pending() -> None:
    with (
        FakeClamd(Faults(order=ReplyOrder.REVERSED, batch=3)) as fake,
        session(fake, PING, PING) as client,
    ):
        fake.wait_until(lambda: fake.requests == 2)
        assert client.quiet_for(QUIET_SECONDS)
        assert client.send(PING)
        assert ids(client.read_records(3)) == [3, 2, 1]


def shuffled_ids(seed: int) -> list[int]:
    faults = Faults(order=ReplyOrder.SHUFFLED, batch=6, seed=seed)
    with FakeClamd(faults) as fake, session(fake, *[PING] * 6, END) as client:
        return ids(client.read_records(6))


def test_shuffled_is_a_seeded_permutation() -> None:
    first = shuffled_ids(seed=7)
    assert sorted(first) == [1, 2, 3, 4, 5, 6]
    assert first != sorted(first)
    assert shuffled_ids(seed=7) == first
    assert any(shuffled_ids(seed) != first for seed in (1, 2, 3))


def test_byte_at_a_time_writes_single_bytes() -> None:
    with FakeClamd(Faults(byte_at_a_time=True), tcp=True) as fake:
        assert exchange(fake.unix_address, [PING]) == b"PONG\0"
        assert exchange(fake.tcp_address, [b"nVERSION\n"]) == b"ClamAV 1.4.6\n"
        fake.wait_until(lambda: all(c.outcome for c in fake.connections()))
        unix, tcp = fake.connections()
        assert (unix.writes, unix.bytes_sent) == (5, 5)
        assert (tcp.writes, tcp.bytes_sent) == (13, 13)


def test_garbage_replaces_one_reply() -> None:
    with FakeClamd(Faults(garbage_at=2)) as fake, session(fake, PING, PING, PING, END) as client:
        assert client.read_until_closed() == b"1: PONG\0\xff\xfeblah\x003: PONG\0"


def test_garbage_can_be_a_reply_to_an_id_never_asked() -> None:
    faults = Faults(garbage_at=1, garbage=b"99: PONG\0")
    with FakeClamd(faults) as fake, session(fake, PING, PING, END) as client:
        assert client.read_until_closed() == b"99: PONG\x002: PONG\0"


def test_stall_stops_reading_and_replying_until_released() -> None:
    with FakeClamd(Faults(stall_after=2)) as fake, session(fake, *[PING] * 4) as client:
        assert ids(client.read_records(2)) == [1, 2]
        fake.wait_until(lambda: fake.stalled)
        assert client.quiet_for(QUIET_SECONDS)
        # Requests 3 and 4 sit unread in the socket.
        assert fake.requests == 2

        fake.release_stall()
        assert ids(client.read_records(2)) == [3, 4]
        assert not fake.stalled
        assert client.send(END)
        assert client.read_until_closed() == b""
        fake.wait_until(lambda: fake.connections()[0].outcome is Outcome.ENDED)


def test_stall_waits_for_a_complete_fildes(files: Files) -> None:
    with (
        FakeClamd(Faults(stall_after=1)) as fake,
        session(fake, b"zFILDES\0") as client,
    ):
        assert client.quiet_for(QUIET_SECONDS)
        assert not fake.stalled
        assert client.send((b"\0", files.eicar))
        assert normalise(client.read_records(1)[0]) == f"1: fd[N]: {FOUND}\0".encode()
        fake.wait_until(lambda: fake.stalled)


def test_stop_ends_a_stall() -> None:
    with FakeClamd(Faults(stall_after=1)) as fake, session(fake, PING, PING) as client:
        client.read_records(1)
        fake.wait_until(lambda: fake.stalled)
        fake.stop()
        assert client.read_until_closed() == b""
        assert fake.connections()[0].outcome is Outcome.STOPPED


def test_a_client_hanging_up_ends_a_stall() -> None:
    with FakeClamd(Faults(stall_after=1)) as fake:
        with session(fake, PING, PING) as client:
            client.read_records(1)
            fake.wait_until(lambda: fake.stalled)
        fake.wait_until(lambda: fake.connections()[0].outcome is Outcome.CLIENT_CLOSED)
        assert not fake.stalled


def test_close_mid_reply_leaves_a_record_open() -> None:
    with FakeClamd(Faults(close_mid_reply_after=1)) as fake:
        raw = exchange(fake.unix_address, [IDSESSION, PING, b"zVERSION\0", END])
        first, _, rest = raw.partition(b"\0")
        assert first == b"1: PONG"
        assert rest
        assert b"2: ClamAV 1.4.6".startswith(rest)
        assert fake.connections()[0].outcome is Outcome.CUT


def test_drop_closes_without_replying() -> None:
    with FakeClamd(Faults(drop_after=1)) as fake:
        assert exchange(fake.unix_address, [IDSESSION, PING, PING, PING]) == b"1: PONG\0"
        log = fake.connections()[0]
        assert log.outcome is Outcome.DROPPED
        # Request 2 was read and dropped; request 3 was never read.
        assert [c.serial for c in log.commands] == [None, 1, 2]


def test_fault_numbers_count_across_connections() -> None:
    with FakeClamd(Faults(drop_after=1)) as fake:
        assert exchange(fake.unix_address, [PING]) == b"PONG\0"
        assert exchange(fake.unix_address, [PING]) == b""
        # Each fault fires once.
        assert exchange(fake.unix_address, [PING]) == b"PONG\0"


def test_repeat_fires_the_fault_on_every_connection() -> None:
    with FakeClamd(Faults(drop_after=1, repeat=True)) as fake:
        for _ in range(3):
            assert exchange(fake.unix_address, [IDSESSION, PING, PING, PING]) == b"1: PONG\0"
        assert [c.outcome for c in fake.connections()] == [Outcome.DROPPED] * 3
        # the log keeps the FakeClamd-wide numbers
        assert [c.serial for c in fake.connections()[2].commands] == [None, 5, 6]


def test_unbatched_replies_skip_the_batch() -> None:
    faults = Faults(order=ReplyOrder.REVERSED, batch=3, unbatched=frozenset({"VERSION"}))
    with (
        FakeClamd(faults) as fake,
        session(fake, b"zVERSION\0", PING, PING, b"zVERSION\0") as client,
    ):
        assert client.read_records(2) == [b"1: ClamAV 1.4.6\0", b"4: ClamAV 1.4.6\0"]
        assert client.quiet_for(QUIET_SECONDS)  # the two PONGs wait for a third
        assert client.send(PING)
        assert ids(client.read_records(3)) == [5, 3, 2]


def test_scans_pending_counts_what_is_read_and_not_answered(files: Files) -> None:
    with FakeClamd(Faults(scan_delay=0.3)) as fake:
        with session(fake, fildes(files.eicar), fildes(files.clean), PING) as client:
            assert client.read_records(1) == [b"3: PONG\0"]
            assert fake.scans_pending == 2
            client.read_records(2)
            fake.wait_until(lambda: fake.scans_pending == 0, DEADLINE)
        with session(fake, fildes(files.clean)):
            fake.wait_until(lambda: fake.scans_pending == 1, DEADLINE)
        # the client hung up before the reply: no longer pending
        fake.wait_until(lambda: fake.scans_pending == 0, DEADLINE)
        assert fake.max_scans_pending == 2


@pytest.mark.parametrize("term", [b"\0", b"\n"])
def test_command_unavailable_outside_a_session(term: bytes) -> None:
    prefix = b"z" if term == b"\0" else b"n"
    with FakeClamd(Faults(unavailable=frozenset({"VERSION"}))) as fake:
        assert exchange(fake.unix_address, [prefix + b"VERSION" + term]) == (
            b"COMMAND UNAVAILABLE" + term
        )
        assert exchange(fake.unix_address, [prefix + b"PING" + term]) == b"PONG" + term


def test_command_unavailable_ends_a_session() -> None:
    with FakeClamd(Faults(unavailable=frozenset({"VERSION"}))) as fake:
        steps: list[Step] = [IDSESSION, PING, b"zVERSION\0", PING, END]
        # clamd 1.5 (session.c): conn_reply_single() adds the id, and the
        # command returns 1, which ends the session.
        assert exchange(fake.unix_address, steps) == b"1: PONG\x002: COMMAND UNAVAILABLE\0"
        log = fake.connections()[0]
        assert [c.name for c in log.commands] == ["IDSESSION", "PING", "VERSION"]
        assert log.outcome is Outcome.REFUSED


def test_without_fildes_support(files: Files) -> None:
    with FakeClamd(Faults(fildes=False)) as fake:
        commands = exchange(fake.unix_address, [b"zVERSIONCOMMANDS\0"])
        assert commands == f"ClamAV 1.4.6| COMMANDS: {COMMANDS}\0".replace(" FILDES", "").encode()
        assert exchange(fake.unix_address, [fildes(files.eicar)]) == b"UNKNOWN COMMAND\0"
        with session(fake, PING, fildes(files.eicar)) as client:
            assert client.read_until_closed() == (
                b"1: PONG\x002: Command invalid inside IDSESSION. ERROR\0"
            )


def test_stream_limit_counts_every_chunk() -> None:
    with FakeClamd(Faults(stream_max_length=10)) as fake:
        assert exchange(fake.unix_address, [instream(b"x" * 10)]) == b"stream: OK\0"
        assert exchange(fake.unix_address, [instream(b"x" * 6, b"x" * 4)]) == b"stream: OK\0"
        too_long = b"INSTREAM size limit exceeded. ERROR\0"
        assert exchange(fake.unix_address, [instream(b"x" * 6, b"x" * 5)]) == too_long
        # Refused on the length alone, before any of the chunk's data.
        assert exchange(fake.unix_address, [b"zINSTREAM\0" + struct.pack(">I", 11)]) == too_long


def test_read_timeout_ends_a_session_that_only_waits() -> None:
    with FakeClamd(Faults(read_timeout=0.3)) as fake:
        started = time.monotonic()
        with session(fake, PING) as client:
            assert client.read_until_closed() == b"1: PONG\0COMMAND READ TIMED OUT\n"
        assert time.monotonic() - started >= 0.3
        assert fake.connections()[0].outcome is Outcome.READ_TIMEOUT


def test_read_timeout_drops_scans_still_running(files: Files) -> None:
    with (
        FakeClamd(Faults(read_timeout=0.3, scan_delay=DEADLINE)) as fake,
        session(fake, fildes(files.eicar)) as client,
    ):
        assert client.read_until_closed() == b"COMMAND READ TIMED OUT\n"


def test_pings_keep_a_session_alive() -> None:
    timeout = 0.3
    with FakeClamd(Faults(read_timeout=timeout)) as fake, session(fake) as client:
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < 3 * timeout:
            assert client.send(PING)
            sent += 1
            assert ids(client.read_records(1)) == [sent]
            time.sleep(timeout / 3)  # pacing the client, not waiting for the fake
        assert client.send(END)
        assert client.read_until_closed() == b""


def test_scan_delay_keeps_requests_in_flight(files: Files) -> None:
    delay = 0.3
    with FakeClamd(Faults(scan_delay=delay)) as fake:
        started = time.monotonic()
        with session(fake, fildes(files.eicar), PING, END) as client:
            pong, verdict = client.read_records(2)
            assert pong == b"2: PONG\0"
            assert normalise(verdict) == f"1: fd[N]: {FOUND}\0".encode()
            assert time.monotonic() - started >= delay
            assert client.read_until_closed() == b""


def test_send_timeout_drops_a_client_that_does_not_read() -> None:
    # Each reply is its own socket buffer entry; a few thousand fill it.
    with FakeClamd(Faults(send_timeout=0.2)) as fake, RawClient(fake.unix_address) as client:
        client.send(IDSESSION + PING * 5000)
        fake.wait_until(
            lambda: any(c.outcome is Outcome.SEND_TIMEOUT for c in fake.connections()),
            timeout=DEADLINE,
        )


def test_client_closing_before_end_drops_pending_replies(files: Files) -> None:
    with FakeClamd(Faults(scan_delay=DEADLINE)) as fake:
        with session(fake, fildes(files.eicar)) as client:
            fake.wait_until(lambda: fake.requests == 1)
            client.sock.shutdown(socket.SHUT_WR)
            assert client.read_until_closed() == b""
        assert fake.connections()[0].outcome is Outcome.CLIENT_CLOSED


# Recording, threads, descriptors -------------------------------------------


def test_records_every_command(files: Files) -> None:
    with FakeClamd() as fake:
        steps: list[Step] = [IDSESSION, PING, fildes(files.eicar), instream(b"abc"), END]
        assert len(records(exchange(fake.unix_address, steps))) == 3
        assert exchange(fake.unix_address, [PING]) == b"PONG\0"
        first, second = fake.connections()
        assert first.commands == (
            Received("IDSESSION", None, None, None),
            Received("PING", None, 1, 1),
            Received("FILDES", None, 2, 2),
            Received("INSTREAM", None, 3, 3),
            Received("END", None, None, None),
        )
        assert (first.number, first.transport, first.descriptors) == (1, "unix", 1)
        assert first.outcome is Outcome.ENDED
        assert second.commands == (Received("PING", None, None, 4),)
        fake.wait_until(lambda: fake.connections()[1].outcome is Outcome.ANSWERED)
        assert fake.command_counts() == {
            "IDSESSION": 1,
            "PING": 2,
            "FILDES": 1,
            "INSTREAM": 1,
            "END": 1,
        }
        assert fake.requests == 4


def test_many_clients_at_once(files: Files) -> None:
    clients, per_client = 8, 10
    results: list[list[bytes]] = []
    lock = threading.Lock()

    def one_client(address: str) -> None:
        steps: list[Step] = [IDSESSION, *[fildes(files.eicar)] * per_client, END]
        replies = records(exchange(address, steps))
        with lock:
            results.append(replies)

    with FakeClamd(Faults(scan_delay=0.01)) as fake:
        threads = [
            threading.Thread(target=one_client, args=(fake.unix_address,)) for _ in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
        assert fake.requests == clients * per_client
    expected = sorted(f"{i}: fd[N]: {FOUND}\0".encode() for i in range(1, per_client + 1))
    assert results == [expected] * clients


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_leaves_no_descriptors_open(files: Files) -> None:
    before = open_descriptors()
    faults = Faults(drop_after=6, stall_after=9)
    with FakeClamd(faults, tcp=True) as fake:
        exchange(fake.unix_address, [IDSESSION, fildes(files.eicar), fildes(files.clean_dir), END])
        exchange(fake.unix_address, [IDSESSION, PING, (PING, files.clean)])  # unclaimed fd
        exchange(fake.tcp_address, [b"zFILDES\0\0"])
        exchange(fake.unix_address, [IDSESSION, fildes(files.eicar), fildes(files.eicar)])  # drop
        stalled = session(fake, PING, PING, fildes(files.eicar))
        fake.wait_until(lambda: fake.stalled)
    stalled.sock.close()
    assert open_descriptors() == before
