"""`clamwatch run` held to its numbers, side by side with clamdscan and clamonacc, in one run.

The numbers (shared design, "Numbers this project is held to"):

- burst: every file of a burst of 10,000 small files gets exactly one
  verdict, all of them within 1.2x the time `clamdscan --multiscan --fdpass`
  needs for the same files after the burst, on the same clamd (the burst
  is repeated in rounds, each paired with its own clamdscan runs, and the
  median of the rounds' ratios is held to the target). clamd's cache of
  clean hashes is emptied (a database reload) before each timed clamdscan
  run: the daemon has just scanned those files, and a clamdscan run that
  finds them all cached does a lookup per file, not the scan a scan after
  the burst would be without clamwatch. The same run with the cache warm is
  shown beside it;
- light load: from close() to verdict, p50 <= 20 ms and p99 <= 50 ms;
- memory: peak RSS < 100 MiB while 200,000 files arrive with clamd stopped,
  and all 200,000 get their verdict once clamd is back.

clamonacc (Debian's clamav-daemon ships it) takes the same kind of burst in
a directory of its own, with a clamd of its own (its on-access settings must
not touch the clamd the others share); how many files it scanned and
detected, and when it finished, are reported beside clamwatch's.

Writers are separate processes (no GIL shared with the reader of the
daemon's events), started together once each has its content ready. Times
are CLOCK_MONOTONIC, which every process on the machine shares: the writers
stamp right after each close(), the reader thread stamps each JSON event as
it comes out of the daemon's stderr pipe. A verdict's latency is the second
minus the first: what a user of the events would see, pipe and JSON
included; the daemon's own latency_ms (from the kernel event it saw) and
the event's "time" (wall clock, ms) are reported beside it.

Every answer is checked: each file exactly one verdict, the infected ones
`detection` with the test signature, the others `clean`; clamdscan's FOUND
lines exactly the infected files still in the tree (the shipped policy moves
infected files to the quarantine, which lives in the work folder here). A
wrong answer is printed loudly and the exit status is 2, whatever the
timings.

tests/ is put on sys.path to reuse tests/daemonproc.py (DaemonProcess,
write_config); benchmarks/bench_scan.py provides the check of clamdscan's
output and the interpreter environment the tools run with. Run it as
``.venv/bin/python benchmarks/bench_daemon.py``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import pwd
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _extra_path in (_HERE, _HERE.parent / "tests"):
    if str(_extra_path) not in sys.path:
        sys.path.insert(0, str(_extra_path))

from bench_scan import (  # noqa: E402
    Tool,
    WrongAnswerError,
    add_clamd_tmpdir_option,
    check_output,
    clamd_tmp_setting,
    clamd_version,
    tool_environment,
)
from scratchfs import add_ext4_image_option, scratch_folder  # noqa: E402

from clamwatch.privateclamd import PrivateClamd  # noqa: E402
from clamwatch.testsig import EICAR_SIGNATURE, eicar_bytes  # noqa: E402
from daemonproc import VERDICT_EVENTS, DaemonProcess, write_config  # noqa: E402

CLAMONACC_BINARY = Path("/usr/sbin/clamonacc")

_INFECTED_FRACTION = 0.01
_FILES_PER_DIR = 50  # burst and light: leaf directories of 50 files, as bench_scan
_MIN_SIZE, _MAX_SIZE = 200, 8 * 1024  # burst: log-uniform sizes, as bench_scan
_MEM_MIN_SIZE, _MEM_MAX_SIZE = 64, 1024  # memory phase: 200,000 files, keep them small
_POOL_SIZE = 1 << 20  # content is sliced from a random pool (writing must be fast)

_EXIT_MISS = 1  # --strict and a target missed
_EXIT_WRONG = 2  # a wrong answer (missing or duplicate verdicts), or the setup failed

_BUSY_LOAD = 0.5  # 1-minute load average that gets a warning before timing

# After the last expected verdict, wait this long past settle_time for late
# duplicates (a file seen by a walk and by its event) before checking.
_QUIET_EXTRA = 3.0
_DAEMON_SETTLE_TIME = 2.0  # the daemon's default settle_time, kept as shipped


# -- writers (separate processes) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteJob:
    files: list[tuple[str, int, bool]]  # (path, size of the filler, infected)
    seed: int
    interval: float = 0.0  # seconds between files; 0: as fast as possible
    make_dirs: bool = True  # create each file's directory on the way (the mkdir race)
    record: bool = False  # keep every file's close time


@dataclass(frozen=True, slots=True)
class WriteLog:
    first_write: float  # monotonic, just before the first open()
    last_close: float  # monotonic, just after the last close()
    closes: list[tuple[str, float, float]]  # (path, monotonic, wall) after close(), if recorded
    cpu_seconds: float  # user+sys of this writer from its first write to its last close


def _pools(seed: int) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    words = [
        b"invoice", b"report", b"upload", b"customer", b"total", b"amount", b"lorem",
        b"ipsum", b"dolor", b"quarterly", b"summary", b"draft", b"final", b"2024",
    ]  # fmt: skip
    text = bytearray()
    while len(text) < _POOL_SIZE:
        text += rng.choice(words) + b" "
    return rng.randbytes(_POOL_SIZE), bytes(text[:_POOL_SIZE])


def _write_all(job: WriteJob, pools: tuple[bytes, bytes]) -> WriteLog:
    eicar = eicar_bytes()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    made: set[str] = set()
    closes: list[tuple[str, float, float]] = []
    cpu = time.process_time()
    first = time.monotonic()
    for number, (path, size, infected) in enumerate(job.files):
        if job.interval:
            delay = first + number * job.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if job.make_dirs:
            directory = os.path.dirname(path)
            if directory not in made:
                os.makedirs(directory, exist_ok=True)
                made.add(directory)
        pool = pools[number % 2]
        offset = (number * 7919) % (len(pool) - size)
        # the path makes every content unique: clamd caches clean hashes
        body = (eicar + b"\n" if infected else b"") + os.fsencode(path) + b"\n"
        view = memoryview(body + pool[offset : offset + size])
        fd = os.open(path, flags, 0o644)
        try:
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        if job.record:
            closes.append((path, time.monotonic(), time.time()))
    last = time.monotonic()
    return WriteLog(first, last, closes, time.process_time() - cpu)


def _writer_main(job: WriteJob, ready: Any, go: Any, results: Any) -> None:
    """One writer process: prepare, say ready, wait for the common start, write."""
    pools = _pools(job.seed)
    ready.put(os.getpid())
    go.wait()
    try:
        results.put(_write_all(job, pools))
    except BaseException as exc:
        results.put(f"writer {os.getpid()} failed: {exc!r}")
        raise


def run_writers(jobs: list[WriteJob], timeout: float = 3600.0) -> list[WriteLog]:
    """Start one process per job, release them together, collect their logs."""
    ctx = multiprocessing.get_context("spawn")  # the parent has threads: never fork
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    processes = [
        ctx.Process(target=_writer_main, args=(job, ready, go, results), name=f"writer-{n}")
        for n, job in enumerate(jobs)
    ]
    for process in processes:
        process.start()
    try:
        waiting = len(processes)
        deadline = time.monotonic() + 120
        while waiting:
            try:
                ready.get(timeout=0.5)
                waiting -= 1
            except queue.Empty:
                dead = [p for p in processes if p.exitcode is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"writer processes did not start: exit status {[p.exitcode for p in dead]}"
                    ) from None
        go.set()
        logs: list[WriteLog] = []
        for _ in processes:
            got = results.get(timeout=timeout)
            if not isinstance(got, WriteLog):
                raise RuntimeError(str(got))
            logs.append(got)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    return logs


# -- the files ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileSet:
    root: Path
    paths: list[str]
    infected: set[str]
    jobs: list[WriteJob]


def plan_burst(root: Path, count: int, writers: int, seed: int, make_dirs: bool) -> FileSet:
    """``count`` files in leaf directories of 50, each writer its own subtree; 1% infected."""
    rng = random.Random(seed)
    infected_at = set(rng.sample(range(count), max(1, round(count * _INFECTED_FRACTION))))
    shares: list[list[tuple[str, int, bool]]] = [[] for _ in range(writers)]
    paths: list[str] = []
    infected: set[str] = set()
    for index in range(count):
        writer = index % writers
        mine = index // writers
        leaf = mine // _FILES_PER_DIR
        ext = "bin" if index % 2 else "txt"
        path = str(root / f"w{writer}" / f"d{leaf:03d}" / f"f{index:06d}.{ext}")
        size = round(_MIN_SIZE * (_MAX_SIZE / _MIN_SIZE) ** rng.random())
        shares[writer].append((path, size, index in infected_at))
        paths.append(path)
        if index in infected_at:
            infected.add(path)
    if not make_dirs:
        for path in paths:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    jobs = [WriteJob(share, seed=seed + n, make_dirs=make_dirs) for n, share in enumerate(shares)]
    return FileSet(root, paths, infected, jobs)


def plan_light(root: Path, count: int, interval: float, seed: int, percent: float) -> FileSet:
    rng = random.Random(seed)
    infected_at = set(rng.sample(range(count), min(count, round(count * percent / 100))))
    files = [
        (str(root / f"f{index:06d}.txt"), rng.randrange(200, 2048), index in infected_at)
        for index in range(count)
    ]
    root.mkdir(parents=True, exist_ok=True)
    job = WriteJob(files, seed=seed, interval=interval, make_dirs=False, record=True)
    return FileSet(root, [f[0] for f in files], {f[0] for f in files if f[2]}, [job])


def plan_memory(root: Path, count: int, dirs: int, writers: int, seed: int) -> FileSet:
    """``count`` small files spread over ``dirs`` directories (made before the daemon starts)."""
    rng = random.Random(seed)
    infected_at = set(rng.sample(range(count), max(1, round(count * _INFECTED_FRACTION))))
    for number in range(dirs):
        (root / f"d{number:03d}").mkdir(parents=True, exist_ok=True)
    shares: list[list[tuple[str, int, bool]]] = [[] for _ in range(writers)]
    paths: list[str] = []
    infected: set[str] = set()
    for index in range(count):
        directory = index % dirs
        path = str(root / f"d{directory:03d}" / f"f{index:06d}")
        size = round(_MEM_MIN_SIZE * (_MEM_MAX_SIZE / _MEM_MIN_SIZE) ** rng.random())
        shares[directory * writers // dirs].append((path, size, index in infected_at))
        paths.append(path)
        if index in infected_at:
            infected.add(path)
    jobs = [WriteJob(share, seed=seed + n, make_dirs=False) for n, share in enumerate(shares)]
    return FileSet(root, paths, infected, jobs)


# -- the daemon, with arrival times -------------------------------------------------------


# What a verdict event's JSON line holds (the daemon's encoder writes ": " after a key).
_VERDICT_MARKS = tuple(f'"event": "{kind}"'.encode() for kind in VERDICT_EVENTS)


def _parse_line(raw: bytes) -> tuple[str, Any]:
    """A line of the daemon's log, and the JSON object it holds (None: not JSON)."""
    line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
    try:
        return line, json.loads(line)
    except ValueError:
        return line, None


@dataclass(frozen=True, slots=True)
class Seen:
    """One verdict event as the reader thread saw it."""

    event: str
    arrived: float  # monotonic, when its line came out of the pipe
    latency_ms: float | None  # the daemon's own: from the kernel event it saw
    time: str  # the event's wall clock, UTC, ms
    reason: str
    action: str  # what the watch's policy did about it ("move" for infected by default)
    signature: str | None


class TimedDaemon(DaemonProcess):
    """DaemonProcess whose reader stamps every verdict with its arrival time.

    Verdicts are kept compactly by path (200,000 of them in the memory
    phase), not in ``events``; waiting for a set of files is O(1) per line.

    With ``expect(paths, defer=True)`` (the burst) the reader only stamps and
    keeps each line, and the lines are parsed once the verdicts may all be
    in: parsing them as they came took the benchmark 0.11-0.14 CPU-s per
    burst of 10,000 (json.loads and the bookkeeping, measured), CPU the
    daemon and clamd needed on two CPUs, while clamdscan's output goes to a
    file that nobody reads meanwhile. The arrival times are the same either
    way: each line is stamped as it comes out of the pipe.
    """

    _KEEP_LOG_EVENTS = 2000

    def __init__(self, config: Path) -> None:
        self.seen: dict[str, list[Seen]] = {}
        self.log_events = 0
        self.log_messages: Counter[str] = Counter()
        self._expected: frozenset[str] = frozenset()
        self._hits = 0
        self.last_hit = 0.0
        # deferred parsing (see the class's docstring): lines as they came,
        # and how many of them look like verdicts
        self._deferred = False
        self._backlog: list[tuple[float, bytes]] = []
        self._marked = 0
        self.parse_cpu = 0.0  # CPU-s spent parsing deferred lines, after they came
        super().__init__(config)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            arrived = time.monotonic()
            with self._cond:
                if self._deferred:
                    self._backlog.append((arrived, raw))
                    if any(mark in raw for mark in _VERDICT_MARKS):
                        self._marked += 1
                        if self._marked >= self._missing:
                            self._cond.notify_all()
                    continue
            self._take(arrived, raw)
        with self._cond:
            self._cond.notify_all()  # the daemon has ended: nobody waits for more

    def _take(self, arrived: float, raw: bytes) -> None:
        line, event = _parse_line(raw)
        with self._cond:
            self._parsed(arrived, line, event)

    def _parsed(self, arrived: float, line: str, event: Any) -> None:
        if not isinstance(event, dict):
            self.other_lines.append(line)
            self._cond.notify_all()
            return
        kind = event.get("event")
        if kind in VERDICT_EVENTS:
            self._verdict(event, kind, arrived)
            return
        event["_arrived"] = arrived
        if kind == "log":
            self.log_events += 1
            self.log_messages[str(event.get("message", ""))[:60]] += 1
            if self.log_events > self._KEEP_LOG_EVENTS:
                return
        self.events.append(event)
        self._cond.notify_all()

    def _drain(self) -> None:
        """Parse the lines kept while deferred (hold self._cond)."""
        backlog, self._backlog, self._marked = self._backlog, [], 0
        started = time.thread_time()
        for arrived, raw in backlog:
            self._parsed(arrived, *_parse_line(raw))
        self.parse_cpu += time.thread_time() - started

    def _verdict(self, event: dict[str, Any], kind: str, arrived: float) -> None:
        path = str(event.get("path"))
        latency = event.get("latency_ms")
        records = self.seen.setdefault(path, [])
        records.append(
            Seen(
                kind,
                arrived,
                float(latency) if isinstance(latency, int | float) else None,
                str(event.get("time", "")),
                str(event.get("reason", "")),
                str(event.get("action", "")),
                event.get("signature"),
            )
        )
        if len(records) == 1 and path in self._expected:
            self._hits += 1
            self.last_hit = arrived
            if self._hits >= len(self._expected):
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.process.pid

    def expect(self, paths: Sequence[str], *, defer: bool = False) -> None:
        """From now on, count first verdicts for ``paths``; ``defer``: parse lines later."""
        with self._cond:
            self._drain()
            self._expected = frozenset(paths)
            self._hits = sum(1 for p in self._expected if p in self.seen)
            self.last_hit = 0.0
            self._deferred = defer

    @property
    def _missing(self) -> int:
        """Expected files with no verdict among the lines parsed so far (hold self._cond)."""
        return len(self._expected) - self._hits

    @property
    def hits(self) -> int:
        with self._cond:
            return self._hits

    def wait_expected(self, timeout: float) -> bool:
        """True once every expected file has a verdict; False at the deadline or exit.

        Deferred lines are parsed when as many verdict-like lines came as
        files lack a verdict, when none came for half a second, or at the
        end; parsing is then back to each line as it comes.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            try:
                stalled = False
                while True:
                    if not self._deferred or self._marked >= self._missing or stalled:
                        self._drain()
                        if self._hits >= len(self._expected):
                            return True
                    left = deadline - time.monotonic()
                    if left <= 0 or self.process.poll() is not None:
                        self._drain()
                        return self._hits >= len(self._expected)
                    marked = self._marked
                    self._cond.wait(min(left, 0.5))
                    stalled = self._marked == marked
            finally:
                self._drain()
                self._deferred = False

    def records(self, path: str) -> list[Seen]:
        with self._cond:
            return list(self.seen.get(path, ()))

    def under(self, root: Path) -> dict[str, list[Seen]]:
        prefix = str(root).rstrip("/") + "/"
        with self._cond:
            return {p: list(v) for p, v in self.seen.items() if p.startswith(prefix)}


# -- checks ------------------------------------------------------------------------------


@dataclass(slots=True)
class Correctness:
    files: int
    with_verdict: int
    missing: int
    duplicates: int  # files with more than one verdict
    wrong: int  # infected not `detection`, clean not `clean`
    stray: int  # verdicts for paths that were never written
    late: int  # files still without a verdict when the wait for them timed out
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.wrong or self.stray or self.late)

    def summary(self) -> str:
        if self.ok:
            return f"OK: {self.files} files, one verdict each"
        return (
            f"WRONG: {self.files} files, {self.late} without verdict at the deadline,"
            f" {self.missing} without verdict at the end, {self.duplicates} with"
            f" more than one, {self.wrong} wrong verdicts, {self.stray} unknown paths"
            + (f"; e.g. {'; '.join(self.examples[:5])}" if self.examples else "")
        )


def check_verdicts(daemon: TimedDaemon, files: FileSet, late: int) -> Correctness:
    """Every file exactly one right verdict; ``late``: files without one at the deadline."""
    found = daemon.under(files.root)
    result = Correctness(len(files.paths), 0, 0, 0, 0, 0, late)
    for path in files.paths:
        records = found.pop(path, None)
        if not records:
            result.missing += 1
            if len(result.examples) < 8:
                result.examples.append(f"no verdict for {path}")
            continue
        result.with_verdict += 1
        if len(records) > 1:
            result.duplicates += 1
            if len(result.examples) < 8:
                reasons = ", ".join(f"{r.event} ({r.reason})" for r in records)
                result.examples.append(f"{len(records)} verdicts for {path}: {reasons}")
        infected = path in files.infected
        want = "detection" if infected else "clean"
        got = records[0]
        if got.event != want or (infected and got.signature != EICAR_SIGNATURE):
            result.wrong += 1
            if len(result.examples) < 8:
                result.examples.append(
                    f"{path}: {got.event} {got.signature or ''}, expected {want}"
                )
    result.stray = len(found)
    result.examples += [f"verdict for unknown path {p}" for p in list(found)[:3]]
    return result


def io_pressure() -> float | None:
    """The share of the last 10 s some task waited for I/O, in % (PSI), if the kernel says."""
    try:
        line = Path("/proc/pressure/io").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(item.split("=", 1) for item in line.split()[1:])
    return float(fields.get("avg10", "nan"))


def wait_for_quiet_disk(limit: float = 5.0, cap: float = 120.0) -> float:
    """Wait (at most ``cap`` s) until I/O pressure is below ``limit`` %; seconds waited.

    Removing the files of an earlier run (200,000 in the memory phase), or the
    writeback of the last burst, keeps the disk busy for a while after: a
    burst is not to pay for it.
    """
    started = time.monotonic()
    while time.monotonic() - started < cap:
        pressure = io_pressure()
        if pressure is None or pressure < limit:
            break
        time.sleep(1.0)
    return time.monotonic() - started


def _wait_quiet() -> None:
    """Give late duplicates (a walk's settled entries) time to show up."""
    time.sleep(_DAEMON_SETTLE_TIME + _QUIET_EXTRA)


# -- process measurements ---------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """user+sys seconds of a running process, from /proc/PID/stat (proc(5))."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and friends from /proc/PID/status, in KiB."""
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return found
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Vm") and value.strip().endswith("kB"):
            found[key] = int(value.split()[0])
    return found


class RssSampler:
    """Samples a process's VmRSS every 50 ms on a thread; VmHWM is the kernel's exact peak."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid = pid
        self.every = every
        self.max_rss_kib = 0
        self.series: list[tuple[float, int]] = []  # (monotonic, VmRSS KiB), one a second
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last_kept = 0.0
        while not self._stop.wait(self.every):
            rss = memory_kib(self.pid).get("VmRSS")
            if rss is None:
                return
            self.max_rss_kib = max(self.max_rss_kib, rss)
            now = time.monotonic()
            if now - last_kept >= 1.0:
                self.series.append((now, rss))
                last_kept = now


@contextlib.contextmanager
def profiled(pid: int, directory: Path | None, name: str) -> Iterator[None]:
    """py-spy record (raw; the thread holding the GIL) of ``pid`` meanwhile, with --profile DIR."""
    if directory is None:
        yield
        return
    spy = Path(sys.executable).parent / "py-spy"
    output = directory / f"{name}.txt"
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--rate", "100", "--threads", "--gil",
         "--nonblocking", "--format", "raw", "-o", str(output)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        end_process(process, signal.SIGINT, 60.0)  # py-spy writes its profile at SIGINT
        _say(f"py-spy profile of {name}: {output}")


def end_process(process: subprocess.Popen[bytes], signum: int, timeout: float) -> None:
    """Send ``signum``, wait up to ``timeout`` s, then kill; returns once it has ended."""
    if process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Percentiles:
    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        if not values:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan)
        if len(values) == 1:
            return cls(1, values[0], values[0], values[0], values[0])
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(len(values), cuts[49], cuts[89], cuts[98], max(values))


@dataclass(slots=True)
class BurstResult:
    files: int
    infected: int
    writers: int
    directories_made_during_burst: bool
    writers_seconds: float  # first write to last close
    clamwatch_seconds: float  # first write to the last verdict's arrival
    after_last_close_seconds: float  # last close to last verdict
    daemon_cpu_seconds: float
    clamd_cpu_seconds: float
    writers_cpu_seconds: float  # user+sys of the writers while they wrote (the kernel's part too)
    # this benchmark's own, first write to last verdict (its reader of the daemon's log)
    bench_cpu_seconds: float
    daemon_latency_ms: Percentiles  # the daemon's latency_ms over the burst
    reasons: dict[str, int]
    actions: dict[str, int]
    infected_left_in_tree: int  # after the burst (the default policy moves them out)
    correctness: Correctness
    clamdscan_seconds: list[float] = field(default_factory=list)
    clamdscan_clamd_cpu_seconds: list[float] = field(default_factory=list)
    clamdscan_median: float = float("nan")
    ratio: float = float("nan")  # clamwatch_seconds / clamdscan_median
    # The same clamdscan run again right after each timed one, with clamd's
    # cache of clean hashes holding every file: shown, not held to the target.
    clamdscan_warm_seconds: list[float] = field(default_factory=list)
    clamdscan_warm_median: float = float("nan")
    ratio_warm: float = float("nan")  # clamwatch_seconds / clamdscan_warm_median
    clamdscan_error: str | None = None


@dataclass(slots=True)
class LightResult:
    files: int
    infected: int
    actions: dict[str, int]
    interval_ms: float
    writer_seconds: float
    close_to_arrival_ms: Percentiles  # the measure held to the targets
    daemon_latency_ms: Percentiles  # the daemon's own latency_ms
    close_to_event_time_ms: Percentiles  # event "time" (ms) minus the writer's wall clock
    correctness: Correctness


@dataclass(slots=True)
class ClamonaccResult:
    ran: bool
    error: str | None = None
    command: str = ""
    clamd_settings: dict[str, str] = field(default_factory=dict)
    files: int = 0
    infected: int = 0
    writers_seconds: float = 0.0
    # from its clamd's log (LogClean yes: one line per scan clamd did)
    scans: int = 0  # scan results for the burst's files, repeats included
    files_scanned: int = 0  # distinct files clamd scanned
    files_never_scanned: int = 0
    found_lines: int = 0
    files_detected: int = 0  # distinct infected files reported FOUND
    infected_missed: int = 0
    false_detections: int = 0
    last_scan_seconds: float = 0.0  # first write to clamd's last result line
    last_found_seconds: float = 0.0  # first write to clamd's last FOUND line
    # from clamonacc's own log (-v): the scans it says it started
    scan_lines: int = 0  # "performing scanning" (fanotify events)
    extra_scan_lines: int = 0  # "performing (extra) scanning" (inotify events)
    skipped_lines: int = 0  # "skipped (excluded UID)": clamd's own reads
    error_lines: list[str] = field(default_factory=list)
    clamd_cpu_seconds: float = 0.0
    clamonacc_cpu_seconds: float = 0.0


@dataclass(slots=True)
class MemoryResult:
    files: int
    infected: int
    directories: int
    writers_seconds: float
    absorb_seconds: float  # last close until the daemon's CPU went quiet (clamd still down)
    rss_ready_mib: float  # after READY, before any file
    peak_rss_clamd_down_mib: float  # VmHWM just before clamd came back
    peak_rss_total_mib: float  # VmHWM at the end (recovery included)
    sampled_max_rss_mib: float
    rss_series_mib: list[tuple[float, float]]  # (seconds since first write, MiB)
    recovery_seconds: float  # clamd start to the last verdict
    first_verdict_after_restart_seconds: float
    files_per_second: float
    daemon_log_messages: dict[str, int]
    correctness: Correctness
    phase_seconds: float = 0.0
    daemon_exit_status: int | None = None


@dataclass(frozen=True, slots=True)
class TargetResult:
    name: str
    value: float
    limit: float
    unit: str
    passed: bool


@dataclass(slots=True)
class Report:
    files: int
    cpus: int
    clamd_max_threads: int
    clamd_version: str
    clamd_settings: dict[str, str]
    waited_for_other_benchmarks_seconds: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    python_env_removed: list[str]
    latency_measure: str
    filesystem: str = ""  # the work folder's file system, and why (scratchfs)
    burst: BurstResult | None = None  # the round with the median ratio
    burst_rounds: list[BurstResult] = field(default_factory=list)
    burst_ratio: float = float("nan")  # median of the rounds' ratios: held to the target
    light: LightResult | None = None  # clean files only: held to the targets
    light_infected: LightResult | None = None  # with infected files the policy moves away
    clamonacc: ClamonaccResult | None = None
    memory: MemoryResult | None = None
    memory_skipped: bool = False
    targets: list[TargetResult] = field(default_factory=list)
    wrong_answers: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase

    @property
    def missed(self) -> list[str]:
        return [t.name for t in self.targets if not t.passed]


LATENCY_MEASURE = (
    "close-to-verdict latency = (monotonic time the verdict's JSON line was read from the"
    " daemon's stderr pipe, in the benchmark's reader thread) - (monotonic time the writer"
    " process took right after close()); CLOCK_MONOTONIC is shared by all processes"
)


# -- phases ----------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"bench_daemon: {message}", file=sys.stderr, flush=True)


def start_daemon(workdir: Path, name: str, clamd: PrivateClamd, watch: Path) -> TimedDaemon:
    """`clamwatch run` with the shipped defaults, but its state and quarantine in ``workdir``."""
    config = write_config(
        workdir / f"{name}.toml",
        address=clamd.unix_address,
        watches=[watch],
        state_directory=workdir / f"{name}-state",
        quarantine={"directory": str(workdir / f"{name}-quarantine")},
    )
    daemon = TimedDaemon(config)
    try:
        daemon.wait_event("ready", timeout=60)
    except AssertionError:
        daemon.stop()
        raise
    return daemon


def _tally(daemon: TimedDaemon, paths: Sequence[str], what: str) -> dict[str, int]:
    """How many verdicts had each ``reason`` or ``action``."""
    counts: Counter[str] = Counter()
    for path in paths:
        for record in daemon.records(path):
            counts[record.reason if what == "reason" else record.action] += 1
    return dict(counts.most_common())


def run_clamdscan(
    argv: list[str], clamd_pid: int, output: Path, errors: Path, *, env: dict[str, str], status: int
) -> tuple[float, float]:
    """One timed clamdscan run (as bench_scan.run_tool): wall seconds and clamd's CPU seconds."""
    with output.open("wb") as out, errors.open("wb") as err:
        clamd_before = process_cpu(clamd_pid)
        started = time.perf_counter()
        got = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        wall = time.perf_counter() - started
        clamd_cpu = process_cpu(clamd_pid) - clamd_before
    if got != status:
        tail = output.read_text(errors="replace")[-800:] + errors.read_text(errors="replace")[-800:]
        raise WrongAnswerError(
            f"clamdscan exited with status {got}, expected {status}\n  {' '.join(argv)}\n{tail}"
        )
    return wall, clamd_cpu


def run_burst(
    args: argparse.Namespace,
    *,
    daemon: TimedDaemon,
    clamd: PrivateClamd,
    root: Path,
    unix_conf: Path,
    env: dict[str, str],
    workdir: Path,
    seed: int,
    name: str,
) -> BurstResult:
    files = plan_burst(root, args.files, args.writers, seed, not args.existing_dirs)
    daemon.expect(files.paths, defer=True)
    clamd_pid = clamd.pid
    assert clamd_pid is not None
    cpu_before, clamd_before = process_cpu(daemon.pid), process_cpu(clamd_pid)
    own_before, parsed_before = time.process_time(), daemon.parse_cpu
    with profiled(daemon.pid, args.profile, name):
        logs = run_writers(files.jobs)
        writers_cpu = sum(log.cpu_seconds for log in logs)
        first = min(log.first_write for log in logs)
        last_close = max(log.last_close for log in logs)
        _say(f"burst: {args.files} files written by {len(logs)} writers in"
             f" {last_close - first:.2f} s; waiting for the verdicts")  # fmt: skip
        complete = daemon.wait_expected(timeout=max(300.0, args.files * 0.05))
        late = len(files.paths) - daemon.hits
        last = daemon.last_hit if complete else time.monotonic()
    # what it took while the daemon worked: not the parsing after the last verdict came
    own_cpu = time.process_time() - own_before - (daemon.parse_cpu - parsed_before)
    cpu, clamd_cpu = process_cpu(daemon.pid) - cpu_before, process_cpu(clamd_pid) - clamd_before
    _say(f"burst: {daemon.hits}/{args.files} verdicts, last {last - first:.2f} s after the first"
         " write; checking for duplicates")  # fmt: skip
    _wait_quiet()
    correctness = check_verdicts(daemon, files, late)
    latencies = [
        r.latency_ms for p in files.paths for r in daemon.records(p)[:1] if r.latency_ms is not None
    ]
    result = BurstResult(
        files=args.files,
        infected=len(files.infected),
        writers=len(logs),
        directories_made_during_burst=not args.existing_dirs,
        writers_seconds=last_close - first,
        clamwatch_seconds=last - first,
        after_last_close_seconds=last - last_close,
        daemon_cpu_seconds=cpu,
        clamd_cpu_seconds=clamd_cpu,
        writers_cpu_seconds=writers_cpu,
        bench_cpu_seconds=own_cpu,
        daemon_latency_ms=Percentiles.of(latencies),
        reasons=_tally(daemon, files.paths, "reason"),
        actions=_tally(daemon, files.paths, "action"),
        infected_left_in_tree=sum(os.path.lexists(p) for p in files.infected),
        correctness=correctness,
    )
    # clamdscan on the same files, the same clamd, after the burst (the daemon idles)
    clamdscan = shutil.which("clamdscan")
    if clamdscan is None:
        result.clamdscan_error = "clamdscan is not installed (Debian package clamdscan)"
        return result
    tool = Tool(
        "clamdscan-fdpass",
        "clamdscan --multiscan --fdpass",
        [clamdscan, "--multiscan", "--fdpass", f"--config-file={unix_conf}", str(root)],
        prints_every_file=False,
    )
    output, errors = workdir / "clamdscan.out", workdir / "clamdscan.err"
    # The default policy moves infected files to the quarantine: clamdscan
    # must find exactly those still in the tree.
    present = {p for p in files.infected if os.path.lexists(p)}
    read_once(files.paths)
    for run in range(args.clamdscan_runs):
        try:
            # The daemon has just scanned these files, so clamd's cache of
            # clean hashes holds them all and a scan would be a cache lookup.
            # A scan after the burst without clamwatch would find them new to
            # clamd: the timed run starts with the cache emptied (a reload).
            clamd.reload()
            wall, clamd_cpu = run_clamdscan(
                tool.argv, clamd_pid, output, errors, env=env, status=1 if present else 0
            )
            check_output(tool, output, present, args.files)
            warm, _ = run_clamdscan(
                tool.argv, clamd_pid, output, errors, env=env, status=1 if present else 0
            )
            check_output(tool, output, present, args.files)
        except WrongAnswerError as exc:
            result.clamdscan_error = str(exc)
            return result
        result.clamdscan_seconds.append(wall)
        result.clamdscan_clamd_cpu_seconds.append(clamd_cpu)
        result.clamdscan_warm_seconds.append(warm)
        _say(f"clamdscan --multiscan --fdpass run {run + 1}/{args.clamdscan_runs}:"
             f" {wall:.3f} s, {warm:.3f} s with clamd's cache warm")  # fmt: skip
    result.clamdscan_median = statistics.median(result.clamdscan_seconds)
    result.ratio = result.clamwatch_seconds / result.clamdscan_median
    result.clamdscan_warm_median = statistics.median(result.clamdscan_warm_seconds)
    result.ratio_warm = result.clamwatch_seconds / result.clamdscan_warm_median
    return result


def read_once(paths: Iterable[str]) -> None:
    """Read a byte of each file still there, untimed, so that its access time is as a read left it.

    clamwatch opens files with O_NOATIME, so its scan left the access times
    as the writers made them. The first timed clamdscan run would then pay
    an atime update per file (relatime: a journaled inode write) that the
    runs after it do not, and that the daemon spared itself: every run
    starts alike, as it did when clamwatch's own scan updated them.
    """
    for path in paths:
        try:
            with open(path, "rb") as handle:
                handle.read(1)
        except FileNotFoundError:  # moved to the quarantine
            continue


def _event_epoch(stamp: str) -> float | None:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except ValueError:
        return None


def run_light(
    args: argparse.Namespace, daemon: TimedDaemon, root: Path, percent: float
) -> LightResult:
    interval = args.light_interval_ms / 1000
    files = plan_light(root, args.light, interval, args.seed + 7, percent)
    daemon.expect(files.paths)
    with profiled(daemon.pid, args.profile, root.name):
        (log,) = run_writers(files.jobs)
        complete = daemon.wait_expected(timeout=60.0 + args.light * interval)
        late = len(files.paths) - daemon.hits
    _say(f"light load: {daemon.hits}/{args.light} verdicts"
         f"{'' if complete else ' (TIMED OUT)'}; checking for duplicates")  # fmt: skip
    _wait_quiet()
    correctness = check_verdicts(daemon, files, late)
    arrival: list[float] = []
    own: list[float] = []
    by_time: list[float] = []
    for path, closed, closed_wall in log.closes:
        records = daemon.records(path)
        if not records:
            continue
        first = records[0]
        arrival.append((first.arrived - closed) * 1000)
        if first.latency_ms is not None:
            own.append(first.latency_ms)
        epoch = _event_epoch(first.time)
        if epoch is not None:
            by_time.append((epoch - closed_wall) * 1000)
    return LightResult(
        files=args.light,
        infected=len(files.infected),
        actions=_tally(daemon, files.paths, "action"),
        interval_ms=args.light_interval_ms,
        writer_seconds=log.last_close - log.first_write,
        close_to_arrival_ms=Percentiles.of(arrival),
        daemon_latency_ms=Percentiles.of(own),
        close_to_event_time_ms=Percentiles.of(by_time),
        correctness=correctness,
    )


class LogTail:
    """Follows a growing log file on a thread, stamping each line with its arrival time."""

    def __init__(self, path: Path, every: float = 0.005) -> None:
        self.path = path
        self.every = every
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-tail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pending = b""
        offset = 0
        while True:
            stopping = self._stop.is_set()
            try:
                with self.path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                now = time.monotonic()
                *complete, pending = (pending + chunk).split(b"\n")
                with self._lock:
                    self.lines += [(now, c.decode("utf-8", "replace")) for c in complete]
            if stopping:
                return
            self._stop.wait(self.every)

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.lines)

    def last_arrival(self) -> float:
        with self._lock:
            return self.lines[-1][0] if self.lines else 0.0

    def wait_for(self, text: str, timeout: float, process: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(text in line for _, line in self.lines):
                    return True
            if process.poll() is not None:
                return False
            time.sleep(0.05)
        return False


def _clamonacc_problem() -> str | None:
    if not CLAMONACC_BINARY.exists():
        return f"{CLAMONACC_BINARY} is missing (Debian package clamav-daemon)"
    if os.geteuid() != 0:
        return "clamonacc needs fanotify, which needs root (CAP_SYS_ADMIN); run as root"
    try:
        pwd.getpwnam("clamav")
    except KeyError:
        return "there is no clamav user to run clamonacc's clamd as (package clamav-base)"
    return None


def run_clamonacc(args: argparse.Namespace, workdir: Path) -> ClamonaccResult:
    """clamonacc + a clamd of its own, watching a burst like clamwatch's in its own directory.

    clamd.conf(5): OnAccessIncludePath is the tree (watched recursively by
    clamonacc's "DDD" inotify part, fanotify FAN_OPEN/FAN_ACCESS on every
    directory in it); OnAccessExtraScanning also scans files as they are
    created or moved in. clamonacc refuses to start without an exclusion of
    clamd's own user (a scanning loop otherwise: clamd's reads are accesses
    too), so its clamd runs as the clamav user (clamd.conf User) and
    OnAccessExcludeUname is clamav; the writers run as root and must not be
    excluded (OnAccessExcludeRootUID no). clamonacc runs with --fdpass and
    --foreground, -v and --log so every scan it starts is a line.
    """
    problem = _clamonacc_problem()
    if problem is not None:
        return ClamonaccResult(ran=False, error=problem)
    base = workdir / "onacc"
    tree = base / "files"
    tree.mkdir(parents=True)
    clamd_dir = base / "clamd"
    # clamd drops to the clamav user before it binds its socket and writes its
    # pid file: its work folder must be the clamav user's.
    clamd_tmp = clamd_dir / "tmp" if args.clamd_tmpdir is None else args.clamd_tmpdir / "clamonacc"
    for folder in (clamd_dir, clamd_tmp):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "clamav", "clamav")
    clamd = PrivateClamd(
        clamd_dir,
        max_threads=args.threads,
        tcp=False,
        extra={
            "TemporaryDirectory": str(clamd_tmp),
            "User": "clamav",
            "OnAccessIncludePath": str(tree),
            "OnAccessExtraScanning": "yes",
            "OnAccessExcludeUname": "clamav",
            "OnAccessExcludeRootUID": "no",
            # clamonacc logs through clamd.conf's settings: the default 1 MiB
            # cap would stop its log (and our count) part-way through a burst
            "LogFileMaxSize": "0",
            # one line per scan: the count of what clamonacc had scanned
            "LogClean": "yes",
        },
    )
    log_path, out_path = base / "clamonacc.log", base / "clamonacc.out"
    argv = [
        str(CLAMONACC_BINARY), "--foreground", "--fdpass", "--verbose",
        f"--log={log_path}", f"--config-file={clamd.conf_path}",
    ]  # fmt: skip
    result = ClamonaccResult(ran=False, command=" ".join(argv), clamd_settings=clamd.settings)
    try:
        clamd.start()
    except RuntimeError as exc:
        result.error = f"clamonacc's clamd would not start: {exc}"
        return result
    tail, clamd_tail = LogTail(log_path), LogTail(clamd.log_path)
    tail.start()
    clamd_tail.start()
    process: subprocess.Popen[bytes] | None = None
    try:
        with out_path.open("wb") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        if not tail.wait_for("waiting to consume events", 60.0, process):
            text = out_path.read_text(errors="replace").strip().splitlines()
            errors = [line for line in text if "ERROR" in line or "error" in line] or text[-5:]
            result.error = (
                f"clamonacc did not get ready (exit status {process.poll()}): "
                + " | ".join(errors[-5:])
            )
            return result
        time.sleep(0.5)  # its fanotify marks are placed while DDD walks the tree
        files = plan_burst(tree, args.files, args.writers, args.seed, not args.existing_dirs)
        clamd_pid = clamd.pid
        assert clamd_pid is not None
        clamd_before = process_cpu(clamd_pid)
        acc_before = process_cpu(process.pid)
        logs = run_writers(files.jobs)
        first = min(log.first_write for log in logs)
        last_close = max(log.last_close for log in logs)
        _say(f"clamonacc: burst written in {last_close - first:.2f} s; waiting for its log"
             f" to stay quiet for {args.clamonacc_idle:.0f} s")  # fmt: skip
        deadline = time.monotonic() + max(300.0, args.files * 0.05)
        while time.monotonic() < deadline and process.poll() is None:
            latest = max(tail.last_arrival(), clamd_tail.last_arrival(), last_close)
            if time.monotonic() - latest >= args.clamonacc_idle:
                break
            time.sleep(0.2)
        result.clamd_cpu_seconds = process_cpu(clamd_pid) - clamd_before
        result.clamonacc_cpu_seconds = process_cpu(process.pid) - acc_before
        result.ran = True
        result.files, result.infected = len(files.paths), len(files.infected)
        result.writers_seconds = last_close - first
        _tally_clamonacc(result, tail.snapshot())
        _tally_clamd_results(result, clamd_tail.snapshot(), files, first)
        if process.poll() is not None:
            result.error = f"clamonacc exited with status {process.returncode} during the burst"
    finally:
        if process is not None:
            end_process(process, signal.SIGTERM, 15.0)
        tail.stop()
        clamd_tail.stop()
        clamd.stop()
    return result


def _tally_clamonacc(result: ClamonaccResult, lines: list[tuple[float, str]]) -> None:
    """What clamonacc's own log (-v) says it did."""
    for _, line in lines:
        if "performing (extra) scanning on file '" in line:
            result.extra_scan_lines += 1
        elif "performing scanning on file '" in line:
            result.scan_lines += 1
        elif "skipped (excluded UID)" in line:
            result.skipped_lines += 1
        elif len(result.error_lines) < 10 and (
            "ERROR" in line or "LOGGING DISABLED" in line or line.startswith("!")
        ):
            result.error_lines.append(line)


def _tally_clamd_results(
    result: ClamonaccResult, lines: list[tuple[float, str]], files: FileSet, first: float
) -> None:
    """Every scan clamonacc's clamd did, from its log (LogClean yes): ``TIME -> PATH: OK``."""
    wanted = set(files.paths)
    scanned: set[str] = set()
    detected: set[str] = set()
    found_suffix = f": {EICAR_SIGNATURE} FOUND"
    last_scan = last_found = first
    for arrived, line in lines:
        _, _, text = line.partition(" -> ")
        if text.endswith(found_suffix):
            path = text.removesuffix(found_suffix)
            result.found_lines += 1
            detected.add(path)
            last_found = max(last_found, arrived)
        elif text.endswith(": OK"):
            path = text.removesuffix(": OK")
        else:
            if "ERROR" in text and len(result.error_lines) < 10:
                result.error_lines.append(f"clamd: {text}")
            continue
        if path in wanted:
            result.scans += 1
            scanned.add(path)
            last_scan = max(last_scan, arrived)
    result.files_scanned = len(scanned)
    result.files_never_scanned = len(wanted - scanned)
    result.files_detected = len(detected & files.infected)
    result.infected_missed = len(files.infected - detected)
    result.false_detections = len(detected - files.infected)
    result.last_scan_seconds = last_scan - first
    result.last_found_seconds = last_found - first


def _wait_idle(pid: int, cap: float, quiet_cpu: float = 0.05, window: float = 2.0) -> float:
    """Wait until ``pid`` used under ``quiet_cpu`` CPU seconds per ``window``; seconds waited."""
    started = time.monotonic()
    before = process_cpu(pid)
    while time.monotonic() - started < cap:
        time.sleep(window)
        now = process_cpu(pid)
        if now - before < quiet_cpu:
            break
        before = now
    return time.monotonic() - started


def run_memory(args: argparse.Namespace, workdir: Path, clamd: PrivateClamd) -> MemoryResult:
    phase_started = time.monotonic()
    watch = workdir / "memory"
    files = plan_memory(watch, args.memory_files, args.memory_dirs, args.writers, args.seed + 13)
    daemon = start_daemon(workdir, "clamwatch-memory", clamd, watch)
    try:
        result = _memory(args, daemon, clamd, files)
    finally:
        status = daemon.stop()
    result.phase_seconds = time.monotonic() - phase_started
    result.daemon_exit_status = status
    return result


def _memory(
    args: argparse.Namespace, daemon: TimedDaemon, clamd: PrivateClamd, files: FileSet
) -> MemoryResult:
    rss_ready = memory_kib(daemon.pid).get("VmRSS", 0)
    daemon.expect(files.paths)
    clamd.stop()
    _say(f"memory: clamd stopped; writing {args.memory_files} files into"
         f" {args.memory_dirs} directories")  # fmt: skip
    with RssSampler(daemon.pid) as sampler, profiled(daemon.pid, args.profile, "memory"):
        logs = run_writers(files.jobs)
        first = min(log.first_write for log in logs)
        last_close = max(log.last_close for log in logs)
        _say(f"memory: written in {last_close - first:.1f} s; waiting for the daemon to go quiet"
             f" (at most {args.memory_hold:.0f} s), RSS now"
             f" {memory_kib(daemon.pid).get('VmRSS', 0) / 1024:.1f} MiB")  # fmt: skip
        absorb = _wait_idle(daemon.pid, args.memory_hold)
        peak_down = memory_kib(daemon.pid).get("VmHWM", 0)
        early = daemon.hits
        _say(f"memory: peak RSS {peak_down / 1024:.1f} MiB with clamd down ({early} verdicts"
             " meanwhile); starting clamd")  # fmt: skip
        restarted = time.monotonic()
        clamd.start()
        complete = daemon.wait_expected(timeout=args.memory_timeout)
        late = len(files.paths) - daemon.hits
        last = daemon.last_hit if complete else time.monotonic()
        peak_total = memory_kib(daemon.pid).get("VmHWM", 0)
    _say(f"memory: {daemon.hits}/{args.memory_files} verdicts"
         f" {last - restarted:.1f} s after clamd started; checking for duplicates")  # fmt: skip
    _wait_quiet()
    correctness = check_verdicts(daemon, files, late)
    after = [r[0].arrived for r in (daemon.records(p) for p in files.paths) if r]
    first_after = min((t for t in after if t >= restarted), default=restarted) - restarted
    return MemoryResult(
        files=len(files.paths),
        infected=len(files.infected),
        directories=args.memory_dirs,
        writers_seconds=last_close - first,
        absorb_seconds=absorb,
        rss_ready_mib=rss_ready / 1024,
        peak_rss_clamd_down_mib=peak_down / 1024,
        peak_rss_total_mib=peak_total / 1024,
        sampled_max_rss_mib=sampler.max_rss_kib / 1024,
        rss_series_mib=[(round(t - first, 1), round(k / 1024, 1)) for t, k in sampler.series],
        recovery_seconds=last - restarted,
        first_verdict_after_restart_seconds=first_after,
        files_per_second=(daemon.hits - early) / max(last - restarted, 1e-9),
        daemon_log_messages=dict(daemon.log_messages.most_common(8)),
        correctness=correctness,
    )


# -- targets and output --------------------------------------------------------------------


def evaluate(report: Report) -> None:
    targets: list[TargetResult] = []
    wrong: list[str] = []
    for number, burst in enumerate(report.burst_rounds, 1):
        if not burst.correctness.ok:
            wrong.append(f"burst round {number}: {burst.correctness.summary()}")
        if burst.clamdscan_error:
            wrong.append(f"clamdscan, round {number}: {burst.clamdscan_error}")
    ratios = [b.ratio for b in report.burst_rounds if b.clamdscan_seconds]
    if ratios and len(ratios) == len(report.burst_rounds):
        report.burst_ratio = statistics.median(ratios)
        # the round whose ratio is the median (the lower middle one for an even count)
        report.burst = sorted(report.burst_rounds, key=lambda b: b.ratio)[(len(ratios) - 1) // 2]
        name = "burst: clamwatch run / clamdscan --multiscan --fdpass"
        value = report.burst_ratio
        targets.append(TargetResult(name, value, 1.2, "x", value <= 1.2))
    elif report.burst_rounds:
        report.burst = report.burst_rounds[0]
    if report.light is not None:
        light = report.light.close_to_arrival_ms
        targets.append(TargetResult("light load: close -> verdict p50", light.p50, 20, "ms",
                                    light.p50 <= 20))  # fmt: skip
        targets.append(TargetResult("light load: close -> verdict p99", light.p99, 50, "ms",
                                    light.p99 <= 50))  # fmt: skip
        if not report.light.correctness.ok:
            wrong.append(f"light load: {report.light.correctness.summary()}")
    if report.light_infected is not None and not report.light_infected.correctness.ok:
        wrong.append(f"light load, infected: {report.light_infected.correctness.summary()}")
    if report.memory is not None:
        memory = report.memory
        down, total = memory.peak_rss_clamd_down_mib, memory.peak_rss_total_mib
        name = f"memory: peak RSS, {memory.files} files arrive, clamd down"
        targets.append(TargetResult(name, down, 100, "MiB", down < 100))
        name = "memory: peak RSS, recovery included"
        targets.append(TargetResult(name, total, 100, "MiB", total < 100))
        if not memory.correctness.ok:
            wrong.append(f"memory: {memory.correctness.summary()}")
    report.targets = targets
    report.wrong_answers += wrong


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{value:.2f}" for value in load)


def _pct(p: Percentiles) -> str:
    return f"p50 {p.p50:.1f}  p90 {p.p90:.1f}  p99 {p.p99:.1f}  max {p.max:.1f} ms (n={p.count})"


def format_table(report: Report) -> str:
    lines = [
        f"clamd MaxThreads {report.clamd_max_threads} on {report.cpus} CPUs"
        f" ({report.clamd_version}); clamd's TemporaryDirectory"
        f" {report.clamd_settings.get('TemporaryDirectory', '?')}",
        f"work folder: {report.filesystem}",
        f"load average (1/5/15 min) before {_load(report.load_before)},"
        f" after {_load(report.load_after)}; waited"
        f" {report.waited_for_other_benchmarks_seconds:.0f} s for other benchmarks",
        f"daemon and tools ran without {', '.join(report.python_env_removed)}"
        if report.python_env_removed
        else "daemon and tools ran with the caller's environment",
        "",
    ]
    if report.burst is not None:
        b = report.burst
        rounds = report.burst_rounds
        lines += [
            f"burst: {len(rounds)} round(s), each {b.files} files ({b.infected} infected) by"
            f" {b.writers} writer processes, directories"
            f" {'made during' if b.directories_made_during_burst else 'made before'} the burst,"
            " then clamdscan on the same files",
        ]
        lines += [
            f"  round {n}: clamwatch {r.clamwatch_seconds:.3f} s, clamdscan median"
            f" {r.clamdscan_median:.3f} s, ratio {r.ratio:.3f}"
            f" ({r.ratio_warm:.3f} against clamdscan with clamd's cache warm)"
            f" (writers {r.writers_seconds:.3f} s, cpu: writers {r.writers_cpu_seconds:.2f} s,"
            f" daemon {r.daemon_cpu_seconds:.2f} s, clamd {r.clamd_cpu_seconds:.2f} s,"
            f" this benchmark {r.bench_cpu_seconds:.2f} s)"
            for n, r in enumerate(rounds, 1)
        ]
        lines += [
            f"  median of the rounds' ratios: {report.burst_ratio:.3f}; the median round:",
            f"  writers, first write -> last close     {b.writers_seconds:8.3f} s",
            f"  clamwatch run, first write -> last verdict {b.clamwatch_seconds:8.3f} s"
            f"  ({b.after_last_close_seconds:.3f} s after the last close;"
            f" daemon cpu {b.daemon_cpu_seconds:.2f} s, clamd cpu {b.clamd_cpu_seconds:.2f} s)",
            f"  cpu seconds of the burst: writers {b.writers_cpu_seconds:.2f} + clamd"
            f" {b.clamd_cpu_seconds:.2f} + daemon {b.daemon_cpu_seconds:.2f}"
            f" = {b.writers_cpu_seconds + b.clamd_cpu_seconds + b.daemon_cpu_seconds:.2f}"
            f" on {report.cpus} CPUs (this benchmark's own: {b.bench_cpu_seconds:.2f})",
            "  clamdscan --multiscan --fdpass, same files after the burst, clamd's cache"
            f" emptied: {', '.join(f'{s:.3f}' for s in b.clamdscan_seconds)} s"
            f" (median {b.clamdscan_median:.3f}; clamd cpu"
            f" {statistics.median(b.clamdscan_clamd_cpu_seconds or [0.0]):.2f} s)",
            "  the same, run again with clamd's cache warm (not the target's):"
            f" {', '.join(f'{s:.3f}' for s in b.clamdscan_warm_seconds)} s"
            f" (median {b.clamdscan_warm_median:.3f}; ratio {b.ratio_warm:.3f})",
            f"  daemon's own latency_ms: {_pct(b.daemon_latency_ms)}",
            f"  verdict reasons: {b.reasons}",
            f"  actions: {b.actions}; infected files left in the tree: {b.infected_left_in_tree}",
            f"  answers: {b.correctness.summary()}",
            "",
        ]
    for li in (report.light, report.light_infected):
        if li is None:
            continue
        lines += [
            f"light load: {li.files} files ({li.infected} infected), one every"
            f" {li.interval_ms:g} ms (written in {li.writer_seconds:.2f} s); actions {li.actions}",
            f"  close -> verdict line read (held to targets): {_pct(li.close_to_arrival_ms)}",
            f"  daemon's own latency_ms:                      {_pct(li.daemon_latency_ms)}",
            f'  close (wall) -> event "time" (ms steps):      {_pct(li.close_to_event_time_ms)}',
            f"  answers: {li.correctness.summary()}",
            "",
        ]
    if report.clamonacc is not None:
        c = report.clamonacc
        if not c.ran:
            lines += [f"clamonacc: NOT RUN: {c.error}", ""]
        else:
            lines += [
                f"clamonacc (own clamd, User clamav, MaxThreads {report.clamd_max_threads}):"
                f" {c.files} files ({c.infected} infected) by the same writers"
                f" in {c.writers_seconds:.3f} s",
                f"  scanned (its clamd's log): {c.files_scanned} distinct files in {c.scans}"
                f" scans; {c.files_never_scanned} files never scanned",
                f"  detected {c.files_detected} of {c.infected} infected"
                f" ({c.infected_missed} missed, {c.false_detections} false;"
                f" {c.found_lines} FOUND lines)",
                f"  first write -> clamd's last result {c.last_scan_seconds:.3f} s,"
                f" -> last FOUND {c.last_found_seconds:.3f} s"
                f" (clamd cpu {c.clamd_cpu_seconds:.2f} s, clamonacc cpu"
                f" {c.clamonacc_cpu_seconds:.2f} s)",
                f"  clamonacc's log: {c.scan_lines} scans started on fanotify events,"
                f" {c.extra_scan_lines} extra (inotify), {c.skipped_lines} of clamd's own reads"
                " skipped",
            ]
            if c.error or c.error_lines:
                lines.append(f"  problems: {c.error or ''} {' | '.join(c.error_lines[:3])}")
            lines.append("")
    if report.memory is not None:
        m = report.memory
        lines += [
            f"memory: {m.files} files ({m.infected} infected) into {m.directories} directories"
            f" with clamd stopped, written in {m.writers_seconds:.1f} s; daemon quiet"
            f" {m.absorb_seconds:.1f} s after",
            f"  RSS after ready {m.rss_ready_mib:.1f} MiB; peak (VmHWM) with clamd down"
            f" {m.peak_rss_clamd_down_mib:.1f} MiB; peak overall {m.peak_rss_total_mib:.1f} MiB",
            f"  clamd back: first verdict after {m.first_verdict_after_restart_seconds:.1f} s,"
            f" all after {m.recovery_seconds:.1f} s ({m.files_per_second:.0f} files/s)",
            f"  answers: {m.correctness.summary()}",
            f"  phase took {m.phase_seconds:.0f} s",
            "",
        ]
    elif report.memory_skipped:
        lines += ["memory: skipped (--skip-memory)", ""]
    lines.append(f"{'target':<58} {'value':>10} {'target':>11}  result")
    for t in report.targets:
        if t.unit == "x":
            value, limit = f"{t.value:.3f}", f"<= {t.limit:.2f}"
        else:
            value = f"{t.value:.1f} {t.unit}"
            limit = f"{'<' if t.unit == 'MiB' else '<='} {t.limit:g} {t.unit}"
        lines.append(f"{t.name:<58} {value:>10} {limit:>11}  {'PASS' if t.passed else 'MISS'}")
    for phase in ("burst", "light", "light_infected", "memory"):
        part = getattr(report, phase)
        if part is not None:
            ok = part.correctness.ok
            lines.append(
                f"{phase + ': exactly one right verdict per file':<58} {'':>10} {'':>11}"
                f"  {'OK' if ok else 'WRONG'}"
            )
    for problem in report.wrong_answers:
        lines.append(f"WRONG ANSWER: {problem}")
    lines += ["", LATENCY_MEASURE]
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items())
    lines.append(f"phase wall times: {timings}")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def wait_for_other_benchmarks(limit: float) -> float:
    """Wait while another benchmark (bench_scan.py) runs on this 2-CPU machine."""
    started = time.monotonic()
    announced = False
    while time.monotonic() - started < limit:
        found = subprocess.run(
            ["pgrep", "-f", "bench_scan.py"], capture_output=True, text=True, check=False
        ).stdout.split()
        others = [pid for pid in found if int(pid) != os.getpid()]
        if not others:
            break
        if not announced:
            _say(f"waiting for other benchmarks to finish (pids {', '.join(others)})")
            announced = True
        time.sleep(5)
    waited = time.monotonic() - started
    if announced:
        _say(f"waited {waited:.0f} s for other benchmarks")
    return waited


def _duration_ms(text: str) -> float:
    return float(text.removesuffix("ms"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cpus = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(
        description="Time clamwatch run (burst, light load, memory) against clamdscan and"
        " clamonacc, in one run.",
    )
    parser.add_argument("--files", type=int, default=10_000, help="burst files (default 10000)")
    parser.add_argument("--writers", type=int, default=2, help="writer processes (default 2)")
    parser.add_argument("--existing-dirs", action="store_true",
                        help="make the burst's directories before it (default: the writers"
                        " make them as they go, as an upload of a tree does)")  # fmt: skip
    parser.add_argument(
        "--burst-rounds",
        type=int,
        default=5,
        help="bursts, each followed by its clamdscan runs; the target is the"
        " median of the rounds' ratios (default 5)",
    )
    parser.add_argument("--clamdscan-runs", type=int, default=3,
                        help="clamdscan runs after each burst; their median is the"
                        " round's denominator (default 3)")  # fmt: skip
    parser.add_argument("--light", type=int, default=300, help="light-load files (default 300)")
    parser.add_argument("--light-interval-ms", type=_duration_ms, default=10.0,
                        help="milliseconds between light-load files (default 10)")  # fmt: skip
    parser.add_argument("--light-infected-percent", type=float, default=1.0,
                        help="a second light-load pass with this percentage of infected files,"
                        " reported beside the targets (default 1; 0: no second pass)")  # fmt: skip
    parser.add_argument("--skip-clamonacc", action="store_true", help="do not run clamonacc")
    parser.add_argument("--clamonacc-idle", type=float, default=5.0,
                        help="seconds clamonacc's log must stay quiet to count it done"
                        " (default 5)")  # fmt: skip
    parser.add_argument("--memory-files", type=int, default=200_000,
                        help="files that arrive with clamd stopped (default 200000)")  # fmt: skip
    parser.add_argument("--memory-dirs", type=int, default=200,
                        help="directories they go into (default 200)")  # fmt: skip
    parser.add_argument("--memory-hold", type=float, default=60.0,
                        help="at most this many seconds for the daemon to go quiet before clamd"
                        " comes back (default 60)")  # fmt: skip
    parser.add_argument("--memory-timeout", type=float, default=1800.0,
                        help="seconds to wait for every verdict once clamd is back"
                        " (default 1800)")  # fmt: skip
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory phase")
    parser.add_argument("--threads", type=int, default=2 * cpus,
                        help=f"clamd MaxThreads (default: 2 x CPUs = {2 * cpus})")  # fmt: skip
    parser.add_argument("--seed", type=int, default=20240601, help="seed for the file contents")
    parser.add_argument("--workdir", type=Path,
                        help="where files, clamds and daemons live (default: a new folder"
                        " under /tmp, removed after)")  # fmt: skip
    add_clamd_tmpdir_option(parser)
    add_ext4_image_option(parser)
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    parser.add_argument("--keep-python-env", action="store_true",
                        help="run the daemon and tools with PYTHONUNBUFFERED and the like if"
                        " set (default: unset them, as in a user's shell)")  # fmt: skip
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record py-spy profiles (raw) of the daemon in each phase"
                        " into DIR")  # fmt: skip
    parser.add_argument("--max-wait", type=float, default=3600.0,
                        help="seconds to wait for other benchmarks to finish"
                        " (default 3600)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout"
                        " (the table then goes to stderr)")  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if min(args.files, args.writers, args.light, args.threads, args.clamdscan_runs,
           args.burst_rounds) < 1:  # fmt: skip
        parser.error(
            "--files, --writers, --light, --threads, --clamdscan-runs, --burst-rounds must be >= 1"
        )
    if args.memory_files < 1 or args.memory_dirs < 1:
        parser.error("--memory-files and --memory-dirs must be at least 1")
    if args.profile is not None:
        args.profile = args.profile.absolute()
    return args


def benchmark(args: argparse.Namespace, workdir: Path, report: Report) -> None:
    env = tool_environment(args.keep_python_env)
    watched = workdir / "watched"
    burst_roots = [watched / f"burst{n}" for n in range(1, args.burst_rounds + 1)]
    light_root, light_infected_root = watched / "light", watched / "light-infected"
    for root in (*burst_roots, light_root, light_infected_root):
        root.mkdir(parents=True)
    # Debian's AppArmor profile lets clamd write only below /tmp.
    with PrivateClamd(
        workdir / "clamd", max_threads=args.threads, tcp=False, extra=clamd_tmp_setting(args)
    ) as clamd:
        report.clamd_settings = dict(clamd.settings)
        unix_conf = clamd.write_clamdscan_config(tcp=False)
        daemon = start_daemon(workdir, "clamwatch", clamd, watched)
        try:
            started = time.monotonic()
            for number, root in enumerate(burst_roots, 1):
                if len(burst_roots) > 1:
                    _say(f"burst round {number} of {len(burst_roots)}")
                waited = wait_for_quiet_disk()
                if waited >= 1.0:
                    _say(f"waited {waited:.0f} s for the disk to go quiet (I/O pressure)")
                report.burst_rounds.append(
                    run_burst(
                        args,
                        daemon=daemon,
                        clamd=clamd,
                        root=root,
                        unix_conf=unix_conf,
                        env=env,
                        workdir=workdir,
                        seed=args.seed + 1000 * (number - 1),
                        name=root.name,
                    )
                )
            report.seconds["burst"] = time.monotonic() - started
            started = time.monotonic()
            report.light = run_light(args, daemon, light_root, 0.0)
            report.seconds["light"] = time.monotonic() - started
            if args.light_infected_percent > 0:
                started = time.monotonic()
                report.light_infected = run_light(
                    args, daemon, light_infected_root, args.light_infected_percent
                )
                report.seconds["light-infected"] = time.monotonic() - started
        finally:
            status = daemon.stop()
            if status != 0:
                report.wrong_answers.append(f"clamwatch run exited with status {status}")
            if daemon.other_lines:
                _say("daemon said, not as JSON:\n  " + "\n  ".join(daemon.other_lines[-10:]))
        if not args.skip_clamonacc:
            wait_for_quiet_disk()  # as before each burst of clamwatch's
            started = time.monotonic()
            report.clamonacc = run_clamonacc(args, workdir)
            report.seconds["clamonacc"] = time.monotonic() - started
            if report.clamonacc.error:
                _say(f"clamonacc: {report.clamonacc.error}")
        if args.skip_memory:
            report.memory_skipped = True
            return
        started = time.monotonic()
        report.memory = run_memory(args, workdir, clamd)
        if report.memory.daemon_exit_status != 0:
            report.wrong_answers.append(
                f"clamwatch run (memory) exited with status {report.memory.daemon_exit_status}"
            )
        report.seconds["memory"] = time.monotonic() - started
        _say(f"memory phase took {report.seconds['memory']:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    waited = wait_for_other_benchmarks(args.max_wait)
    env = tool_environment(args.keep_python_env)
    removed = sorted(set(os.environ) - set(env))
    for name in removed:  # the daemons inherit os.environ (tests/daemonproc.py)
        del os.environ[name]
    if removed:
        _say(f"running the daemon and tools without {', '.join(removed)}")
    if args.workdir is not None:
        workdir = args.workdir.absolute()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        # Short: clamd's socket path must fit in sun_path (107 bytes).
        workdir = Path(tempfile.mkdtemp(prefix="cwbd-", dir="/tmp"))
    workdir.chmod(0o755)  # clamonacc's clamd runs as the clamav user
    load_before = os.getloadavg()
    if load_before[0] > _BUSY_LOAD:
        _say(f"warning: load average {load_before[0]:.1f} before the run; other work on this"
             " machine will show in the numbers")  # fmt: skip
    report = Report(
        files=args.files,
        cpus=len(os.sched_getaffinity(0)),
        clamd_max_threads=args.threads,
        clamd_version=clamd_version(),
        clamd_settings={},
        waited_for_other_benchmarks_seconds=waited,
        load_before=load_before,
        load_after=load_before,
        python_env_removed=removed,
        latency_measure=LATENCY_MEASURE,
    )
    started = time.monotonic()
    try:
        with scratch_folder(workdir, args.ext4_image, _say) as scratch:
            report.filesystem = scratch.description
            benchmark(args, scratch.folder, report)
    except WrongAnswerError as exc:
        report.wrong_answers.append(f"clamdscan: {exc}")
    except (RuntimeError, AssertionError, OSError, queue.Empty) as exc:
        _say(f"setup failed: {type(exc).__name__}: {exc}")
        return _EXIT_WRONG
    finally:
        if args.keep or args.workdir is not None:
            _say(f"kept {workdir}")
        else:
            removing = time.monotonic()
            shutil.rmtree(workdir, ignore_errors=True)
            _say(f"removed {workdir} in {time.monotonic() - removing:.0f} s")
    report.seconds["total"] = time.monotonic() - started
    report.load_after = os.getloadavg()
    evaluate(report)
    table = format_table(report)
    if args.json:
        print(table, file=sys.stderr)
        data = dataclasses.asdict(report)
        data["missed"] = report.missed
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
    else:
        print(table)
    if report.wrong_answers:
        return _EXIT_WRONG
    return _EXIT_MISS if report.missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
