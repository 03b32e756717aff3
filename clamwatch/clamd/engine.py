"""The clamd engine: many scans in flight over a few IDSESSION connections.

One thread owns every clamd socket and runs a selectors loop; other threads
only :meth:`Engine.submit` jobs. A single-threaded caller (``clamwatch scan``)
makes the engine with ``inline=True`` and turns the loop itself with
:meth:`Engine.step`: no second thread, no hand-off between threads.

Requests in flight on a session that is lost (clamd killed, a garbage reply,
a request past its deadline) are sent again on a new session: a transport
failure is never a verdict. Only after ``max_attempts`` losses, or when clamd
stays unreachable for ``give_up_after`` seconds, does a job end in a
:class:`ScanError`.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable

from clamwatch import lazylog
from clamwatch.clamd.address import AddressError, ClamdAddress
from clamwatch.clamd.job import ScanJob, ScanOutcome, Transport, TransportChoice, choose_transport
from clamwatch.clamd.protocol import (
    CommandFailed,
    ConnectionClosed,
    Event,
    LocalProtocolError,
    Pong,
    RemoteProtocolError,
    ScanReply,
    SessionEnded,
)
from clamwatch.clamd.session import (
    CONFIRM_WAIT,
    Capabilities,
    InFlight,
    Session,
    SessionState,
)
from clamwatch.clamd.settings import UNLIMITED, EngineSettings
from clamwatch.clamd.transport import ClamdConnectionError
from clamwatch.eventkind import EventKind, emit
from clamwatch.threadnames import name_this_thread
from clamwatch.verdict import (
    Clean,
    Infected,
    NotScanned,
    NotScannedReason,
    ScanError,
    Verdict,
    describe,
)

log = lazylog.Logger(__name__)

# How often a busy loop looks at its deadlines (keepalive, request and
# connect timeouts); an idle loop wakes for the next of them exactly.
_TIMER_TICK = 0.05
# The longest a saturated engine lets replies gather before it reads (see
# Engine._gather). Half of clamd's queue came in 3.5-7 ms here; paired with
# clamd's MULTISCAN over 11 rounds, `clamwatch scan --fdpass` took 1.029 and
# 1.030 times as long with 2 ms, 0.999 with 3, 0.993-1.017 with 4 and 1.014
# with 5; `--stream` against clamdscan's 1.032 and 1.043 with 2 ms, 0.986
# and 1.007 with 4 (0.284 -> 0.268 CPU-s), 1.025 with 6.
_GATHER_MAX = 0.004
# clamd's MaxQueue when clamd.conf does not say (clamd.conf(5)).
_CLAMD_MAX_QUEUE = 100
# An engine that gives up (give_up_after) does so once connecting has been
# denied (EACCES, EPERM) for this long: a wait does not mend permissions. Not
# at the first denial: clamd creates its socket before it sets the mode and
# group that LocalSocketMode and LocalSocketGroup ask for.
_DENIED_FOR = 1.0
# Sessions that count as clamd being up: connected, or connecting still.
_UP = (SessionState.CONNECTING, SessionState.HANDSHAKE, SessionState.READY)
_EICAR_CLOSED = (
    " while scanning the EICAR test file: did clamd stop, or is its TemporaryDirectory"
    " full or not writable? (clamd's log says)"
)


class EngineStats:
    """Counters kept by the loop thread; read them for status lines and tests."""

    __slots__ = (
        "sessions_opened",
        "sessions_lost",
        "requests_sent",
        "requests_resent",
        "verdicts",
        "gathers",
        "quick_acks",
        "connects_failed",
    )

    def __init__(self) -> None:
        self.sessions_opened = 0  # connections that completed the handshake
        self.sessions_lost = 0  # ended by clamd or by a fault with requests in flight
        self.requests_sent = 0  # scan requests written, retries included
        self.requests_resent = 0  # requests handed back by a lost session
        self.verdicts = 0  # outcomes delivered
        self.gathers = 0  # turns that let replies gather first (every slot was taken)
        self.quick_acks = 0  # reads over TCP acknowledged at once (Session.acknowledge)
        self.connects_failed = 0  # connections refused, or ended before the handshake was done


class ClamdUnavailableError(Exception):
    """clamd could not be reached within the time allowed."""


class Engine:
    """Submit jobs from any thread; each job's ``on_done`` runs once on the engine thread.

    An ``inline`` engine has no thread: its caller submits, turns the loop with
    :meth:`step`, and gets the ``on_done`` calls from within :meth:`step`.
    """

    def __init__(
        self,
        address: ClamdAddress,
        settings: EngineSettings | None = None,
        *,
        inline: bool = False,
        relearn: Callable[[], EngineSettings] | None = None,
    ) -> None:
        """``relearn`` reads clamd's limits again (from clamd.conf) when clamd has
        ended or dropped a session, as it does when it restarts (_relearn_limits)."""
        self.address = address
        self.inline = inline  # the caller turns the loop with step(); never start()ed
        self.settings = settings or EngineSettings()
        self._relearn = relearn
        self._relearn_due = False  # clamd ended or dropped a session since they were read
        if self.settings.transport is TransportChoice.FILDES and not address.is_unix:
            raise ValueError(f"FILDES needs a Unix socket; {address} is TCP")
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._inbox: collections.deque[ScanJob] = collections.deque()
        self._wake_pending = False
        self._stopping = False
        self._drain_until = float("inf")  # set by close()
        self._drain_deadline: float | None = None  # loop thread: when the drain gives up
        self._stopped = threading.Event()
        self._ready = threading.Condition(self._lock)
        self._capabilities: Capabilities | None = None
        self._last_error = ""
        self._unfinished: list[ScanJob] = []
        self.stats = EngineStats()
        self.heartbeat = 0.0  # monotonic time the loop last came round (0: not started)
        # loop-thread state
        self._queue: collections.deque[ScanJob] = collections.deque()
        self._sessions: list[Session] = []
        self._interest: dict[Session, int] = {}
        self._session_number = 0
        self._backoff = self.settings.backoff_initial
        self._next_connect = 0.0
        self._reply_interval = 0.0  # seconds between replies while saturated (moving average)
        self._timers_due = 0.0  # when _timers() runs next
        self._wakeup_at = 0.0  # the latest the loop may sleep until (from _next_wakeup)
        self._cap = 16  # requests in flight in all, and per session (from _set_caps)
        self._cap_per_session = math.ceil(16 / self.settings.sessions)
        self._gather_replies = 0  # replies' worth of time a saturated loop waits (_set_caps)
        self._down_since: float | None = None  # no session up since then (_connect_failed)
        self._extra_failing = False  # a session beside others that work failed to connect
        self._denied_since: float | None = None  # connecting denied since then, without a break
        self._keepalive = self.settings.keepalive
        self._gave_up = False
        self._probe = True  # ask VERSIONCOMMANDS and STATS at the start of each session
        self._thread = threading.Thread(target=self._run, name="clamwatch-clamd", daemon=True)

    # -- public, any thread -----------------------------------------------------

    def start(self) -> Engine:
        if self.inline:
            raise RuntimeError("an inline engine runs on its caller's thread: call step()")
        self._thread.start()
        return self

    def submit(self, job: ScanJob) -> None:
        self.submit_many((job,))

    def submit_many(self, jobs: Iterable[ScanJob]) -> None:
        """Submit jobs together: the loop thread is woken once for all of them.

        A caller that opens a round of files submits them at the end of the
        round; submitted one by one, each would wake a loop that is idle on
        the other CPU (a write and two reads of the wake-up socket per file).
        """
        if self.inline:
            if self._stopping:
                raise RuntimeError("the engine is closed")
            self._queue.extend(jobs)
            return
        with self._lock:
            if self._stopping:
                raise RuntimeError("the engine is closed")
            before = len(self._inbox)
            self._inbox.extend(jobs)
            # one wake-up byte until the loop drains it (see _drain_wake)
            wake = len(self._inbox) > before and not self._wake_pending
            if wake:
                self._wake_pending = True
        if wake:
            self._wake()

    def wait_ready(self, timeout: float) -> Capabilities:
        """Block until a session has finished its handshake; raise ClamdUnavailableError."""
        deadline = time.monotonic() + timeout
        if self.inline:
            while self._capabilities is None:
                left = deadline - time.monotonic()
                if left <= 0 or self._gave_up:
                    raise ClamdUnavailableError(
                        f"cannot reach clamd at {self.address}: {self._last_error or 'no answer'}"
                    )
                self.step(left)
            return self._capabilities
        with self._lock:
            while self._capabilities is None:
                left = deadline - time.monotonic()
                if left <= 0 or self._gave_up or self._stopped.is_set():
                    raise ClamdUnavailableError(
                        f"cannot reach clamd at {self.address}: {self._last_error or 'no answer'}"
                    )
                self._ready.wait(min(left, 0.1))
            return self._capabilities

    @property
    def alive(self) -> bool:
        """False once the loop thread has ended (after close(), or a bug)."""
        if self.inline:
            return not self._stopped.is_set()
        return self._thread.is_alive()

    @property
    def reachable(self) -> bool:
        """clamd has answered, and no connection attempt has failed since with no
        other session up (one of several that fails beside another is not this)."""
        return self._capabilities is not None and self._down_since is None

    @property
    def sessions_ready(self) -> int:
        """Sessions that take scan requests now, of ``settings.sessions`` (for status
        lines; read from any thread: a copy of the list, counted)."""
        return sum(s.state is SessionState.READY for s in list(self._sessions))

    @property
    def capabilities(self) -> Capabilities | None:
        return self._capabilities

    @property
    def in_flight_limit(self) -> int:
        """The most scan requests in flight at once, over all sessions (from clamd's
        MaxThreads and MaxQueue once a session is ready; see _cap_total)."""
        return self._cap

    def close(self, timeout: float = 10.0) -> list[ScanJob]:
        """End every session cleanly and stop. Returns the jobs that got no outcome.

        Sessions get ``timeout`` seconds to answer what is in flight; a clamd
        that stalls past it is left behind (its requests come back unfinished).
        """
        with self._lock:
            self._stopping = True
            self._drain_until = time.monotonic() + timeout
        if self.inline:
            if not self._stopped.is_set():
                try:
                    while self._turn(None):
                        pass
                finally:
                    self._shutdown()
            return self._unfinished
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout + 5.0)  # the loop wakes at least once a second
            if self._thread.is_alive():
                raise RuntimeError("the clamd engine did not stop")
        return self._unfinished

    def wake(self) -> None:
        """End the loop's wait (an inline engine's step()) at once, or its next one.

        Safe from any thread: a reader of the caller's input calls it.
        """
        self._wake()

    def _wake(self) -> None:
        # BlockingIOError: the wake-up pipe is full, so the loop is awake anyway
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        name_this_thread()
        try:
            self._loop()
        except Exception:
            log.exception("the clamd engine loop failed")
            raise
        finally:
            self._shutdown()

    def _loop(self) -> None:
        while self._turn(None):
            pass

    def step(self, timeout: float) -> None:
        """Inline engines: one turn of the loop, waiting at most ``timeout`` seconds for I/O.

        Jobs submitted since the last turn are sent, replies that arrived are
        read, and their ``on_done`` callbacks run here, on the caller's thread.
        """
        if not self.inline:
            raise RuntimeError("step() is for inline engines; this one runs its own thread")
        if self._stopping:
            raise RuntimeError("the engine is closed")
        self._turn(max(0.0, timeout))

    def _turn(self, max_wait: float | None) -> bool:
        """One pass of the loop; False when a closing engine has finished."""
        now = time.monotonic()
        self.heartbeat = now
        if self._take_inbox():
            if self._drain_deadline is None:
                self._drain_deadline = min(now + self.settings.request_timeout, self._drain_until)
            self._drain(now)
            if not self._sessions or now >= self._drain_deadline:
                return False
        else:
            self._maintain(now)
            if self._queue:
                for session in self._sessions:
                    if self._has_room(session):
                        self._service(session, selectors.EVENT_WRITE, now)
        for session in self._sessions:
            if session.wants_confirmation(now):
                session.check_eicar(now)
            session.finish_retiring(now)
        if now >= self._timers_due or self._stopping:
            # deadlines are seconds apart: a busy loop looks at them every
            # _TIMER_TICK, not at each of its thousands of turns
            self._timers(now)
            self._wakeup_at = self._next_wakeup(now, self._drain_deadline)
            self._timers_due = min(now + _TIMER_TICK, self._wakeup_at)
        self._update_interest()
        timeout = max(0.0, self._wakeup_at - now)
        if max_wait is not None:
            timeout = min(timeout, max_wait)
        saturated = self._saturated()
        if saturated and self._reply_interval > 0.0 and self._gather_replies > 0:
            self._gather(timeout)
        answered = self.stats.verdicts
        for key, mask in self._selector.select(timeout):
            if key.data is None:
                self._drain_wake()
                continue
            ready: Session = key.data
            if ready.state is not SessionState.CLOSED:
                self._service(ready, mask, time.monotonic())
        if saturated and self.stats.verdicts > answered:
            sample = (time.monotonic() - now) / (self.stats.verdicts - answered)
            self._reply_interval = 0.8 * self._reply_interval + 0.2 * sample
        return True

    def _saturated(self) -> bool:
        """Every in-flight slot taken and more work waiting: clamd has a queue of its own."""
        return bool(self._queue) and not self._stopping and self._in_flight() >= self._cap

    def _gather(self, timeout: float) -> None:
        """Let a few replies gather before the next read.

        With every slot taken, clamd's threads have requests queued behind the
        ones they scan, so answering each reply the moment it lands gains
        nothing; it only spends, once per file, CPU that clamd needs (on two
        CPUs, measured: 0.51 -> 0.27 CPU-s and 1.26 -> 1.16 s for 10,000
        small files). The wait is half of clamd's queue beyond its threads,
        in replies at the rate they have been coming, and never more than
        _GATHER_MAX. An engine that is not saturated never waits here, so a
        lone file is answered at once.
        """
        wait = min(self._reply_interval * self._gather_replies, _GATHER_MAX, timeout)
        if wait > 0.0:
            self.stats.gathers += 1
            time.sleep(wait)

    def _take_inbox(self) -> bool:
        if self.inline:
            return self._stopping
        with self._lock:
            if self._inbox:
                self._queue.extend(self._inbox)
                self._inbox.clear()
            return self._stopping

    def _drain_wake(self) -> None:
        # Drain first, then clear the flag: a submit() between the two then
        # finds the flag still set and its job is taken by the next
        # _take_inbox anyway; cleared first, its wake byte could be drained
        # here and every later submit would skip waking the loop.
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            self._wake_pending = False

    # -- sessions ---------------------------------------------------------------------

    def _maintain(self, now: float) -> None:
        live = [s for s in self._sessions if not s.ending]
        if len(live) >= self.settings.sessions or now < self._next_connect:
            return
        self._session_number += 1
        try:
            session = Session(
                self.address,
                now,
                self._session_number,
                probe=self._probe,
                eicar_check=self.settings.eicar_check,
                transport=self.settings.transport,
            )
        except ClamdConnectionError as exc:
            self._connect_failed(now, str(exc), denied=exc.denied)
            return
        # a stream that grows while it is sent stops at what clamd takes
        session.stream_limit = self.settings.stream_limit
        self._sessions.append(session)
        self._reschedule()
        self._interest[session] = selectors.EVENT_READ | selectors.EVENT_WRITE
        self._selector.register(session.sock, self._interest[session], session)
        if session.state is SessionState.READY:  # connected at once, without a handshake
            self._session_ready(session, now)

    def _connect_failed(self, now: float, message: str, *, denied: bool = False) -> None:
        """A session could not connect, or was closed before its handshake was done.

        clamd is unreachable only when no other session is up or still on its
        way: one of several that fails (clamd's listen backlog full for a
        moment, a transient error) while another works is retried without
        saying clamd is down.
        """
        self.stats.connects_failed += 1
        self._last_error = message
        self._next_connect = now + self._backoff * _jitter()
        self._reschedule()
        self._backoff = min(self._backoff * 2, self.settings.backoff_max)
        up = sum(s.state in _UP and not s.retiring for s in self._sessions)
        if up and self._down_since is None:
            say = log.debug if self._extra_failing else log.info  # once until all are up
            say(
                "a further session to clamd at %s could not connect (%s); %d of %d up,"
                " retrying in %.1f s",
                self.address,
                message,
                up,
                self.settings.sessions,
                self._next_connect - now,
            )
            self._extra_failing = True
            return
        self._extra_failing = False
        if not denied:
            self._denied_since = None
        elif self._denied_since is None:
            self._denied_since = now
        if self._down_since is None:
            self._down_since = now
            limit = self.settings.give_up_after
            if limit is None:
                then = "files wait and are retried with backoff"
            else:
                then = f"retrying for up to {min(limit, _DENIED_FOR) if denied else limit:g} s"
            emit(
                EventKind.CLAMD_LOST,
                f"clamd at {self.address} is unreachable: {message}; {then}",
                lazylog.WARNING,
                clamd=str(self.address),
                error=message,
            )

    def _session_ready(self, session: Session, now: float) -> None:
        caps = session.capabilities
        assert caps is not None
        if self._relearn_due:
            self._relearn_limits()  # before anything is sent on it
        if self._down_since is not None:
            waiting = len(self._queue) + self._in_flight()
            emit(
                EventKind.CLAMD_BACK,
                f"clamd at {self.address} answers again after {now - self._down_since:.1f} s;"
                f" {waiting} scan(s) were waiting",
                lazylog.WARNING,
                clamd=str(self.address),
                waited=waiting,
            )
        self._down_since = None
        self._denied_since = None
        if self.sessions_ready >= self.settings.sessions:
            self._extra_failing = False  # the next failed connect is said again
        self._gave_up = False
        self.stats.sessions_opened += 1
        with self._lock:
            first = self._capabilities is None
            self._capabilities = caps
            self._set_caps()  # before the notify: in_flight_limit is then final
            self._ready.notify_all()
        if first:
            log.info(
                "clamd %s at %s: transport %s, %s in flight",
                caps.version or "(version unknown)",
                self.address,
                self._transport_for(caps).value,
                self._cap,
            )

    def _relearn_limits(self) -> None:
        """clamd ended or dropped a session: read its limits again.

        clamd reads clamd.conf when it starts, and answers OK unscanned over
        its limits (settings.py): a MaxFileSize lowered there with a restart
        of clamd would otherwise let larger files be called clean. A restart
        ends every session; so do other faults, which cost a read of
        clamd.conf. (The peer's pid does not tell a restart: under systemd's
        socket activation it is always systemd's.)
        """
        self._relearn_due = False
        if self._relearn is None:
            return
        try:
            fresh = self._relearn()
        except AddressError as exc:
            log.warning(
                "clamd's limits could not be read again after a session to %s ended: %s;"
                " those read before stay",
                self.address,
                exc,
            )
            return
        if fresh.limits == self.settings.limits:
            return
        self.settings = self.settings.with_limits_of(fresh)
        for other in self._sessions:
            other.stream_limit = self.settings.stream_limit
        scan_time = self.settings.max_scan_time
        log.warning(
            "clamd at %s (restarted?) has other limits in its clamd.conf now: the largest file"
            " it scans is %d bytes (%s), StreamMaxLength %s, MaxScanTime %s",
            self.address,
            self.settings.max_file_size,
            self.settings.max_file_size_from,
            self.settings.max_stream_size or "unknown",
            "none" if scan_time is None else f"{scan_time:g} s",
        )

    def _transport_for(self, caps: Capabilities) -> Transport:
        return choose_transport(self.settings.transport, self.address.is_unix, caps.commands)

    def _set_caps(self) -> None:
        self._cap = self._cap_total()
        self._cap_per_session = math.ceil(self._cap / self.settings.sessions)
        # Half of what clamd holds queued beyond its threads: while that many
        # replies gather, every thread still has its next request waiting.
        threads = self._capabilities.max_threads if self._capabilities else None
        self._gather_replies = (self._cap - threads) // 2 if threads else self._cap // 4

    def _cap_total(self) -> int:
        if self.settings.max_in_flight is not None:
            return self.settings.max_in_flight
        caps = self._capabilities
        threads = caps.max_threads if caps is not None else None
        # clamd stops reading from every client while MaxQueue requests (those
        # its threads are scanning included) are queued: stay below it by as
        # many as clamd has threads, so other clients' requests still get in.
        max_queue = self.settings.clamd_max_queue or _CLAMD_MAX_QUEUE
        if caps is None or not threads:
            # clamd's threads unknown (no STATS): leave it half of its queue
            return max(1, min(16, max_queue // 2))
        # Enough that every clamd thread finds its next request waiting even
        # with replies and new requests in transit, while replies gather, and
        # while another of the daemon's threads holds the GIL (up to its 5 ms
        # switch interval). Measured with 4 threads on 2 CPUs, 10,000 small
        # files: over FILDES, 8 in flight left clamd idle between requests; in
        # the daemon's burst 32 still did (1.17 s, clamd 1.12 CPU-s), 48 or 64
        # did not (1.04 s, 1.03 CPU-s), 96 scanned no faster. An INSTREAM
        # request is in flight longer (clamd's main thread takes in the whole
        # stream before a worker scans it): `clamwatch scan --stream` took
        # 1.73x clamdscan's time with 32, 1.12-1.15x with 64, 1.05x with 96,
        # 1.06x with 128.
        if self._transport_for(caps) is Transport.INSTREAM:
            cap = min(max(24 * threads, 24), 96)
        else:
            cap = min(max(16 * threads, 16), 64)
        # clamd raises a MaxQueue below twice MaxThreads to that (server-th.c)
        return min(cap, max(max_queue, 2 * threads) - threads)

    def _session_lost(self, session: Session, reason: str, now: float) -> None:
        was_ready = session.capabilities is not None
        if was_ready and not session.retiring:
            self._relearn_due = True  # clamd ended it: restarted, perhaps
        self._unregister(session)
        lost = session.close()
        self._sessions.remove(session)
        self._reschedule()
        if not was_ready and not lost:
            self._connect_failed(now, reason)
        elif lost:
            # lost with work in flight: reconnect after a growing pause until a
            # verdict shows clamd works, so a clamd that fails every connection
            # does not burn every request's attempts in a tight loop
            self._next_connect = now + self._backoff * _jitter()
            self._reschedule()
            self._backoff = min(self._backoff * 2, self.settings.backoff_max)
            self.stats.sessions_lost += 1
            self.stats.requests_resent += len(lost)
            log.warning(
                "%s to clamd at %s lost (%s); %d request(s) will be sent again",
                session.name,
                self.address,
                reason,
                len(lost),
            )
        for entry in reversed(lost):
            self._requeue(entry, reason)

    def _requeue(self, entry: InFlight, reason: str) -> None:
        job = entry.job
        if entry.local_verdict is not None:
            self._deliver(job, entry.local_verdict, entry.transport, None)
            return
        job.last_failure = reason
        if job.attempts >= self.settings.max_attempts:
            self._deliver(
                job,
                ScanError(f"clamd connection lost {job.attempts} times while scanning ({reason})"),
                entry.transport,
                None,
            )
        else:
            self._queue.appendleft(job)

    def _unregister(self, session: Session) -> None:
        if session in self._interest:
            del self._interest[session]
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(session.sock)

    def _drain(self, now: float) -> None:
        """Stopping: END every session as soon as it is not inside a stream."""
        for session in list(self._sessions):
            if session.state is SessionState.CONNECTING or (
                session.state is SessionState.HANDSHAKE and not session.in_flight
            ):
                # nothing in flight and nothing wrong: closed, not lost (no
                # "clamd unreachable" for a session still in its handshake)
                self._unregister(session)
                session.close()
                self._sessions.remove(session)
            else:
                session.retire(now, "closing")

    # -- work -------------------------------------------------------------------------

    def _in_flight(self) -> int:
        return sum(len(s.in_flight) for s in self._sessions)

    def _has_room(self, session: Session) -> bool:
        ready = session.state is SessionState.READY
        return ready and len(session.in_flight) < self._cap_per_session

    def _dispatch(self, session: Session, now: float) -> None:
        """Send waiting jobs to ``session``, within the in-flight caps."""
        room = self._cap_per_session - len(session.in_flight)
        if room > 0:
            room = min(
                room,
                self._cap - self._in_flight(),
                self.settings.max_requests_per_session - session.requests,
            )
        if room > 0:
            caps = session.capabilities
            assert caps is not None
            transport = self._transport_for(caps)
            queue = self._queue
            # what _refuse looks at is fixed for the session, but for the size
            unoffered = (
                transport is Transport.FILDES
                and bool(caps.commands)
                and "FILDES" not in caps.commands
            )
            if transport is Transport.INSTREAM:
                limit = self.settings.stream_limit
            else:
                limit = self.settings.max_file_size
            while queue and room > 0 and session.accepting:
                job = queue.popleft()
                refused = (
                    self._refuse(job, transport)
                    if unoffered or job.file.identity.size > limit
                    else None
                )
                if refused is not None:
                    self._deliver(job, refused, None, caps.version)
                    continue
                session.begin(job, transport, now)
                self.stats.requests_sent += 1
                room -= 1
        if session.requests >= self.settings.max_requests_per_session:
            # clamd's request ids are C ints: start afresh long before.
            session.retire(now, "rotated")

    def _refuse(self, job: ScanJob, transport: Transport) -> Verdict:
        """Why ``job`` is not sent: larger than clamd takes, or FILDES not offered."""
        size = job.file.identity.size
        limit = self.settings.max_stream_size
        if transport is Transport.INSTREAM and limit is not None and size > limit:
            return NotScanned(
                NotScannedReason.TOO_LARGE,
                f"{size} bytes, larger than clamd's StreamMaxLength ({limit} bytes)",
            )
        limit = self.settings.max_file_size
        if size > limit:
            # clamd 1.4 would answer OK without scanning it (settings.py)
            return NotScanned(
                NotScannedReason.TOO_LARGE,
                f"{size} bytes, larger than the {limit} bytes clamd scans"
                f" ({self.settings.max_file_size_from})",
            )
        return NotScanned(
            NotScannedReason.UNSUPPORTED, f"clamd at {self.address} does not offer FILDES"
        )

    def _deliver(
        self, job: ScanJob, verdict: Verdict, transport: Transport | None, version: str | None
    ) -> None:
        self.stats.verdicts += 1
        try:
            job.on_done(job, ScanOutcome(verdict, transport, version, job.attempts))
        except Exception:
            log.exception("a scan callback failed for %s", job.file.path)

    # -- I/O --------------------------------------------------------------------------

    def _service(self, session: Session, mask: int, now: float) -> None:
        try:
            if mask & selectors.EVENT_READ:
                self._read(session, now)
                # a retiring session's last reply: its END goes in this same turn
                session.finish_retiring(now)
                if (self._queue and self._has_room(session)) or session.wants_write:
                    # replies freed room: send the next requests in this same turn
                    mask |= selectors.EVENT_WRITE
                elif session.in_flight and session.state is not SessionState.CLOSED:
                    # no request of ours will carry the ACK for what was read
                    # (the end of a scan, a light load): over TCP, clamd's
                    # next reply waits for it
                    self.stats.quick_acks += session.acknowledge()
            if mask & selectors.EVENT_WRITE and session.state is not SessionState.CLOSED:
                self._write(session, now)
        except ClamdConnectionError as exc:
            if session.state is not SessionState.CONNECTING:
                # clamd may have answered before it closed: take that. A
                # failed connect has nothing to take, and the EOF read after
                # it would hide why it failed ("Connection refused")
                self._read_remaining(session, now)
            if session.state is not SessionState.CLOSED:
                self._session_lost(session, str(exc), now)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            log.warning("%s: clamd protocol error: %s", session.name, exc)
            self._session_lost(session, f"protocol error: {exc}", now)

    def _read(self, session: Session, now: float) -> bool:
        """Handle what one read brings; False when there was nothing to read."""
        events = session.on_readable()
        for event in events:
            self._handle(session, event, now)
            if session.state is SessionState.CLOSED:
                return True
        if session.failure is not None:
            raise session.failure
        return bool(events)

    def _write(self, session: Session, now: float) -> None:
        if session.state is SessionState.CONNECTING:
            session.on_writable(now)
            if session.capabilities is not None:  # READY at once: no handshake asked
                self._session_ready(session, now)
        if self._queue and session.accepting:
            self._dispatch(session, now)
        if session.wants_write:
            streaming = not session.accepting
            session.on_writable(now)
            if streaming and self._queue and session.accepting:
                # a stream ended within what the socket took: the next may start
                self._dispatch(session, now)
                session.on_writable(now)

    def _read_remaining(self, session: Session, now: float) -> None:
        """A write failed: clamd may have answered and closed (StreamMaxLength).

        Take the replies already in the socket before calling the rest lost.
        """
        with contextlib.suppress(ClamdConnectionError, RemoteProtocolError, LocalProtocolError):
            while session.state is not SessionState.CLOSED and self._read(session, now):
                pass

    def _handle(self, session: Session, event: Event, now: float) -> None:
        if type(event) is ScanReply:  # nearly every event: no handshake reply is one
            self._scan_reply(session, event, now)
            return
        if session.handle_handshake(event, now):
            if session.state is SessionState.READY:
                self._session_ready(session, now)
            elif session.refused and self._probe:
                self._probe = False
                log.warning(
                    "clamd at %s refused the handshake (%s); assuming no FILDES and"
                    " default limits from now on",
                    self.address,
                    session.refused,
                )
            return
        if isinstance(event, ScanReply):
            self._scan_reply(session, event, now)
        elif isinstance(event, Pong):
            session.pong(event.request_id)
        elif isinstance(event, SessionEnded):
            if session.capabilities is None and event.reason != "COMMAND READ TIMED OUT":
                # an id-less refusal of the handshake: do without it from now on
                self._probe = False
                log.warning(
                    "clamd at %s ended the session during the handshake (%s); assuming no"
                    " FILDES and default limits from now on",
                    self.address,
                    event.reason,
                )
            if event.reason == "COMMAND READ TIMED OUT":
                self._keepalive = max(0.5, self._keepalive / 2)
                self._reschedule()
                log.warning(
                    "clamd ended %s for idleness (ReadTimeout); keepalive now every %.1f s",
                    session.name,
                    self._keepalive,
                )
            session.state = SessionState.DRAINING
            session.end_reason = event.reason
        elif isinstance(event, ConnectionClosed):
            reason = session.end_reason or "clamd closed the connection"
            if session.eicar_pending:
                self._eicar_failed(session, reason + _EICAR_CLOSED, now)
            else:
                self._session_lost(session, reason, now)
        elif isinstance(event, CommandFailed):
            log.warning(
                "%s: clamd refused request %d: %s", session.name, event.request_id, event.message
            )
        else:
            raise RemoteProtocolError(f"unexpected reply {event!r}")

    def _scan_reply(self, session: Session, event: ScanReply, now: float) -> None:
        entry = session.take(event)
        if entry is None:
            self._eicar_reply(session, event, now)
            return
        verdict = entry.local_verdict or event.verdict
        if type(verdict) is Clean:
            took = now - entry.sent_at
            limit = self.settings.max_scan_time
            if limit is not None and took >= limit:
                # clamd 1.4 answers OK for a scan it stops at MaxScanTime
                # (settings.py); one that took less was not stopped
                verdict = NotScanned(
                    NotScannedReason.TIME_LIMIT,
                    f"clamd answered OK after {took:.3g} s, as late as its MaxScanTime"
                    f" ({limit:g} s), when it stops a scan and answers OK",
                )
            elif entry.transport is Transport.FILDES and (
                grown := self._grown_past_limit(entry.job)
            ):
                verdict = grown
            elif session.eicar_check:
                # delivered once a check sent after it passes: clamd 1.4
                # answers OK unscanned when it cannot make its per-scan
                # folder. A stream needs a temporary file before that, and
                # clamd closes the connection when it cannot make one; but
                # with one inode left the temporary file takes it, and the
                # stream gets OK unscanned (measured). Holding streams cost
                # `scan --stream` nothing beyond the noise (HISTORY.md).
                if not session.held and not session.eicar_pending:
                    # the loop must wake when this one's check is due (_next_wakeup)
                    self._wakeup_at = min(self._wakeup_at, now + CONFIRM_WAIT)
                session.hold(entry, verdict, now)
                return
        self._backoff = self.settings.backoff_initial  # clamd works: reconnect at once
        version = session.capabilities.version if session.capabilities else None
        self._deliver(entry.job, verdict, entry.transport, version)

    def _grown_past_limit(self, job: ScanJob) -> NotScanned | None:
        """Why an OK to a FILDES does not count: the file grew past the size clamd
        scans after its open here (a log being written), and clamd 1.4 answers OK
        without scanning a file over its limit (settings.py). It may have grown
        only after clamd scanned it: then this errs towards "not scanned"."""
        limit = self.settings.max_file_size
        if limit >= UNLIMITED or job.file.fd < 0:
            return None  # AlertExceedsMax: clamd reports such a file itself
        size = os.fstat(job.file.fd).st_size
        if size <= limit:
            return None
        return NotScanned(
            NotScannedReason.TOO_LARGE,
            f"grew to {size} bytes while clamd had it, larger than the {limit} bytes clamd"
            f" scans ({self.settings.max_file_size_from})",
        )

    def _update_interest(self) -> None:
        for session in self._sessions:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if session.wants_write else 0)
            if self._interest.get(session) != want:
                self._interest[session] = want
                self._selector.modify(session.sock, want, session)

    # -- time ---------------------------------------------------------------------------

    # -- the EICAR check ---------------------------------------------------------

    def _eicar_reply(self, session: Session, event: ScanReply, now: float) -> None:
        was_ready = session.state is SessionState.READY
        answer = session.take_eicar_reply(event, now)
        if answer is None:
            raise RemoteProtocolError(f"reply for request {event.request_id} not in flight")
        verdict, confirmed = answer
        if isinstance(verdict, Infected):
            self._backoff = self.settings.backoff_initial  # clamd works: reconnect at once
            if not was_ready and session.state is SessionState.READY:
                self._session_ready(session, now)
            version = session.capabilities.version if session.capabilities else None
            for entry, clean in confirmed:
                self._deliver(entry.job, clean, entry.transport, version)
            return
        if isinstance(verdict, NotScanned) and verdict.reason is NotScannedReason.UNSUPPORTED:
            problem = (
                f"clamd refused the EICAR check ({verdict.detail}): a command disabled in"
                " clamd.conf? Then set eicar_check = false"
            )
        else:
            problem = f"clamd answered {describe(verdict)!r} for the EICAR test file: it " + (
                "is not scanning (its TemporaryDirectory full or not writable? clamd's log"
                " says), or its databases lack the EICAR signature (then set eicar_check ="
                " false)"
                if isinstance(verdict, Clean)
                else "cannot scan (its TemporaryDirectory full or not writable? clamd's log says)"
            )
        self._eicar_failed(session, problem, now)

    def _eicar_failed(self, session: Session, problem: str, now: float) -> None:
        """clamd failed the EICAR check: drop every session to it as lost.

        One clamd serves them all, so no session's held clean replies are
        delivered: like what was in flight, those files are scanned again
        once a clamd passes the check. (Dropping only this session let
        another's check pass once the TemporaryDirectory was freed, and
        confirm OKs clamd gave while it was full: measured, an EICAR file
        reported clean.)
        """
        held = sum(len(s.held) for s in self._sessions)
        if held:
            log.error(
                "%s; the %d file(s) clamd called clean since the last checks will be scanned again",
                problem,
                held,
            )
        for lost in [session, *(s for s in self._sessions if s is not session)]:
            if lost.state is not SessionState.CLOSED:
                self._session_lost(lost, problem, now)

    def _timers(self, now: float) -> None:
        timeout = self.settings.request_timeout
        for session in list(self._sessions):
            if session.state in (SessionState.CONNECTING, SessionState.HANDSHAKE):
                if now - session.created > self.settings.connect_timeout:
                    self._session_lost(session, "no answer to the handshake", now)
                continue
            oldest = next(iter(session.in_flight.values()), None)
            if oldest is not None and now - oldest.sent_at > timeout:
                self._session_lost(session, f"no reply within {timeout:g} s (clamd stuck?)", now)
                continue
            if session.ping_pending and now - session.ping_sent_at > timeout:
                # nothing else may go until the PONG: without this deadline,
                # files queued behind it would wait for a stuck clamd forever
                self._session_lost(session, f"no answer to a PING within {timeout:g} s", now)
                continue
            if session.eicar_pending and now - session.eicar_sent_at > timeout:
                unanswered = f"no answer to the EICAR check within {timeout:g} s"
                self._eicar_failed(session, unanswered, now)
                continue
            if now - session.last_send >= self._keepalive:
                # an idle session: the check keeps it alive too, and sees a
                # clamd that stopped scanning before the next files come
                if session.eicar_check and session.accepting and not session.eicar_pending:
                    session.check_eicar(now)
                else:
                    session.ping(now)
        self._check_give_up(now)

    def _give_up_at(self) -> float | None:
        """When an engine that gives up does, if clamd stays unreachable; None: never."""
        limit = self.settings.give_up_after
        if limit is None or self._down_since is None:
            return None
        if self._denied_since is not None:
            return min(self._down_since + limit, self._denied_since + _DENIED_FOR)
        return self._down_since + limit

    def _check_give_up(self, now: float) -> None:
        down_since, give_up_at = self._down_since, self._give_up_at()
        if down_since is None or give_up_at is None or now < give_up_at:
            return
        if any(s.state is SessionState.READY for s in self._sessions):
            return
        if not self._gave_up and self._queue:
            log.error(
                "clamd unreachable for %.1f s at %s; failing waiting scans",
                now - down_since,
                self.address,
            )
        self._gave_up = True
        while self._queue:
            job = self._queue.popleft()
            self._deliver(
                job,
                ScanError(f"clamd unreachable at {self.address}: {self._last_error}"),
                None,
                None,
            )

    def _reschedule(self) -> None:
        """Sessions or backoff changed: recompute the timers at the next turn."""
        self._timers_due = 0.0
        self._wakeup_at = 0.0

    def _next_wakeup(self, now: float, drain_deadline: float | None) -> float:
        candidates = [now + self._keepalive]
        if drain_deadline is not None:
            candidates.append(drain_deadline)
        live = sum(not s.ending for s in self._sessions)
        if live < self.settings.sessions and not self._stopping:
            candidates.append(self._next_connect)
        give_up_at = self._give_up_at()
        if give_up_at is not None:
            candidates.append(give_up_at)
        for session in self._sessions:
            if session.held and not session.eicar_pending:
                candidates.append(session.held_since + CONFIRM_WAIT)
        for session in self._sessions:
            candidates.append(session.last_send + self._keepalive)
            if session.state in (SessionState.CONNECTING, SessionState.HANDSHAKE):
                candidates.append(session.created + self.settings.connect_timeout)
            oldest = next(iter(session.in_flight.values()), None)
            if oldest is not None:
                candidates.append(oldest.sent_at + self.settings.request_timeout)
            if session.ping_pending:
                candidates.append(session.ping_sent_at + self.settings.request_timeout)
        # at least once a second, so that the heartbeat shows a live loop
        candidates.append(now + 1.0)
        return min(candidates)

    def _shutdown(self) -> None:
        unfinished = list(self._queue)
        self._queue.clear()
        for session in list(self._sessions):
            self._unregister(session)
            unfinished.extend(entry.job for entry in session.close())
        self._sessions.clear()
        with self._lock:
            self._stopping = True
            unfinished.extend(self._inbox)
            self._inbox.clear()
            self._ready.notify_all()
        self._unfinished = unfinished
        self._stopped.set()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def _jitter() -> float:
    """A factor from 0.8 to 1.2 for a reconnect's pause, so that clients lost together spread out.

    random is imported here, on the first reconnect, not with the module: it
    cost `clamwatch scan` 0.7 ms of its start, and a scan rarely reconnects.
    """
    import random

    return random.uniform(0.8, 1.2)
