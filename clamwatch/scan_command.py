"""`clamwatch scan PATH...`: the daemon's engine as a one-shot command."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator

from clamwatch import lazylog
from clamwatch.clamd.address import DEFAULT_CLAMD_CONF, AddressError
from clamwatch.clamd.engine import ClamdUnavailableError, Engine
from clamwatch.clamd.job import ScanJob, ScanOutcome, TransportChoice
from clamwatch.clamd.settings import ClamdSettings, engine_settings, resolve_clamd, resolve_engine
from clamwatch.files import OpenedFile, open_for_scan, raise_nofile_limit
from clamwatch.report import THE_RESULTS, Reporter
from clamwatch.verdict import Infected, ScanError
from clamwatch.walk import WalkItem, walk

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from typing import BinaryIO, TextIO

    from clamwatch.excludepath import ExcludePaths
    from clamwatch.listreader import ListReader
    from clamwatch.scan_actions import ScanAction

log = lazylog.Logger(__name__)

# Files opened and handed to the engine but not answered yet. Each holds a
# descriptor; the engine keeps only a few dozen in flight and holds up to
# some two hundred clean replies until an EICAR check confirms them
# (Engine._scan_reply), so five hundred keep clamd busy without nearing
# RLIMIT_NOFILE (256 starved clamd once replies were held: measured). Under
# a lower limit, half of it (_window).
_WINDOW = 512
_FEED_EVERY = 32  # files opened between two turns of the engine's loop while walking
# Descriptors the scan holds besides files and the walk's directories: stdio,
# the engine's sockets and EICAR memfds, the log, the file list's reader.
_OTHER_DESCRIPTORS = 32
_STEP_WAIT = 1.0  # longest wait for clamd in one turn (the engine keeps its own deadlines)
STDIN_ARGUMENT = "-"  # standard input, as for clamdscan (stdin_copy.py)


class _StandardInput:
    """The PATH -, read (stdin_copy.py) only when the scan reaches it."""

    __slots__ = ()
    path = "stdin"  # its name in every line, as in clamdscan's


class ScanOptions:
    """What `clamwatch scan` was asked to do (see cli.py for each option)."""

    __slots__ = (
        "paths",
        "file_list",
        "address",
        "clamd_conf",
        "transport",
        "json_lines",
        "infected_only",
        "quiet",
        "log_file",
        "summary",
        "progress",
        "max_stream_size",
        "max_file_size",
        "connect_timeout",
        "request_timeout",
        "eicar_check",
        "action",
    )

    def __init__(
        self,
        paths: list[str],
        *,
        file_list: str | None = None,  # a file naming more paths, one per line
        address: str | None = None,
        clamd_conf: str | os.PathLike[str] = DEFAULT_CLAMD_CONF,
        transport: TransportChoice = TransportChoice.AUTO,
        json_lines: bool = False,
        infected_only: bool = False,
        quiet: bool = False,  # no line on stdout; those of files not scanned on stderr
        log_file: str | None = None,  # every line appended there too (clamdscan's --log)
        summary: bool = True,
        progress: bool | None = None,  # None: when stderr is a terminal
        max_stream_size: int | None = None,
        max_file_size: int | None = None,
        connect_timeout: float = 30.0,
        request_timeout: float | None = None,
        eicar_check: bool = True,
        # clamdscan's --move DIR, --copy DIR, --remove: ("move", DIR), ("remove", None)
        action: tuple[str, str | None] | None = None,
    ) -> None:
        self.paths = paths
        self.file_list = file_list
        self.address = address
        self.clamd_conf = clamd_conf
        self.transport = transport
        self.json_lines = json_lines
        self.infected_only = infected_only
        self.quiet = quiet
        self.log_file = log_file
        self.summary = summary
        self.progress = progress
        self.max_stream_size = max_stream_size
        self.max_file_size = max_file_size
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.eicar_check = eicar_check
        self.action = action


def run_scan(options: ScanOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Scan every file below ``options.paths``; return clamdscan's exit code."""
    if options.paths.count(STDIN_ARGUMENT) > 1:
        err.write("clamwatch scan: standard input (-) can be named only once\n")
        return 2
    action = None
    if options.action is not None:
        # imported here: safefs loads ctypes, which a scan without actions does not need
        from clamwatch.scan_actions import ActionError, ScanAction

        try:
            action = ScanAction(*options.action)
        except ActionError as exc:
            err.write(f"clamwatch scan: {exc}\n")
            return 2
    listing = None
    if options.file_list is not None:
        try:
            listing = open(options.file_list, "rb")  # noqa: SIM115 (closed at the end)
        except OSError as exc:
            reason = exc.strerror or exc
            err.write(f"clamwatch scan: cannot read the file list {options.file_list}: {reason}\n")
            return 2
        if STDIN_ARGUMENT in options.paths and _same_file(listing.fileno(), 0):
            listing.close()
            err.write(
                f"clamwatch scan: the file list {options.file_list} is standard input, which"
                " the PATH - names too\n"
            )
            return 2
    report_log = None
    if options.log_file is not None:
        try:
            # line by line, as clamdscan's log: what was written stays if the scan is killed
            report_log = open(options.log_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            reason = exc.strerror or exc
            err.write(f"clamwatch scan: cannot open the log {options.log_file}: {reason}\n")
            if listing is not None:
                listing.close()
            return 2
    try:
        return _run(options, listing, out, err, report_log=report_log, action=action)
    finally:
        if listing is not None:
            listing.close()
        if report_log is not None:
            with contextlib.suppress(OSError):  # what failed was said by _run
                report_log.close()


def _run(
    options: ScanOptions,
    listing: BinaryIO | None,
    out: TextIO,
    err: TextIO,
    *,
    report_log: TextIO | None,
    action: ScanAction | None,
) -> int:
    clamd = ClamdSettings(
        address=options.address,
        clamd_conf=options.clamd_conf,
        transport=options.transport,
        request_timeout=options.request_timeout,
        max_stream_size=options.max_stream_size,
        max_file_size=options.max_file_size,
        eicar_check=options.eicar_check,
    )
    try:
        address, conf = resolve_clamd(clamd)
        settings = engine_settings(clamd, conf, give_up_after=options.connect_timeout)
        engine = Engine(
            address,
            settings,
            inline=True,
            relearn=lambda: resolve_engine(clamd, give_up_after=None)[1],
        )
    except (AddressError, ValueError) as exc:
        err.write(f"clamwatch scan: {exc}\n")
        return 2
    exclude = None
    if (conf is not None and conf.exclude_paths) or (action and action.directory):
        # imported here: most clamd.conf files set no ExcludePath
        from clamwatch.excludepath import ExcludePaths

        if conf is not None and conf.exclude_paths:
            exclude = ExcludePaths(conf.exclude_paths, conf.path)
        else:
            exclude = ExcludePaths()
        for problem in exclude.problems:
            err.write(f"clamwatch scan: warning: {problem}\n")
        if action is not None and action.directory is not None:
            # what is moved or copied there is not found again further on
            exclude.add_directory(
                os.path.realpath(action.directory), f"the --{action.kind} directory"
            )
    window = _window(raise_nofile_limit())
    progress = options.progress if options.progress is not None else err.isatty()
    reporter = Reporter(
        None if options.quiet else out,
        err,
        options.json_lines,
        options.infected_only,
        progress and not options.quiet,
        log=report_log,
    )
    drain = 10.0  # seconds clamd gets to answer what is in flight at the end
    stopped_by: int | None = None  # the signal that ended the scan early
    try:
        with _stop_on_signals():
            try:
                try:
                    engine.wait_ready(options.connect_timeout)
                except ClamdUnavailableError as exc:
                    err.write(f"clamwatch scan: {exc}\n")
                    return 2
                with _list_reader(listing, engine) as reader:
                    items = _items(options.paths, reader, options.file_list or "", exclude or None)
                    _scan_all(engine, items, reporter, action, window=window)
            except KeyboardInterrupt:
                drain, stopped_by = 0.0, signal.SIGINT
            except _Stopped as exc:
                drain, stopped_by = 0.0, exc.signum
            except Exception as exc:
                # A bug in the engine's loop, which runs on this thread: Python's own
                # exit status for it would be 1, "found" to anyone reading clamdscan's.
                log.exception("the clamd engine failed")
                err.write(f"clamwatch scan: the scan stopped on an internal error: {exc!r}\n")
                reporter.flush()
                return 2
            finally:
                engine.close(drain)  # nothing left to do after a failure: _scan_all closed it
    except KeyboardInterrupt:  # while the last replies were awaited
        stopped_by = signal.SIGINT
    except _Stopped as exc:
        stopped_by = exc.signum
    if stopped_by is not None:
        engine.close(0.0)  # closed already, unless the signal cut that short
        if stopped_by == signal.SIGINT:
            if err.isatty():
                err.write("\n")  # after the terminal's ^C
            reporter.stopped("interrupted")
        else:
            reporter.stopped(f"stopped by {signal.Signals(stopped_by).name}")
        return 128 + stopped_by
    if options.summary:
        reporter.summary()
    reporter.flush()
    if reporter.output_error is not None:
        _output_failed(reporter.output_error, reporter.failed_output, out, err)
        return 1 if reporter.counts.infected else 2  # stopped: not every file was scanned
    return reporter.counts.exit_code()


@contextlib.contextmanager
def _list_reader(listing: BinaryIO | None, engine: Engine) -> Iterator[ListReader | None]:
    """The file list read on a thread of its own (listreader.py), if there is one."""
    if listing is None:
        yield None
        return
    # imported here: only -f needs the thread
    from clamwatch.listreader import ListReader

    reader = ListReader(listing.fileno(), engine.wake)
    try:
        yield reader
    finally:
        reader.close()


class _Stopped(BaseException):
    """SIGTERM or SIGHUP came: the scan ends as for Ctrl-C (_stop_on_signals).

    Not an Exception: nothing on the way up takes it for a failure.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise _Stopped in here, as SIGINT raises KeyboardInterrupt.

    By default they end the process at once: the lines of files already
    answered but still in stdout's buffer (a file, a pipe) would be lost, and
    clamd's sessions cut. Off the main thread (a test's) nothing changes.
    """

    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    previous: dict[int, signal.Handlers | int | Callable[..., object] | None] = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, stop)
    except ValueError:
        pass  # not the main thread
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _same_file(fd: int, other: int) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.fstat(other))
    except OSError:
        return False


def _output_failed(exc: OSError, what: str, out: TextIO, err: TextIO) -> None:
    """``what`` (the results, or the --log file) could not be written, so the scan stopped.

    A reader that went away (``clamwatch scan ... | head``) is not worth a
    word; anything else (a full disk) is. Whatever is still buffered for the
    output goes nowhere, so that Python's own flush at exit does not fail too.
    """
    if exc.errno != errno.EPIPE:
        with contextlib.suppress(OSError):  # the summary goes to stderr with --json
            err.write(f"clamwatch scan: cannot write {what}: {exc.strerror or exc}\n")
    if what != THE_RESULTS:
        return  # the output itself is fine
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)


def _scan_all(
    engine: Engine,
    items: Iterator[WalkItem | _StandardInput | None],
    reporter: Reporter,
    action: ScanAction | None = None,
    *,
    window: int = _WINDOW,
) -> None:
    """Walk, open and submit on this thread, turning the engine's loop in between.

    The engine is inline: its replies are read, and reported, from within
    ``engine.step``. Steps that wait are taken only when ``window`` files
    are open and unanswered, until ``_FEED_EVERY`` of them are answered;
    while walking, a step that does not wait every ``_FEED_EVERY`` files
    sends what was opened, so clamd starts at once.
    """
    outstanding: set[ScanJob] = set()

    def done(job: ScanJob, outcome: ScanOutcome) -> None:
        outstanding.discard(job)
        if action is not None and type(outcome.verdict) is Infected:
            # while the scanned descriptor is open: a copy is made from it
            stdin = isinstance(job.context, _StandardInput)
            acted = action.apply(job.file, from_stdin=stdin)
            job.file.close()
            reporter.report(job.file.path, outcome.verdict, outcome, acted)
            return
        job.file.close()
        reporter.report(job.file.path, outcome.verdict, outcome)

    try:
        _feed(engine, items, reporter, outstanding, done, window=window)
    except Exception as exc:
        # Never a verdict: whatever was waiting is an error, with its line,
        # and so is every file the walk had yet to reach. The engine is
        # closed first, without a drain, so that no late reply reports a
        # file a second time.
        with contextlib.suppress(Exception):
            engine.close(0.0)
        failed = ScanError(f"the clamd engine failed: {exc!r}")
        for job in list(outstanding):
            done(job, ScanOutcome(failed, None, None, 0))
        with contextlib.suppress(Exception):  # a walk that failed itself has ended
            for item in items:
                if reporter.output_error is not None or item is None:
                    break  # None: the list's next line has not come, nor need it
                if isinstance(item, tuple):
                    reporter.report(*item)
                else:
                    reporter.report(item if isinstance(item, str) else item.path, failed)
        raise


def _items(
    paths: list[str],
    listing: ListReader | None,
    list_name: str,
    exclude: ExcludePaths | None = None,
) -> Iterator[WalkItem | _StandardInput | None]:
    """What walk() finds below each path, with standard input in place of -.

    Then below each path named in ``listing``, read as it goes: one per
    line, as bytes (a name need not be UTF-8), empty lines skipped; a - there
    is a file named -; None while the next line has not come (wait for it in
    the engine: Engine.wake ends the wait). Leaves out what ``exclude``
    matches.
    """
    for path in paths:
        if path == STDIN_ARGUMENT:
            yield _StandardInput()
        else:
            yield from walk([path], exclude)
    if listing is None:
        return
    number = 0  # lines read
    while True:
        line = listing.take()
        if line is None:
            return
        if isinstance(line, OSError):
            failed = f"reading the file list failed: {line.strerror or line}; the paths after"
            yield list_name, ScanError(f"{failed} line {number} were not scanned")
            return
        if isinstance(line, bytes):
            number += 1
            if line:
                yield from walk([os.fsdecode(line)], exclude)
        else:  # WAITING
            yield None


def _feed(
    engine: Engine,
    items: Iterator[WalkItem | _StandardInput | None],
    reporter: Reporter,
    outstanding: set[ScanJob],
    done: Callable[[ScanJob, ScanOutcome], None],
    *,
    window: int,
) -> None:
    opened_since_step = 0
    refill = window - min(_FEED_EVERY, window // 2)  # walk on once this few are open
    for item in items:
        if reporter.output_error is not None:
            break  # nobody gets to read what comes next
        if item is None:
            # the file list's next line has not come: what was answered is
            # read and written out meanwhile (listreader.py)
            _wait(engine, reporter)
            opened_since_step = 0
            continue
        if isinstance(item, tuple):
            reporter.report(*item)
            continue
        if isinstance(item, str):
            path, opened = item, open_for_scan(item)
        elif isinstance(item, _StandardInput):
            # imported here: tempfile would cost every scan's start-up
            from clamwatch.stdin_copy import copy_stdin

            path, opened = item.path, copy_stdin(item.path)
        else:
            path = item.path
            opened = open_for_scan(
                path, listed_regular=item.regular, within=(item.dir_fd, item.name)
            )
        if not isinstance(opened, OpenedFile):
            reporter.report(path, opened)
            continue
        job = ScanJob(opened, done, context=item if isinstance(item, _StandardInput) else None)
        outstanding.add(job)
        engine.submit(job)
        opened_since_step += 1
        if len(outstanding) >= window:
            # let a batch come back before walking on: each turn of the loop
            # then takes several replies, and clamd still has plenty waiting
            while len(outstanding) > refill:
                _wait(engine, reporter)
            opened_since_step = 0
        elif opened_since_step >= _FEED_EVERY:
            engine.step(0.0)
            opened_since_step = 0
    while outstanding:
        _wait(engine, reporter)


def _window(limit: int) -> int:
    """How many files may be open and unanswered under a limit of ``limit``
    open descriptors: half of what the scan does not need otherwise, so that
    the walk, which holds one per level of the tree, has the other half."""
    return max(2, min(_WINDOW, (limit - _OTHER_DESCRIPTORS) // 2))


def _wait(engine: Engine, reporter: Reporter) -> None:
    """Wait in the engine for replies (or the list's next line), the lines of
    those answered so far written out first: none sits in a buffer while the
    scan waits, on a pipe too, where clamdscan writes each line as it comes."""
    reporter.flush()
    engine.step(_STEP_WAIT)
