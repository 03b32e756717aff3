"""The clamd engine against a fake clamd, for the faults a real one cannot produce on demand.

Each test checks the verdicts against what the files hold (EICAR or not)
and, above all, that a transport failure is never a verdict: a request lost
with its session is sent again and gets its true verdict, or ends in a
ScanError after ``max_attempts``; it is never Clean and never Infected.

Request numbers in `Faults` count every command that gets a reply, the
handshake included: with ``sessions=1`` a session's VERSIONCOMMANDS and STATS
are requests 1 and 2 and its scans start at 3.
"""

from __future__ import annotations

import itertools
import logging
import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from clamwatch.clamd.address import parse_address
from clamwatch.clamd.engine import ClamdUnavailableError, Engine
from clamwatch.clamd.job import ScanJob, ScanOutcome, Transport, TransportChoice
from clamwatch.clamd.settings import EngineSettings
from clamwatch.files import OpenedFile, open_for_scan
from clamwatch.testsig import EICAR_SIGNATURE
from clamwatch.verdict import Clean, Infected, NotScanned, NotScannedReason, ScanError
from fakeclamd import FakeClamd, Faults, Outcome, ReplyOrder
from helpers import make_tree, scan_files, wait_for

# Upper bound for every wait; each ends as soon as its condition holds, so a
# passing test never sits this long.
DEADLINE = 10.0

# Short enough that no test waits long for a fault, long enough for a busy
# CI runner: unless a test is about them, no request and no handshake should
# come near these.
FAST = {
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
    "connect_timeout": 3.0,
    "request_timeout": 5.0,
    # The faults below are placed by request number; the EICAR check, one
    # request more per session, has tests of its own (test_engine_real.py).
    "eicar_check": False,
}

HANDSHAKE = frozenset({"VERSIONCOMMANDS", "STATS"})

# A write that fails when clamd has just closed (EPIPE, ECONNRESET): which
# one the engine meets first depends on timing.
LOST = ("Broken pipe", "Connection reset by peer")


# A fault must never kill the engine's loop thread: an exception there is
# an error even when every verdict was delivered before it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


# Every test runs twice: with the engine on its own loop thread (the daemon)
# and inline, turned by the test's thread (`clamwatch scan`). Tests that
# submit from other threads while the loop runs are for the first only.
_INLINE = False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    thread_only = metafunc.definition.get_closest_marker("thread_only") is not None
    modes = ["thread"] if thread_only else ["thread", "inline"]
    metafunc.parametrize("engine_mode", modes, indirect=True)


@pytest.fixture(autouse=True)
def engine_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    global _INLINE  # noqa: PLW0603 - read by running(), which every test calls
    _INLINE = request.param == "inline"
    try:
        yield request.param
    finally:
        _INLINE = False


@contextmanager
def running(address: str, **settings: Any) -> Iterator[Engine]:
    engine = Engine(parse_address(address), EngineSettings(**{**FAST, **settings}), inline=_INLINE)
    if not engine.inline:
        engine.start()
    try:
        yield engine
        assert engine.alive, "the engine's loop thread died"
    finally:
        engine.close()


def tree(root: Path, count: int, eicar: bytes, *, every: int = 3) -> tuple[list[Path], set[Path]]:
    """``count`` small files, every ``every``-th infected: (all paths, the infected)."""
    infected = make_tree(root, count, eicar, every=every)
    return sorted(root.rglob("*.bin")), infected


def assert_true_verdicts(outcomes: dict[Path, ScanOutcome], infected: set[Path]) -> None:
    wrong = {
        path: outcome.verdict
        for path, outcome in outcomes.items()
        if outcome.verdict != (Infected(EICAR_SIGNATURE) if path in infected else Clean())
    }
    assert not wrong, f"{len(wrong)} of {len(outcomes)} wrong: {wrong}"


def assert_resent(engine: Engine, outcomes: dict[Path, ScanOutcome]) -> None:
    assert engine.stats.requests_resent > 0, "no request was handed back by a lost session"
    assert any(o.attempts >= 2 for o in outcomes.values()), "no request was sent again"


# Reply order and framing -------------------------------------------------------


@pytest.mark.parametrize("order", [ReplyOrder.REVERSED, ReplyOrder.SHUFFLED])
@pytest.mark.parametrize("transport", [TransportChoice.FILDES, TransportChoice.INSTREAM])
def test_replies_out_of_order_each_file_gets_its_own_verdict(
    tmp_path: Path, eicar: bytes, order: ReplyOrder, transport: TransportChoice
) -> None:
    # One session with exactly `batch` requests in flight, so every batch
    # fills; the handshake is answered at once (the engine sends no scan
    # before it has its answers).
    faults = Faults(order=order, batch=8, seed=5, unbatched=HANDSHAKE)
    paths, infected = tree(tmp_path, 32, eicar)
    with (
        FakeClamd(faults) as fake,
        running(fake.unix_address, transport=transport, sessions=1, max_in_flight=8) as engine,
    ):
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        stats = engine.stats
    assert_true_verdicts(outcomes, infected)
    assert {o.transport for o in outcomes.values()} == {Transport(transport.value)}
    assert {o.attempts for o in outcomes.values()} == {1}
    assert stats.sessions_opened == 1 and stats.requests_resent == 0


@pytest.mark.parametrize("use_tcp", [False, True], ids=["unix-fildes", "tcp-instream"])
def test_replies_one_byte_at_a_time(tmp_path: Path, eicar: bytes, use_tcp: bool) -> None:
    paths, infected = tree(tmp_path, 12, eicar)
    with FakeClamd(Faults(byte_at_a_time=True), tcp=use_tcp) as fake:
        address = fake.tcp_address if use_tcp else fake.unix_address
        with running(address, sessions=2) as engine:
            outcomes = scan_files(engine, paths, timeout=DEADLINE)
            stats = engine.stats
        connections = fake.connections()
    assert_true_verdicts(outcomes, infected)
    assert stats.requests_resent == 0
    assert sum(c.bytes_sent for c in connections) > 100
    assert all(c.writes == c.bytes_sent for c in connections)


# A session lost with requests in flight ------------------------------------------------


@pytest.mark.parametrize(
    "garbage", [b"\xff\xfeblah\0", b"999: stream: OK\0"], ids=["invalid-bytes", "id-never-asked"]
)
def test_garbage_reply_drops_the_session_and_resends(
    tmp_path: Path, eicar: bytes, garbage: bytes
) -> None:
    # Request 6 is the fourth scan; its reply is replaced. The id-never-asked
    # garbage says "OK": taking it for anyone's verdict would be wrong.
    paths, infected = tree(tmp_path, 16, eicar, every=2)
    with (
        FakeClamd(Faults(garbage_at=6, garbage=garbage)) as fake,
        running(fake.unix_address, sessions=1) as engine,
    ):
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        assert_resent(engine, outcomes)
        assert engine.stats.sessions_lost == 1 and engine.stats.sessions_opened == 2
        connections = fake.connections()
    assert_true_verdicts(outcomes, infected)
    # we hung up on it, with replies it had not sent yet (a reset) or not
    assert connections[0].outcome in (Outcome.CLIENT_CLOSED, Outcome.RESET)


def test_garbage_during_the_handshake_is_survived(tmp_path: Path, eicar: bytes) -> None:
    paths, infected = tree(tmp_path, 6, eicar)
    with (
        FakeClamd(Faults(garbage_at=2)) as fake,  # the first STATS reply
        running(fake.unix_address, sessions=1) as engine,
    ):
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        stats = engine.stats
        connections = fake.connections()
    assert_true_verdicts(outcomes, infected)
    assert {o.attempts for o in outcomes.values()} == {1}
    assert stats.sessions_opened == 1 and len(connections) == 2


def test_stalled_session_is_dropped_after_request_timeout(tmp_path: Path, eicar: bytes) -> None:
    # Request 5 is the third scan; after it the connection neither reads nor
    # writes, with the socket open. The next connection is healthy.
    paths, infected = tree(tmp_path, 16, eicar, every=2)
    started = time.monotonic()
    with (
        FakeClamd(Faults(stall_after=5)) as fake,
        running(fake.unix_address, sessions=1, request_timeout=1.0) as engine,
    ):
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        elapsed = time.monotonic() - started
        assert_resent(engine, outcomes)
        assert engine.stats.sessions_lost == 1
        # the stalled connection notices that we hung up
        fake.wait_until(lambda: fake.connections()[0].outcome is not None, DEADLINE)
        assert fake.connections()[0].outcome in (Outcome.CLIENT_CLOSED, Outcome.RESET)
    assert_true_verdicts(outcomes, infected)
    assert 1.0 <= elapsed < 1.0 + 4.0, f"{elapsed:.1f} s for a 1 s request timeout"


@pytest.mark.parametrize(
    ("faults", "outcome"),
    [
        (Faults(close_mid_reply_after=4), Outcome.CUT),
        (Faults(drop_after=4), Outcome.DROPPED),
    ],
    ids=["close-mid-reply", "drop"],
)
def test_connection_lost_mid_burst_resends(
    tmp_path: Path, eicar: bytes, faults: Faults, outcome: Outcome
) -> None:
    paths, infected = tree(tmp_path, 16, eicar, every=2)
    with FakeClamd(faults) as fake, running(fake.unix_address, sessions=1) as engine:
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        assert_resent(engine, outcomes)
        assert engine.stats.sessions_lost == 1
        connections = fake.connections()
    assert_true_verdicts(outcomes, infected)
    assert connections[0].outcome is outcome
    assert len(connections) == 2


@pytest.mark.parametrize(
    ("faults", "reasons"),
    [
        (Faults(drop_after=2, repeat=True), ("clamd closed the connection", *LOST)),
        (
            Faults(close_mid_reply_after=2, repeat=True),
            ("connection closed inside a reply", *LOST),
        ),
        (Faults(garbage_at=3, repeat=True), ("reply without a request id",)),
        (Faults(stall_after=2, repeat=True), ("no reply within 0.3 s",)),
    ],
    ids=["drop", "close-mid-reply", "garbage", "stall"],
)
def test_fault_on_every_connection_ends_in_scan_error(
    tmp_path: Path, eicar: bytes, faults: Faults, reasons: tuple[str, ...]
) -> None:
    # Every connection fails at its first scan (its request 3): no verdict
    # can be had, and none may be made up.
    paths, _ = tree(tmp_path, 2, eicar, every=2)
    with (
        FakeClamd(faults) as fake,
        running(fake.unix_address, sessions=1, max_attempts=3, request_timeout=0.3) as engine,
    ):
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        stats = engine.stats
        assert len(fake.connections()) >= 3
    for outcome in outcomes.values():
        assert isinstance(outcome.verdict, ScanError), outcome
        assert outcome.verdict.message.startswith("clamd connection lost 3 times while scanning")
        assert any(reason in outcome.verdict.message for reason in reasons), outcome
        assert outcome.attempts == 3
    assert stats.requests_sent == stats.requests_resent == 6
    assert stats.sessions_lost >= 3


# What clamd refuses ---------------------------------------------------------------------


def test_a_rotated_session_is_ended_and_drained_before_it_closes(
    tmp_path: Path, eicar: bytes
) -> None:
    """Sessions end after max_requests_per_session (ids must not grow without bound):
    each with END once its last request is sent, its replies all read, none lost."""
    paths, infected = tree(tmp_path, 25, eicar)
    with (
        FakeClamd() as fake,
        running(fake.unix_address, sessions=1, max_requests_per_session=10) as engine,
    ):
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        stats = engine.stats
        # the last session may still be open; the first two were rotated out
        # (the fake may see a later session's END before theirs)
        wait_for(
            lambda: [c.outcome for c in fake.connections()[:2]] == [Outcome.ENDED] * 2,
            DEADLINE,
            "the first two sessions ended",
        )
        connections = fake.connections()
    assert_true_verdicts(outcomes, infected)
    assert {o.attempts for o in outcomes.values()} == {1}
    assert stats.requests_resent == 0 and stats.sessions_lost == 0
    scans = [sum(c.name == "FILDES" for c in conn.commands) for conn in connections]
    assert sum(scans) == 25
    for conn in connections[:2]:
        # ten requests, its handshake (VERSIONCOMMANDS, STATS) included
        assert sum(c.serial is not None for c in conn.commands) == 10
        assert conn.outcome is Outcome.ENDED
        assert conn.commands[-1].name == "END"


def test_closing_the_engine_ends_its_session_with_end(tmp_path: Path, eicar: bytes) -> None:
    paths, infected = tree(tmp_path, 6, eicar)
    with FakeClamd() as fake:
        with running(fake.unix_address, sessions=1) as engine:
            outcomes = scan_files(engine, paths, timeout=DEADLINE)
        wait_for(lambda: fake.connections()[-1].outcome is not None, DEADLINE, "the close")
        (connection,) = fake.connections()
    assert_true_verdicts(outcomes, infected)
    assert connection.outcome is Outcome.ENDED  # not CLIENT_CLOSED: END, then the drain
    assert connection.commands[-1].name == "END"


@pytest.mark.parametrize("command", ["STATS", "VERSIONCOMMANDS"])
def test_handshake_command_unavailable_is_not_asked_again(
    tmp_path: Path, eicar: bytes, command: str
) -> None:
    # COMMAND UNAVAILABLE ends the first session (clamd 1.5); later ones go
    # straight to scanning. max_requests_per_session makes several of them.
    paths, infected = tree(tmp_path, 12, eicar)
    with (
        FakeClamd(Faults(unavailable=frozenset({command}))) as fake,
        running(fake.unix_address, sessions=1, max_requests_per_session=3) as engine,
    ):
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        caps = engine.capabilities
        connections = fake.connections()
        counts = fake.command_counts()
    assert_true_verdicts(outcomes, infected)
    # FILDES is not known to be there: auto falls back to INSTREAM
    assert {o.transport for o in outcomes.values()} == {Transport.INSTREAM}
    assert {o.attempts for o in outcomes.values()} == {1}
    assert caps is not None and caps.commands == frozenset()
    assert counts[command] == 1
    assert connections[0].outcome is Outcome.REFUSED
    later = connections[1:]
    assert len(later) >= 2
    assert all(not HANDSHAKE & {c.name for c in conn.commands} for conn in later)


def test_no_fildes_on_a_unix_socket_auto_uses_instream(tmp_path: Path, eicar: bytes) -> None:
    paths, infected = tree(tmp_path, 9, eicar)
    with FakeClamd(Faults(fildes=False)) as fake, running(fake.unix_address) as engine:
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        caps = engine.capabilities
        counts = fake.command_counts()
    assert_true_verdicts(outcomes, infected)
    assert caps is not None and "FILDES" not in caps.commands and "INSTREAM" in caps.commands
    assert {o.transport for o in outcomes.values()} == {Transport.INSTREAM}
    assert counts["FILDES"] == 0


def test_no_fildes_forced_fildes_is_unsupported_never_clean(tmp_path: Path, eicar: bytes) -> None:
    paths, _ = tree(tmp_path, 4, eicar, every=2)
    with (
        FakeClamd(Faults(fildes=False)) as fake,
        running(fake.unix_address, transport=TransportChoice.FILDES) as engine,
    ):
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        counts = fake.command_counts()
    for outcome in outcomes.values():
        verdict = outcome.verdict
        assert isinstance(verdict, NotScanned), outcome
        assert verdict.reason is NotScannedReason.UNSUPPORTED
        assert outcome.transport is None  # decided without asking clamd
    assert counts["FILDES"] == 0


def test_no_fildes_and_no_versioncommands_forced_fildes_is_never_a_verdict(
    tmp_path: Path, eicar: bytes
) -> None:
    """The engine cannot know FILDES is missing, sends it, and clamd refuses it."""
    paths, _ = tree(tmp_path, 4, eicar, every=2)
    faults = Faults(fildes=False, unavailable=frozenset({"VERSIONCOMMANDS"}))
    with (
        FakeClamd(faults) as fake,
        running(fake.unix_address, transport=TransportChoice.FILDES, sessions=1) as engine,
    ):
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        counts = fake.command_counts()
    assert counts["FILDES"] >= 1
    for outcome in outcomes.values():
        verdict = outcome.verdict
        assert not isinstance(verdict, (Clean, Infected)), outcome
        if isinstance(verdict, NotScanned):
            assert verdict.reason is NotScannedReason.UNSUPPORTED, outcome


@pytest.mark.parametrize("use_tcp", [False, True], ids=["unix-instream", "tcp-auto"])
def test_stream_over_clamds_limit_is_too_large_never_clean(
    tmp_path: Path, eicar: bytes, use_tcp: bool
) -> None:
    """StreamMaxLength is not known to the engine (no max_stream_size): clamd says so."""
    limit = 1000
    files = {
        "over-infected": eicar + b"y" * limit,  # clamdscan --stream would call this OK
        "over-clean": b"z" * (limit + 1),
        "exact": b"x" * limit,
        "small-infected": eicar,
        "small-clean": b"clean",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [tmp_path / name for name in files]
    with FakeClamd(Faults(stream_max_length=limit), tcp=use_tcp) as fake:
        address = fake.tcp_address if use_tcp else fake.unix_address
        transport = TransportChoice.AUTO if use_tcp else TransportChoice.INSTREAM
        with running(address, transport=transport, sessions=1) as engine:
            outcomes = scan_files(engine, paths, timeout=DEADLINE)
    verdicts = {path.name: outcome.verdict for path, outcome in outcomes.items()}
    for name in ("over-infected", "over-clean"):
        verdict = verdicts[name]
        assert isinstance(verdict, NotScanned), (name, verdict)
        assert verdict.reason is NotScannedReason.TOO_LARGE
        assert outcomes[tmp_path / name].transport is Transport.INSTREAM  # clamd said so
    assert verdicts["exact"] == Clean()
    assert verdicts["small-infected"] == Infected(EICAR_SIGNATURE)
    assert verdicts["small-clean"] == Clean()


# Time ---------------------------------------------------------------------------------------


@pytest.mark.thread_only  # the engine must keep its session alive while nobody turns it
def test_read_timeout_shorter_than_keepalive_is_learnt(
    tmp_path: Path, eicar: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # clamd's ReadTimeout 1 s, our keepalive 1.2 s: the first idle session is
    # ended; the engine halves its keepalive to 0.6 s and the next one lives.
    (tmp_path / "good").write_bytes(b"good")
    (tmp_path / "bad").write_bytes(eicar)
    caplog.set_level(logging.WARNING, logger="clamwatch.clamd.engine")
    with (
        FakeClamd(Faults(read_timeout=1.0)) as fake,
        running(fake.unix_address, sessions=1, keepalive=1.2) as engine,
    ):
        good = scan_files(engine, [tmp_path / "good"], timeout=DEADLINE)[tmp_path / "good"]

        def second_lived_on() -> bool:
            conns = fake.connections()
            # three PINGs 0.6 s apart: alive well past clamd's ReadTimeout
            return len(conns) >= 2 and [c.name for c in conns[1].commands].count("PING") >= 3

        fake.wait_until(second_lived_on, DEADLINE)
        bad = scan_files(engine, [tmp_path / "bad"], timeout=DEADLINE)[tmp_path / "bad"]
        connections = fake.connections()
        stats = engine.stats
    assert good.verdict == Clean() and bad.verdict == Infected(EICAR_SIGNATURE)
    assert bad.attempts == 1 and stats.requests_resent == 0
    assert connections[0].outcome is Outcome.READ_TIMEOUT
    assert len(connections) == 2, "the second session should not have timed out"
    assert any("keepalive now every 0.6 s" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("max_in_flight", "max_queue", "transport", "cap"),
    [
        (3, None, TransportChoice.AUTO, 3),
        (None, None, TransportChoice.AUTO, 64),
        (None, None, TransportChoice.INSTREAM, 96),
        (None, 40, TransportChoice.INSTREAM, 36),
        (None, 20, TransportChoice.AUTO, 16),
        (None, 5, TransportChoice.AUTO, 4),  # clamd makes it 8: twice its threads
    ],
    ids=[
        "set",
        "from-stats",
        "from-stats-instream",
        "max-queue-instream",
        "max-queue",
        "max-queue-raised-by-clamd",
    ],
)
def test_in_flight_cap_is_what_clamd_sees(
    tmp_path: Path,
    eicar: bytes,
    *,
    max_in_flight: int | None,
    max_queue: int | None,
    transport: TransportChoice,
    cap: int,
) -> None:
    """clamd has no error for a full queue: the engine must bound what it sends.

    Measured by the fake: scan requests read and not yet answered, over
    both sessions at once. None: sixteen times the "max 4" threads STATS
    reports (FILDES here), or 24 times over INSTREAM, and at least those
    4 threads below clamd's MaxQueue (100 unless clamd.conf says).
    """
    paths, infected = tree(tmp_path, 160, eicar)
    with (
        FakeClamd(Faults(scan_delay=0.05)) as fake,
        running(
            fake.unix_address,
            sessions=2,
            max_in_flight=max_in_flight,
            clamd_max_queue=max_queue,
            transport=transport,
        ) as engine,
    ):
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
        wait_for(lambda: fake.scans_pending == 0, DEADLINE, "the fake to answer everything")
        assert engine.in_flight_limit == cap
        assert fake.max_scans_pending == cap
    assert_true_verdicts(outcomes, infected)


@pytest.mark.parametrize("use_tcp", [False, True], ids=["unix-instream", "tcp-auto"])
def test_stream_far_over_clamds_limit_is_too_large_at_once(
    tmp_path: Path, eicar: bytes, use_tcp: bool
) -> None:
    """clamd refuses a stream as soon as a chunk header passes StreamMaxLength and
    closes, while we are still writing the rest: its answer must still be read.
    Otherwise the request looks lost, the whole file is streamed again, and
    after max_attempts it is a ScanError instead of "too large"."""
    big = tmp_path / "big"
    big.write_bytes(eicar + b"y" * (2 << 20))
    with FakeClamd(Faults(stream_max_length=100_000), tcp=use_tcp) as fake:
        address = fake.tcp_address if use_tcp else fake.unix_address
        transport = TransportChoice.AUTO if use_tcp else TransportChoice.INSTREAM
        with running(address, transport=transport, sessions=1) as engine:
            outcome = scan_files(engine, [big], timeout=DEADLINE)[big]
    verdict = outcome.verdict
    assert isinstance(verdict, NotScanned), outcome
    assert verdict.reason is NotScannedReason.TOO_LARGE
    assert outcome.attempts == 1, "clamd's answer was lost and the file streamed again"


@pytest.mark.thread_only
def test_every_submit_wakes_the_engine(tmp_path: Path) -> None:
    """Submits (one job or a batch) from several threads race the loop as it drains
    its wake-up socket; none may leave a later submit waiting for an unrelated wake-up
    (a reply, or the next keepalive: 30 s here)."""
    path = tmp_path / "f"
    path.write_bytes(b"clean")
    done: queue.SimpleQueue[ScanOutcome] = queue.SimpleQueue()

    def on_done(job: ScanJob, outcome: ScanOutcome) -> None:
        job.file.close()
        done.put(outcome)

    def job() -> ScanJob:
        opened = open_for_scan(str(path))
        assert isinstance(opened, OpenedFile)
        return ScanJob(opened, on_done)

    def submit_each(engine: Engine, count: int) -> None:
        for _ in range(count):
            engine.submit(job())

    def submit_batches(engine: Engine, count: int) -> None:
        sizes = [1, 0, 7, 2, 15]  # an empty batch changes nothing
        for size in [*sizes, count - sum(sizes)]:
            engine.submit_many([job() for _ in range(size)])

    with FakeClamd() as fake, running(fake.unix_address, sessions=1, keepalive=30.0) as engine:
        engine.wait_ready(DEADLINE)
        for _ in range(30):
            threads = [
                threading.Thread(target=submit, args=(engine, 50))
                for submit in (submit_each, submit_batches, submit_each, submit_batches)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for _ in range(200):
                assert done.get(timeout=DEADLINE).verdict == Clean()
            # The loop is idle now: only this submit's own wake-up can start it.
            outcome = scan_files(engine, [path], timeout=2.0)[path]
            assert outcome.verdict == Clean()


def test_close_leaves_a_stalled_clamd_behind_in_time(tmp_path: Path, eicar: bytes) -> None:
    """SIGTERM must not wait for a clamd that stopped answering: close(timeout) returns
    the requests in flight as unfinished (the daemon saves them for its next start)."""
    paths, _ = tree(tmp_path, 6, eicar)
    with FakeClamd(Faults(stall_after=2)) as fake:
        engine = Engine(parse_address(fake.unix_address), EngineSettings(sessions=1))
        engine.start()
        done: list[ScanOutcome] = []
        opened = [open_for_scan(str(p)) for p in paths]
        for item in opened:
            assert isinstance(item, OpenedFile)
            engine.submit(ScanJob(item, lambda job, outcome: done.append(outcome)))
        wait_for(lambda: fake.stalled, DEADLINE, "the fake to stall")
        started = time.monotonic()
        unfinished = engine.close(timeout=0.5)
        elapsed = time.monotonic() - started
        fake.release_stall()
    for item in opened:
        assert isinstance(item, OpenedFile)
        item.close()
    assert elapsed < 3.0, f"close() took {elapsed:.1f} s"
    assert len(unfinished) + len(done) == 6
    assert unfinished, "the stalled requests come back unfinished"
    assert all(isinstance(o.verdict, Clean | Infected) for o in done)  # answered before


@pytest.mark.thread_only  # the engine's own loop reconnects while the test watches
def test_reconnects_back_off_doubling_with_jitter(tmp_path: Path) -> None:
    """A clamd that closes every connection at once: each pause before the next
    connect doubles up to backoff_max, and is spread by 0.8-1.2x (so that clients
    cut off together do not all come back at the same moment)."""
    path = tmp_path / "sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    listener.settimeout(DEADLINE)
    (tmp_path / "f").write_bytes(b"clean")
    opened = open_for_scan(str(tmp_path / "f"))
    assert isinstance(opened, OpenedFile)
    accepted: list[float] = []
    try:
        with running(f"unix://{path}", sessions=1, backoff_initial=0.05, backoff_max=0.4) as engine:
            engine.submit(ScanJob(opened, lambda job, outcome: None))
            while len(accepted) < 8:
                connection, _ = listener.accept()
                accepted.append(time.monotonic())
                connection.close()  # before any reply: the handshake fails
    finally:
        listener.close()
        opened.close()
    gaps = [b - a for a, b in itertools.pairwise(accepted)]
    for number, gap in enumerate(gaps):
        backoff = min(0.05 * 2**number, 0.4)
        # 0.8-1.2x the backoff; the engine's loop and this thread add a little,
        # and a busy machine more (the cap still shows from the sixth gap on)
        assert 0.8 * backoff - 0.005 <= gap <= 1.2 * backoff + 0.2, (number, gaps)
    at_max = gaps[3:]
    assert max(at_max) - min(at_max) > 0.002, f"no jitter: {gaps}"


def test_a_clamd_that_refuses_the_eicar_check_is_never_used(tmp_path: Path, eicar: bytes) -> None:
    """clamd 1.5+ can disable INSTREAM (COMMAND UNAVAILABLE): the check cannot
    be made, and the error says how to do without it."""
    paths, _ = tree(tmp_path, 2, eicar, every=2)
    unavailable = Faults(unavailable=frozenset({"INSTREAM"}))
    with (
        FakeClamd(unavailable) as fake,
        running(
            fake.unix_address,
            eicar_check=True,
            transport=TransportChoice.INSTREAM,  # the check then goes by INSTREAM too
            give_up_after=1.0,
        ) as engine,
    ):
        with pytest.raises(ClamdUnavailableError, match="refused the EICAR check"):
            engine.wait_ready(30)
        outcomes = scan_files(engine, paths, timeout=DEADLINE)
    for outcome in outcomes.values():
        assert isinstance(outcome.verdict, ScanError), outcome
        assert "set eicar_check = false" in outcome.verdict.message
