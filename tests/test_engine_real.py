"""The clamd engine against the real clamd (Debian's clamav-daemon, a private instance)."""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from clamwatch.clamd.address import parse_address
from clamwatch.clamd.engine import ClamdUnavailableError, Engine
from clamwatch.clamd.job import ScanJob, ScanOutcome, Transport, TransportChoice
from clamwatch.clamd.settings import ClamdSettings, EngineSettings, resolve_engine
from clamwatch.files import OpenedFile, open_for_scan
from clamwatch.privateclamd import PrivateClamd
from clamwatch.testsig import EICAR_SIGNATURE
from clamwatch.verdict import Clean, Infected, NotScanned, NotScannedReason, ScanError
from helpers import ClamdFactory, fill_inodes, make_tree, run_clamdscan, scan_files, wait_for


@contextmanager
def running(address: str, *, inline: bool = False, **settings: Any) -> Iterator[Engine]:
    """A started engine, or an inline one that scan_files() turns (as `clamwatch scan` does)."""
    engine = Engine(parse_address(address), EngineSettings(**settings), inline=inline)
    if not inline:
        engine.start()
    try:
        yield engine
    finally:
        engine.close()


def clamdscan_infected(clamd: PrivateClamd, root: Path) -> set[Path]:
    result = run_clamdscan(clamd, "--multiscan", "--fdpass", "--no-summary", str(root))
    assert result.returncode == 1, result.stderr
    found = re.findall(r"^(.*): (\S+) FOUND$", result.stdout, re.MULTILINE)
    assert {sig for _, sig in found} == {EICAR_SIGNATURE}
    return {Path(path) for path, _ in found}


@pytest.mark.parametrize(
    ("transport", "use_tcp", "inline"),
    [
        (TransportChoice.FILDES, False, False),
        (TransportChoice.INSTREAM, False, False),
        (TransportChoice.AUTO, True, False),
        (TransportChoice.FILDES, False, True),
        (TransportChoice.INSTREAM, False, True),
        (TransportChoice.AUTO, True, True),
    ],
    ids=[
        "fildes-unix-thread",
        "instream-unix-thread",
        "instream-tcp-thread",
        "fildes-unix-inline",
        "instream-unix-inline",
        "instream-tcp-inline",
    ],
)
def test_thousand_files_in_one_session_agree_with_clamdscan(  # noqa: PLR0917 - parameters
    clamd: PrivateClamd,
    tmp_path: Path,
    eicar: bytes,
    transport: TransportChoice,
    use_tcp: bool,
    inline: bool,
) -> None:
    infected = make_tree(tmp_path, 1000, eicar)
    expected = clamdscan_infected(clamd, tmp_path)
    assert expected == infected  # the tree is what we think it is, by clamdscan's word

    address = clamd.tcp_address if use_tcp else clamd.unix_address
    with running(address, transport=transport, sessions=1, inline=inline) as engine:
        outcomes = scan_files(engine, sorted(p for p in tmp_path.rglob("*.bin")))
        stats = engine.stats

    assert len(outcomes) == 1000
    found = {path for path, o in outcomes.items() if isinstance(o.verdict, Infected)}
    assert found == expected
    assert all(o.verdict == Infected(EICAR_SIGNATURE) for p, o in outcomes.items() if p in found)
    assert all(isinstance(o.verdict, Clean) for p, o in outcomes.items() if p not in found)
    wanted = (
        Transport.INSTREAM if use_tcp or transport is TransportChoice.INSTREAM else Transport.FILDES
    )
    assert {o.transport for o in outcomes.values()} == {wanted}
    assert stats.sessions_opened == 1, "all 1,000 requests went through one IDSESSION"
    assert stats.requests_sent == 1000 and stats.requests_resent == 0
    # 1,000 requests at once fill every slot: replies were let gather
    assert stats.gathers > 0
    # the last replies, with nothing left to send, were acknowledged at once
    # over TCP; a Unix socket has no ACKs to hurry
    assert (stats.quick_acks > 0) == use_tcp


def test_files_one_at_a_time_never_wait_for_replies_to_gather(
    clamd: PrivateClamd, tmp_path: Path
) -> None:
    paths = [tmp_path / f"f{n}" for n in range(20)]
    for path in paths:
        path.write_bytes(b"clean")
    with running(clamd.unix_address) as engine:
        for path in paths:
            assert scan_files(engine, [path])[path].verdict == Clean()
        assert engine.stats.gathers == 0


def test_replies_over_tcp_are_not_held_back_for_our_ack(
    clamd: PrivateClamd, tmp_path: Path
) -> None:
    """clamd writes replies with Nagle's algorithm on: its second reply waits for our ACK.

    With no request of ours left to carry that ACK, Linux sends it only when
    its delayed-ACK timer fires, 40 ms at the least, once the connection's
    first exchanges are over. Without the engine's quick ACK, the second of
    two files sent together was answered 40-43 ms after the first, in every
    try (measured); with it, within a millisecond.
    """
    paths = [tmp_path / f"f{n}" for n in range(32)]
    for path in paths:
        path.write_bytes(b"clean " * 100)
    spans: list[float] = []
    with running(clamd.tcp_address, sessions=1) as engine:
        # past the connection's opening exchanges, which Linux ACKs at once anyway
        assert all(o.verdict == Clean() for o in scan_files(engine, paths).values())
        answered: queue.SimpleQueue[float] = queue.SimpleQueue()

        def done(job: ScanJob, outcome: ScanOutcome) -> None:
            answered.put(time.monotonic())
            job.file.close()

        for _ in range(5):
            for path in paths[:2]:
                opened = open_for_scan(str(path))
                assert isinstance(opened, OpenedFile)
                engine.submit(ScanJob(opened, done))
            first, second = answered.get(timeout=30), answered.get(timeout=30)
            spans.append(second - first)
        quick_acks = engine.stats.quick_acks
    # below the 40 ms floor of a delayed ACK, with room for a busy machine
    assert min(spans) < 0.035, f"second reply {min(spans) * 1000:.1f} ms after the first at best"
    assert quick_acks > 0


def test_auto_transport_is_fildes_on_a_unix_socket(clamd: PrivateClamd, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    with running(clamd.unix_address) as engine:
        caps = engine.wait_ready(10)
        outcome = scan_files(engine, [tmp_path / "a"])[tmp_path / "a"]
    assert "FILDES" in caps.commands and caps.max_threads == 4
    assert caps.version.startswith("ClamAV ")
    assert outcome.transport is Transport.FILDES and outcome.verdict == Clean()
    assert outcome.clamd_version == caps.version


def test_empty_file_is_clean(clamd: PrivateClamd, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    with running(clamd.unix_address) as engine:
        assert scan_files(engine, [tmp_path / "empty"])[tmp_path / "empty"].verdict == Clean()


def test_file_removed_after_open_is_still_scanned(
    clamd: PrivateClamd, tmp_path: Path, eicar: bytes
) -> None:
    """The descriptor is what is scanned: unlinking the name changes nothing."""
    path = tmp_path / "gone"
    path.write_bytes(eicar)
    opened = open_for_scan(str(path))
    assert isinstance(opened, OpenedFile)
    path.unlink()
    done: queue.SimpleQueue[ScanOutcome] = queue.SimpleQueue()
    with running(clamd.unix_address) as engine:
        engine.submit(ScanJob(opened, lambda job, outcome: done.put(outcome)))
        outcome = done.get(timeout=30)
    opened.close()
    assert outcome.verdict == Infected(EICAR_SIGNATURE)


def test_a_file_that_grew_after_its_open_is_streamed_whole(
    clamd: PrivateClamd, tmp_path: Path, eicar: bytes
) -> None:
    """INSTREAM reads a small file in one piece, sized by its fstat at open: more
    bytes than that (the file grew meanwhile) must send the file as it is now,
    never the first ``size + 1`` bytes of it."""
    path = tmp_path / "grows"
    path.write_bytes(eicar[:1])
    opened = open_for_scan(str(path))
    assert isinstance(opened, OpenedFile) and opened.identity.size == 1
    with path.open("ab") as more:
        more.write(eicar[1:])  # the rest of EICAR (at offset 0), after the open
    done: queue.SimpleQueue[ScanOutcome] = queue.SimpleQueue()
    with running(clamd.tcp_address) as engine:
        engine.submit(ScanJob(opened, lambda job, outcome: done.put(outcome)))
        outcome = done.get(timeout=30)
    opened.close()
    assert outcome.transport is Transport.INSTREAM
    assert outcome.verdict == Infected(EICAR_SIGNATURE)


def test_a_stream_that_grows_past_the_size_clamd_scans_is_cut_and_not_scanned(
    clamd: PrivateClamd, tmp_path: Path, eicar: bytes
) -> None:
    """A file checked against the limit at its open, then grown past it: streamed
    only up to the limit (clamd would answer OK, unscanned, for the whole), and
    reported as not scanned."""
    path = tmp_path / "grows.com"
    path.write_bytes(eicar)
    opened = open_for_scan(str(path))
    assert isinstance(opened, OpenedFile)
    with path.open("ab") as more:
        more.write(b"x" * (256 << 10))
    done: queue.SimpleQueue[ScanOutcome] = queue.SimpleQueue()
    with running(clamd.tcp_address, max_file_size=128 << 10) as engine:
        engine.submit(ScanJob(opened, lambda job, outcome: done.put(outcome)))
        outcome = done.get(timeout=30)
    opened.close()
    assert outcome.verdict == NotScanned(
        NotScannedReason.TOO_LARGE, "grew past the 131072 bytes clamd takes while it was sent"
    )


def test_a_file_that_grows_past_the_size_clamd_scans_after_its_open_is_not_scanned(
    clamd_factory: ClamdFactory, tmp_path: Path, eicar: bytes
) -> None:
    """Over FILDES clamd sizes the file when it scans it: one under MaxFileSize at
    its open here, and over it by then, is answered OK unscanned (shown with the
    limit kept from the engine). The engine looks at the size again for an OK."""
    server = clamd_factory(extra={"MaxFileSize": "1M"})
    limit = 1 << 20
    outcomes = []
    done: queue.SimpleQueue[ScanOutcome] = queue.SimpleQueue()
    for known in (None, limit):
        path = tmp_path / f"grows-{known}.com"
        path.write_bytes(eicar)
        opened = open_for_scan(str(path))
        assert isinstance(opened, OpenedFile) and opened.identity.size == len(eicar)
        with path.open("ab") as more:
            more.write(b"x" * limit)  # after the open: the engine sends it
        settings: dict[str, Any] = {"max_file_size": known or 2**40, "max_file_size_from": "test"}
        with running(server.unix_address, transport=TransportChoice.FILDES, **settings) as engine:
            engine.submit(ScanJob(opened, lambda job, outcome: done.put(outcome)))
            outcomes.append(done.get(timeout=30))
        opened.close()
    blind, known_limit = outcomes
    assert blind.verdict == Clean()  # the hazard: clamd never looked
    assert known_limit.transport is Transport.FILDES
    assert known_limit.verdict == NotScanned(
        NotScannedReason.TOO_LARGE,
        f"grew to {limit + len(eicar)} bytes while clamd had it, larger than the {limit}"
        " bytes clamd scans (test)",
    )


@pytest.mark.parametrize("known_limit", [True, False], ids=["limit-known", "limit-from-clamd"])
def test_file_over_stream_max_length_is_not_scanned_over_tcp(
    clamd_factory: ClamdFactory, tmp_path: Path, eicar: bytes, known_limit: bool
) -> None:
    server = clamd_factory(stream_max_length="1M")
    limit = 1 << 20
    exact = tmp_path / "exact"
    exact.write_bytes(b"x" * limit)
    over = tmp_path / "over"
    over.write_bytes(eicar + b"y" * limit)
    small = tmp_path / "small"
    small.write_bytes(eicar)
    settings: dict[str, Any] = {"max_stream_size": limit} if known_limit else {}
    with running(server.tcp_address, **settings) as engine:
        outcomes = scan_files(engine, [exact, over, small])
    verdict = outcomes[over].verdict
    assert isinstance(verdict, NotScanned) and verdict.reason is NotScannedReason.TOO_LARGE
    assert outcomes[exact].verdict == Clean()
    assert outcomes[small].verdict == Infected(EICAR_SIGNATURE)
    # known limit: refused without sending anything
    assert (outcomes[over].transport is None) == known_limit


def test_session_idle_past_read_timeout_keeps_working(
    clamd_factory: ClamdFactory, tmp_path: Path, eicar: bytes
) -> None:
    server = clamd_factory(read_timeout=1)
    (tmp_path / "bad").write_bytes(eicar)
    (tmp_path / "good").write_bytes(b"good")
    # keepalive longer than ReadTimeout: clamd ends the idle session, the engine
    # opens a new one and learns to ping more often
    with running(server.unix_address, sessions=1, keepalive=5.0) as engine:
        assert scan_files(engine, [tmp_path / "good"])[tmp_path / "good"].verdict == Clean()
        wait_for(lambda: engine.stats.sessions_opened >= 2, 10, "a new session after ReadTimeout")
        outcome = scan_files(engine, [tmp_path / "bad"])[tmp_path / "bad"]
    assert outcome.verdict == Infected(EICAR_SIGNATURE)
    assert outcome.attempts == 1

    # keepalive well inside ReadTimeout: the same session lives on
    with running(server.unix_address, sessions=1, keepalive=0.3) as engine:
        assert scan_files(engine, [tmp_path / "good"])[tmp_path / "good"].verdict == Clean()
        opened = engine.stats.sessions_opened
        # Idleness is the condition under test here, not a wait for an event:
        # 2.5 times clamd's ReadTimeout with nothing to scan.
        time.sleep(2.5)
        outcome = scan_files(engine, [tmp_path / "bad"])[tmp_path / "bad"]
        assert engine.stats.sessions_opened == opened == 1
    assert outcome.verdict == Infected(EICAR_SIGNATURE)


@pytest.mark.parametrize("transport", [TransportChoice.FILDES, TransportChoice.INSTREAM])
def test_one_clamd_thread_and_a_tiny_queue_slow_it_down_but_lose_nothing(
    clamd_factory: ClamdFactory, tmp_path: Path, eicar: bytes, transport: TransportChoice
) -> None:
    """MaxThreads 1, MaxQueue 2: clamd stops reading while its queue is full.

    The engine keeps 16 requests in flight (what it learns for one thread),
    far more than clamd takes: clamd reads them as its queue frees, the
    engine reads replies all the while, and no session is dropped for
    replies left unread (clamd's SendBufTimeout is 500 ms).
    """
    server = clamd_factory(max_threads=1, max_queue=2)
    infected = make_tree(tmp_path, 300, eicar, every=10)
    paths = sorted(tmp_path.rglob("*.bin"))
    with running(server.unix_address, sessions=1, transport=transport) as engine:
        outcomes = scan_files(engine, paths)
        stats = engine.stats
        assert engine.capabilities is not None and engine.capabilities.max_threads == 1
    wrong = {
        path: outcome.verdict
        for path, outcome in outcomes.items()
        if outcome.verdict != (Infected(EICAR_SIGNATURE) if path in infected else Clean())
    }
    assert not wrong, wrong
    assert stats.sessions_opened == 1 and stats.sessions_lost == 0
    assert stats.requests_sent == len(paths) and stats.requests_resent == 0


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
def test_clamd_killed_mid_burst_and_restarted_loses_nothing(
    clamd_factory: ClamdFactory, tmp_path: Path, eicar: bytes, inline: bool
) -> None:
    server = clamd_factory(max_threads=2)
    # half infected: a lost request wrongly taken as clean would show
    infected = make_tree(tmp_path, 2000, eicar, every=2)
    paths = sorted(tmp_path.rglob("*.bin"))
    killed = threading.Event()

    def kill_and_restart(engine: Engine) -> None:
        wait_for(lambda: engine.stats.verdicts >= 300, 60, "300 verdicts before the kill")
        server.kill()
        killed.set()
        server.restart()

    with running(server.unix_address, sessions=2, backoff_max=0.5, inline=inline) as engine:
        killer = threading.Thread(target=kill_and_restart, args=(engine,))
        killer.start()
        try:
            outcomes = scan_files(engine, paths, timeout=120)
        finally:
            killer.join()
        stats = engine.stats
    assert killed.is_set()
    assert stats.verdicts >= 2000
    assert stats.requests_resent > 0, "the kill should have caught requests in flight"
    assert stats.sessions_opened >= 3
    assert any(o.attempts >= 2 for o in outcomes.values()), "no request was sent again"
    found = {p for p, o in outcomes.items() if isinstance(o.verdict, Infected)}
    assert found == infected
    assert all(isinstance(o.verdict, Clean) for p, o in outcomes.items() if p not in infected)


def test_an_inline_engine_is_turned_by_its_caller_only(clamd: PrivateClamd) -> None:
    inline = Engine(parse_address(clamd.unix_address), inline=True)
    with pytest.raises(RuntimeError, match="call step"):
        inline.start()
    assert inline.wait_ready(10).version.startswith("ClamAV")
    assert inline.close() == []
    with pytest.raises(RuntimeError, match="closed"):
        inline.step(0)
    threaded = Engine(parse_address(clamd.unix_address)).start()
    try:
        with pytest.raises(RuntimeError, match="inline engines"):
            threaded.step(0)
    finally:
        threaded.close()


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
def test_closing_during_a_handshake_is_not_clamd_lost(
    tmp_path: Path, inline: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # A short scan can end while a session is still in its handshake (the
    # listener here accepts and never answers): closing it is not clamd
    # being unreachable, and nothing may say so.
    caplog.set_level(logging.INFO)
    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        listener.settimeout(10)
        with running(f"unix://{path}", sessions=1, inline=inline) as engine:
            if inline:
                engine.step(0)
            connection, _ = listener.accept()  # held open until the engine has closed
            connection.settimeout(10)
            assert connection.recv(100).startswith(b"zIDSESSION\0")
            assert engine.capabilities is None
        connection.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_unreachable_clamd_is_an_error_never_a_verdict(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/no-clamd.sock"
    (tmp_path / "f").write_bytes(b"data")
    with running(address, give_up_after=0.5, backoff_max=0.1) as engine:
        with pytest.raises(ClamdUnavailableError, match=r"no-clamd\.sock: No such file"):
            engine.wait_ready(0.3)
        outcome = scan_files(engine, [tmp_path / "f"], timeout=10)[tmp_path / "f"]
    assert isinstance(outcome.verdict, ScanError)
    assert "clamd unreachable" in outcome.verdict.message
    assert outcome.transport is None


def test_a_clamd_stuck_after_a_keepalive_ping_is_a_timeout_never_a_hang(
    clamd_factory: ClamdFactory, tmp_path: Path, eicar: bytes
) -> None:
    """No request goes while a PING waits for its PONG: a clamd stopped (SIGSTOP)
    with only the PING out must still end in a timeout, and `clamwatch scan`
    (give_up_after) must get its ScanError, not wait forever."""
    server = clamd_factory()
    pid = server.pid
    assert pid is not None
    (tmp_path / "bad").write_bytes(eicar)
    with running(
        server.unix_address,
        sessions=1,
        eicar_check=False,  # else the idle session's keepalive is a check, with its own deadline
        keepalive=0.3,
        request_timeout=2.0,
        connect_timeout=1.0,
        give_up_after=2.0,
        backoff_initial=0.05,
        backoff_max=0.2,
    ) as engine:
        assert scan_files(engine, [tmp_path / "bad"])[tmp_path / "bad"].verdict == Infected(
            EICAR_SIGNATURE
        )
        os.kill(pid, signal.SIGSTOP)
        try:
            # the PING is what is under test: wait until one is out
            wait_for(
                lambda: any(s.ping_pending for s in engine._sessions),
                10,
                "a keepalive PING to the stopped clamd",
            )
            outcome = scan_files(engine, [tmp_path / "bad"], timeout=20)[tmp_path / "bad"]
            assert isinstance(outcome.verdict, ScanError), outcome
        finally:
            os.kill(pid, signal.SIGCONT)
        # and once clamd goes on and answers again, the true verdict
        wait_for(lambda: engine.reachable, 30, "clamd to answer after SIGCONT")
        outcome = scan_files(engine, [tmp_path / "bad"], timeout=30)[tmp_path / "bad"]
    assert outcome.verdict == Infected(EICAR_SIGNATURE)


def test_scans_wait_for_a_late_clamd(
    clamd_factory: ClamdFactory, tmp_path: Path, eicar: bytes
) -> None:
    """Started before clamd: the jobs wait, then get their true verdicts."""
    server = clamd_factory()
    server.stop()
    (tmp_path / "bad").write_bytes(eicar)
    with running(server.unix_address, backoff_max=0.2) as engine:
        starter = threading.Timer(1.0, server.restart)
        starter.start()
        try:
            outcome = scan_files(engine, [tmp_path / "bad"], timeout=60)[tmp_path / "bad"]
        finally:
            starter.join()
    assert outcome.verdict == Infected(EICAR_SIGNATURE)


@pytest.mark.parametrize("listed_regular", [False, True])
def test_nonregular_files_never_reach_clamd(tmp_path: Path, listed_regular: bool) -> None:
    """fifos, directories, symlinks and vanished names never reach clamd, also when a
    directory listing said "regular file" and the name was swapped since (no lstat then:
    the fstat of what was opened decides)."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "target").write_bytes(b"t")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    reasons = {
        name: open_for_scan(str(tmp_path / name), listed_regular=listed_regular)
        for name in ("fifo", "dir", "link", "vanished")
    }
    assert {name: getattr(v, "reason", v) for name, v in reasons.items()} == {
        "fifo": NotScannedReason.NOT_REGULAR,
        "dir": NotScannedReason.NOT_REGULAR,
        "link": NotScannedReason.SYMLINK,
        "vanished": NotScannedReason.VANISHED,
    }


# The EICAR check ----------------------------------------------------------------------


@pytest.fixture
def tight_tmp(tmp_path: Path, tmpfs: Callable[..., None]) -> Path:
    """A TemporaryDirectory for clamd whose inodes a test can use up."""
    where = tmp_path / "clamd-tmp"
    tmpfs(where, "8M", inodes=256)
    return where


def test_a_clamd_that_cannot_make_its_scan_folders_fails_the_eicar_check(
    clamd_factory: ClamdFactory, tight_tmp: Path, tmp_path: Path, eicar: bytes
) -> None:
    """clamd 1.4 answers OK, unscanned, for a file it cannot make its per-scan
    folder for (a full TemporaryDirectory). Sessions begin with the EICAR check,
    so such a clamd is never taken for one that scans."""
    server = clamd_factory(max_threads=2, extra={"TemporaryDirectory": str(tight_tmp)})
    virus = tmp_path / "virus.com"
    virus.write_bytes(eicar)
    fill_inodes(tight_tmp)
    # the hazard: without the check, EICAR passed by descriptor comes back clean
    fildes = TransportChoice.FILDES
    with running(server.unix_address, inline=True, transport=fildes, eicar_check=False) as engine:
        unchecked = scan_files(engine, [virus], timeout=30)[virus]
    assert isinstance(unchecked.verdict, Clean), unchecked
    with running(server.unix_address, inline=True, give_up_after=1.0, backoff_max=0.1) as engine:
        with pytest.raises(ClamdUnavailableError, match=r"EICAR test file.*TemporaryDirectory"):
            engine.wait_ready(30)
        outcome = scan_files(engine, [virus], timeout=30)[virus]
    assert isinstance(outcome.verdict, ScanError), outcome
    assert "EICAR test file" in outcome.verdict.message


def test_clean_replies_wait_for_a_check_so_none_comes_from_a_clamd_that_stopped_scanning(
    clamd_factory: ClamdFactory, tight_tmp: Path, tmp_path: Path, eicar: bytes
) -> None:
    """A clean reply is delivered only once a check sent after it passed. clamd
    stops scanning (its TemporaryDirectory fills) after the handshake: its OKs
    for the next files are never delivered; the files end as errors."""
    server = clamd_factory(max_threads=2, extra={"TemporaryDirectory": str(tight_tmp)})
    clean, virus = tmp_path / "clean.txt", tmp_path / "virus.com"
    clean.write_text("clean\n")
    virus.write_bytes(eicar)
    fildes = TransportChoice.FILDES
    settings: dict[str, Any] = {"give_up_after": 2.0, "backoff_max": 0.1}
    with running(server.unix_address, inline=True, transport=fildes, **settings) as engine:
        engine.wait_ready(30)
        assert isinstance(scan_files(engine, [clean], timeout=30)[clean].verdict, Clean)
        fill_inodes(tight_tmp)
        outcomes = scan_files(engine, [clean, virus], timeout=60)
    for path, outcome in outcomes.items():
        assert isinstance(outcome.verdict, ScanError), (path, outcome)
        assert "EICAR" in outcome.verdict.message


def test_a_stream_that_takes_clamds_last_inode_is_never_called_clean(
    clamd_factory: ClamdFactory, tight_tmp: Path, tmp_path: Path, eicar: bytes
) -> None:
    """With no inode left in clamd's TemporaryDirectory a stream's connection is
    closed; with one left, the stream's temporary file takes it, and clamd answers
    OK without scanning (it cannot make its per-scan folder: measured, EICAR came
    back OK). Streams' clean replies wait for a check as well, which then fails:
    the file is not called clean, and ends as an error once clamd stays so."""
    server = clamd_factory(max_threads=2, extra={"TemporaryDirectory": str(tight_tmp)})
    clean, virus = tmp_path / "clean.txt", tmp_path / "virus.com"
    clean.write_text("clean\n")
    virus.write_bytes(eicar)
    made = fill_inodes(tight_tmp)
    made.pop().unlink()  # one inode left
    with running(server.tcp_address, inline=True, eicar_check=False) as engine:
        unchecked = scan_files(engine, [virus], timeout=30)[virus]
    assert unchecked.transport is Transport.INSTREAM
    assert isinstance(unchecked.verdict, Clean), unchecked  # the hazard
    for path in made:
        path.unlink()
    settings: dict[str, Any] = {"give_up_after": 2.0, "backoff_max": 0.1}
    with running(server.tcp_address, inline=True, **settings) as engine:
        engine.wait_ready(30)
        assert isinstance(scan_files(engine, [clean], timeout=30)[clean].verdict, Clean)
        fill_inodes(tight_tmp)[-1].unlink()  # one inode left again
        outcome = scan_files(engine, [virus], timeout=60)[virus]
    assert isinstance(outcome.verdict, ScanError), outcome
    assert "EICAR test file" in outcome.verdict.message


def test_a_clamd_that_stops_scanning_mid_run_gets_no_verdict_through(
    clamd_factory: ClamdFactory,
    tight_tmp: Path,
    tmp_path: Path,
    eicar: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The TemporaryDirectory fills in the middle of a busy run: the held OKs
    are not delivered, the session is dropped, and once clamd can scan again
    every file gets its one right verdict, the EICAR files theirs too."""
    caplog.set_level(logging.ERROR, logger="clamwatch.clamd.engine")
    server = clamd_factory(max_threads=2, extra={"TemporaryDirectory": str(tight_tmp)})
    first, rest = tmp_path / "first", tmp_path / "rest"
    make_tree(first, 100, eicar)
    infected = make_tree(rest, 3000, eicar)
    fildes = TransportChoice.FILDES
    with running(server.unix_address, transport=fildes, backoff_max=0.2) as engine:
        engine.wait_ready(30)
        scan_files(engine, sorted(p for p in first.rglob("*") if p.is_file()), timeout=60)
        made = fill_inodes(tight_tmp)

        def free_when_a_check_fails() -> None:
            wait_for(lambda: "will be scanned again" in caplog.text, 60, "a failed check")
            for path in made:
                path.unlink()

        freer = threading.Thread(target=free_when_a_check_fails)
        freer.start()
        try:
            paths = sorted(p for p in rest.rglob("*") if p.is_file())
            outcomes = scan_files(engine, paths, timeout=120)
        finally:
            freer.join()
    wrong = {
        path: outcome.verdict
        for path, outcome in outcomes.items()
        if not isinstance(outcome.verdict, Infected if path in infected else Clean)
    }
    assert wrong == {}
    assert re.search(r"the \d+ file\(s\) clamd called clean since the last checks", caplog.text)


def test_checks_and_pings_queued_in_a_busy_session_never_take_a_files_descriptor(
    clamd: PrivateClamd, tmp_path: Path, eicar: bytes
) -> None:
    """A descriptor rides on the first byte of what carries it: a FILDES queued
    behind an EICAR check (one goes every 128 clean replies or so while busy)
    or a PING must go in a send of its own, or clamd takes the descriptor for
    the check and the file gets "No file descriptor received"."""
    root = tmp_path / "tree"
    infected = make_tree(root, 3000, eicar)
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    with running(clamd.unix_address, transport=TransportChoice.FILDES, keepalive=0.01) as engine:
        outcomes = scan_files(engine, paths, timeout=120)
    wrong = {
        path: outcome.verdict
        for path, outcome in outcomes.items()
        if not isinstance(outcome.verdict, Infected if path in infected else Clean)
    }
    assert wrong == {}


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
def test_a_rotated_session_confirms_its_last_clean_replies_and_resends_nothing(
    clamd: PrivateClamd, tmp_path: Path, eicar: bytes, inline: bool
) -> None:
    """A session ends after max_requests_per_session, with clean replies held for
    the EICAR check: END goes once its last reply came, after a check that covers
    them all, so none is scanned again and no session counts as lost."""
    root = tmp_path / "tree"
    infected = make_tree(root, 600, eicar)
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    with running(
        clamd.unix_address,
        transport=TransportChoice.FILDES,
        sessions=2,
        max_requests_per_session=100,
        inline=inline,
    ) as engine:
        outcomes = scan_files(engine, paths, timeout=120)
        stats = engine.stats
    wrong = {
        path: outcome.verdict
        for path, outcome in outcomes.items()
        if not isinstance(outcome.verdict, Infected if path in infected else Clean)
    }
    assert wrong == {}
    assert stats.sessions_opened >= 7  # 600 files and their checks, 100 requests a session
    assert stats.requests_resent == 0 and stats.sessions_lost == 0
    assert {o.attempts for o in outcomes.values()} == {1}


@pytest.mark.parametrize(
    ("extra", "key"),
    [({"MaxFileSize": "1M"}, "MaxFileSize"), ({"MaxScanSize": "1M"}, "MaxScanSize")],
    ids=["MaxFileSize", "MaxScanSize"],
)
@pytest.mark.parametrize("transport", ["fildes", "instream-tcp"])
def test_a_file_over_clamds_scan_limits_is_not_scanned_not_clean(  # noqa: PLR0917 - parameters
    clamd_factory: ClamdFactory,
    tmp_path: Path,
    eicar: bytes,
    extra: dict[str, str],
    key: str,
    transport: str,
) -> None:
    """clamd answers OK, unscanned, for a file over MaxFileSize or MaxScanSize: shown
    first with the limit kept from the engine. With the limit read from clamd.conf,
    such a file is "not scanned: too large" and never sent; one of the limit's exact
    size is scanned."""
    server = clamd_factory(extra=extra)
    limit = 1 << 20
    exact = tmp_path / "exact.com"
    exact.write_bytes(eicar + b"x" * (limit - len(eicar)))
    over = tmp_path / "over.com"
    over.write_bytes(eicar + b"y" * (limit + 1 - len(eicar)))
    address = server.unix_address if transport == "fildes" else server.tcp_address
    unlimited: dict[str, Any] = {"max_file_size": 2**40, "max_file_size_from": "no limit"}
    with running(address, **unlimited) as engine:
        blind = scan_files(engine, [exact, over])
    assert blind[exact].verdict == Infected(EICAR_SIGNATURE)
    assert blind[over].verdict == Clean()  # the hazard: clamd never looked
    _, settings = resolve_engine(
        ClamdSettings(address=address, clamd_conf=server.conf_path), give_up_after=None
    )
    assert settings.max_file_size == limit
    learned: dict[str, Any] = {
        "max_file_size": limit,
        "max_file_size_from": settings.max_file_size_from,
    }
    with running(address, **learned) as engine:
        outcomes = scan_files(engine, [exact, over])
    assert outcomes[exact].verdict == Infected(EICAR_SIGNATURE)
    verdict = outcomes[over].verdict
    assert isinstance(verdict, NotScanned) and verdict.reason is NotScannedReason.TOO_LARGE
    assert verdict.detail == (
        f"{limit + 1} bytes, larger than the {limit} bytes clamd scans"
        f" ({key} in {server.conf_path})"
    )
    assert outcomes[over].transport is None  # never sent


def test_limits_lowered_with_a_restart_of_clamd_are_read_again(
    clamd_factory: ClamdFactory, tmp_path: Path, eicar: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """clamd reads clamd.conf when it starts: MaxFileSize lowered there and clamd
    restarted, a file between the two limits is answered OK unscanned. An engine
    that reads the limits again once clamd dropped its sessions reports it "not
    scanned"; one that kept the old limit calls it clean."""
    server = clamd_factory(extra={"MaxFileSize": "2M"})
    middle = tmp_path / "middle.com"
    middle.write_bytes(eicar + b"x" * ((3 << 19) - len(eicar)))  # 1.5 MiB
    clamd = ClamdSettings(address=server.unix_address, clamd_conf=server.conf_path)
    address, settings = resolve_engine(clamd, give_up_after=None)
    assert settings.max_file_size == 2 << 20
    learning = Engine(
        address, settings, relearn=lambda: resolve_engine(clamd, give_up_after=None)[1]
    ).start()
    blind = Engine(address, settings).start()
    try:
        for engine in (learning, blind):
            assert scan_files(engine, [middle])[middle].verdict == Infected(EICAR_SIGNATURE)
        server.settings["MaxFileSize"] = "1M"
        server.restart()  # same socket, another process
        with caplog.at_level(logging.WARNING, logger="clamwatch.clamd.engine"):
            learned = scan_files(learning, [middle])[middle]
        kept = scan_files(blind, [middle])[middle]
    finally:
        learning.close()
        blind.close()
    assert kept.verdict == Clean()  # the hazard: clamd never looked
    assert learned.verdict == NotScanned(
        NotScannedReason.TOO_LARGE,
        f"{3 << 19} bytes, larger than the {1 << 20} bytes clamd scans"
        f" (MaxFileSize in {server.conf_path})",
    )
    assert learned.transport is None  # never sent
    assert f"the largest file it scans is {1 << 20} bytes" in caplog.text


def test_with_alert_exceeds_max_a_file_over_the_limit_is_sent_and_clamd_reports_it(
    clamd_factory: ClamdFactory, tmp_path: Path, eicar: bytes
) -> None:
    """AlertExceedsMax yes: clamd answers Heuristics.Limits.Exceeded.MaxFileSize FOUND
    for a file over MaxFileSize, as the admin asked, so it is sent and that stands."""
    server = clamd_factory(extra={"MaxFileSize": "1M", "AlertExceedsMax": "yes"})
    over = tmp_path / "over.bin"
    over.write_bytes(b"x" * (2 << 20))
    _, settings = resolve_engine(
        ClamdSettings(address=server.unix_address, clamd_conf=server.conf_path),
        give_up_after=None,
    )
    learned: dict[str, Any] = {
        "max_file_size": settings.max_file_size,
        "max_scan_time": settings.max_scan_time,
    }
    with running(server.unix_address, **learned) as engine:
        outcomes = scan_files(engine, [over])
    assert outcomes[over].verdict == Infected("Heuristics.Limits.Exceeded.MaxFileSize")
    assert outcomes[over].transport is Transport.FILDES


def test_an_ok_as_late_as_clamds_max_scan_time_is_not_scanned(
    clamd_factory: ClamdFactory, tmp_path: Path, eicar: bytes
) -> None:
    """clamd stops a scan at MaxScanTime and answers OK: a 95 MB file that starts
    with EICAR, under MaxScanTime 50 (ms). Shown first with the limit kept from the
    engine; with it read from clamd.conf, that OK is "not scanned"."""
    server = clamd_factory(extra={"MaxScanTime": "50"})
    slow = tmp_path / "slow.com"
    with slow.open("wb") as file:
        file.write(eicar)
        # sparse, and under clamd's default MaxFileSize (100M); clamd still
        # reads (hashes) all of it: some 200 ms here, four times the limit
        file.truncate(95 << 20)
    small = tmp_path / "small.com"
    small.write_bytes(eicar)
    with running(server.unix_address, max_scan_time=None) as engine:
        blind = scan_files(engine, [slow, small])
    assert blind[slow].verdict == Clean()  # the hazard: the scan was cut short
    _, settings = resolve_engine(
        ClamdSettings(address=server.unix_address, clamd_conf=server.conf_path),
        give_up_after=None,
    )
    assert settings.max_scan_time == 0.05
    with running(server.unix_address, max_scan_time=settings.max_scan_time) as engine:
        outcomes = scan_files(engine, [slow, small])
    verdict = outcomes[slow].verdict
    assert isinstance(verdict, NotScanned) and verdict.reason is NotScannedReason.TIME_LIMIT
    assert "as late as its MaxScanTime (0.05 s)" in verdict.detail
    assert outcomes[small].verdict == Infected(EICAR_SIGNATURE)  # a detection stands


def test_one_session_failing_to_connect_beside_another_is_not_clamd_unreachable(
    clamd: PrivateClamd, tmp_path: Path, eicar: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """sessions = 2: the first connects, then clamd's socket is gone (its path a link
    that is turned to nothing), so every connect of the second fails. clamd is up
    all the while, and neither `reachable` nor the log may say otherwise."""
    caplog.set_level(logging.DEBUG, logger="clamwatch.clamd.engine")
    link = tmp_path / "clamd.sock"
    link.symlink_to(clamd.socket_path)
    (tmp_path / "bad").write_bytes(eicar)

    def turn_until(predicate: Callable[[], bool], what: str) -> None:
        def turned() -> bool:
            engine.step(0.01)
            return predicate()

        wait_for(turned, 10, what)

    with running(f"unix://{link}", inline=True, sessions=2, backoff_initial=0.02,
                 backoff_max=0.05) as engine:  # fmt: skip
        engine.step(0)  # the first session's connect
        assert len(engine._sessions) == 1
        link.unlink()
        link.symlink_to(tmp_path / "gone.sock")
        turn_until(lambda: engine.sessions_ready == 1, "the first session's handshake")
        failed = engine.stats.connects_failed
        turn_until(lambda: engine.stats.connects_failed >= failed + 3, "three more failed connects")
        assert engine.reachable
        assert engine.sessions_ready == 1
        bad = scan_files(engine, [tmp_path / "bad"], timeout=10)[tmp_path / "bad"]
        assert bad.verdict == Infected(EICAR_SIGNATURE)
        # the socket back: the second session connects
        link.unlink()
        link.symlink_to(clamd.socket_path)
        turn_until(lambda: engine.sessions_ready == 2, "the second session")
        assert engine.reachable
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    further = [(level, text) for level, text in said if "a further session" in text]
    # said once at INFO, then at DEBUG until the session connects
    level, first = further[0]
    assert level == logging.INFO
    assert first.startswith(f"a further session to clamd at unix://{link} could not connect (")
    assert "No such file or directory" in first and "1 of 2 up" in first
    assert {level for level, _ in further[1:]} == {logging.DEBUG}, further
    assert [text for level, text in said if level >= logging.WARNING] == []
