"""`clamwatch scan PATH...`: the daemon's engine as a one-shot command."""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from clamwatch.clamd.address import DEFAULT_CLAMD_CONF, AddressError
from clamwatch.clamd.engine import ClamdUnavailableError, Engine
from clamwatch.clamd.job import ScanJob, ScanOutcome, TransportChoice
from clamwatch.clamd.settings import resolve_engine
from clamwatch.config import ClamdSettings
from clamwatch.files import OpenedFile, open_for_scan
from clamwatch.report import Reporter
from clamwatch.verdict import ScanError
from clamwatch.walk import walk

log = logging.getLogger(__name__)

# Files opened and handed to the engine but not answered yet. Each holds a
# descriptor; the engine keeps only a few dozen in flight, so a few hundred
# waiting is plenty to keep clamd busy without nearing RLIMIT_NOFILE.
_WINDOW = 256
_BATCH = 64  # outcomes handed over at once (see _Results)


@dataclass(frozen=True, slots=True)
class ScanOptions:
    paths: list[str]
    address: str | None = None
    clamd_conf: Path = DEFAULT_CLAMD_CONF
    transport: TransportChoice = TransportChoice.AUTO
    json_lines: bool = False
    infected_only: bool = False
    summary: bool = True
    progress: bool | None = None  # None: when stderr is a terminal
    max_stream_size: int | None = None
    connect_timeout: float = 30.0
    request_timeout: float = 180.0


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_scan(options: ScanOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Scan every file below ``options.paths``; return clamdscan's exit code."""
    clamd = ClamdSettings(
        address=options.address,
        clamd_conf=options.clamd_conf,
        transport=options.transport,
        request_timeout=options.request_timeout,
        max_stream_size=options.max_stream_size,
    )
    try:
        address, settings = resolve_engine(
            clamd,
            give_up_after=options.connect_timeout,
        )
        engine = Engine(address, settings)
    except (AddressError, ValueError) as exc:
        err.write(f"clamwatch scan: {exc}\n")
        return 2
    _raise_nofile_limit()
    progress = options.progress if options.progress is not None else err.isatty()
    reporter = Reporter(out, err, options.json_lines, options.infected_only, progress)
    engine.start()
    try:
        try:
            engine.wait_ready(options.connect_timeout)
        except ClamdUnavailableError as exc:
            err.write(f"clamwatch scan: {exc}\n")
            return 2
        _scan_all(engine, options.paths, reporter)
    except KeyboardInterrupt:
        err.write("\nclamwatch scan: interrupted\n")
        return 130
    finally:
        engine.close()
    if options.summary:
        reporter.summary()
    out.flush()
    return reporter.counts.exit_code()


class _Results:
    """Outcomes handed from the engine thread to the walking thread, in batches.

    Waking the walker for every single outcome made the two threads trade
    the GIL for each file (futex calls by the tens of thousands); it is woken
    once ``_BATCH`` outcomes wait, or when nothing else is outstanding.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ready: list[tuple[ScanJob, ScanOutcome]] = []
        self.outstanding = 0

    def put(self, job: ScanJob, outcome: ScanOutcome) -> None:
        with self.cond:
            self.ready.append((job, outcome))
            if len(self.ready) >= min(_BATCH, self.outstanding):
                self.cond.notify()

    def take(self, engine: Engine) -> list[tuple[ScanJob, ScanOutcome]]:
        """Wait for a batch (or for everything outstanding); [] if the engine died."""
        with self.cond:
            while len(self.ready) < min(_BATCH, self.outstanding):
                if not self.cond.wait(1.0) and not engine.alive:
                    break
            taken, self.ready = self.ready, []
            self.outstanding -= len(taken)
            return taken


def _scan_all(engine: Engine, paths: list[str], reporter: Reporter) -> None:
    results = _Results()
    submitted: set[ScanJob] = set()

    def finish(batch: list[tuple[ScanJob, ScanOutcome]]) -> None:
        if not batch and not engine.alive:
            _fail_all(submitted, reporter, "the clamd engine stopped")
            with results.cond:
                results.outstanding = 0
            return
        for job, outcome in batch:
            submitted.discard(job)
            job.file.close()
            reporter.report(job.file.path, outcome.verdict, outcome)

    for item in walk(paths):
        if isinstance(item, tuple):
            reporter.report(*item)
            continue
        opened = open_for_scan(item)
        if not isinstance(opened, OpenedFile):
            reporter.report(item, opened)
            continue
        job = ScanJob(opened, results.put)
        submitted.add(job)
        with results.cond:
            results.outstanding += 1
        engine.submit(job)
        if results.outstanding >= _WINDOW:
            finish(results.take(engine))
    while results.outstanding:
        finish(results.take(engine))


def _fail_all(outstanding: set[ScanJob], reporter: Reporter, message: str) -> None:
    for job in list(outstanding):
        outstanding.discard(job)
        job.file.close()
        reporter.report(job.file.path, ScanError(message))
