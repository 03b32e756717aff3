"""What `clamwatch scan` prints: clamdscan-style lines or JSON, a progress line, a summary."""

from __future__ import annotations

import os
import time

from clamwatch.names import display_path, is_utf8
from clamwatch.verdict import Clean, Infected, NotScanned, ScanError, Verdict, describe

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from typing import TextIO

    from clamwatch.clamd.job import ScanOutcome

_PROGRESS_EVERY = 0.25  # seconds between progress redraws


class Counts:
    __slots__ = ("scanned", "infected", "not_scanned", "errors")

    def __init__(self) -> None:
        self.scanned = 0  # clean or infected: clamd looked at the content
        self.infected = 0
        self.not_scanned = 0
        self.errors = 0

    @property
    def total(self) -> int:
        return self.scanned + self.not_scanned + self.errors

    def add(self, verdict: Verdict) -> None:
        match verdict:
            case Clean():
                self.scanned += 1
            case Infected():
                self.scanned += 1
                self.infected += 1
            case NotScanned():
                self.not_scanned += 1
            case ScanError():
                self.errors += 1

    def exit_code(self) -> int:
        """clamdscan's codes: 1 when anything was found, else 2 when anything was not scanned."""
        if self.infected:
            return 1
        return 2 if self.not_scanned or self.errors else 0


def json_record(
    path: str,
    verdict: Verdict,
    outcome: ScanOutcome | None,
    action: tuple[str, bool] | None = None,
) -> dict[str, object]:
    record: dict[str, object] = {
        "path": path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"),
        "verdict": verdict.kind,
    }
    if not is_utf8(path):
        import base64  # only here: every import is start-up time for `clamwatch scan`

        # the exact bytes, for names that are not UTF-8
        record["path_b64"] = base64.b64encode(os.fsencode(path)).decode("ascii")
    match verdict:
        case Infected(signature=signature):
            record["signature"] = signature
        case NotScanned(reason=reason, detail=detail):
            record["reason"] = reason.value
            record["message"] = detail
        case ScanError(message=message):
            record["message"] = message
        case Clean():
            pass
    if action is not None:  # --move, --copy, --remove (scan_actions.py)
        record["action"], record["action_done"] = action
    if outcome is not None:
        record["transport"] = outcome.transport.value if outcome.transport else None
        record["attempts"] = outcome.attempts
        if outcome.clamd_version:
            record["clamd_version"] = outcome.clamd_version
    return record


# What Reporter.failed_output says when the results themselves (stdout) failed.
THE_RESULTS = "the results"


class Reporter:
    """Each file's line to ``out`` (None: --quiet, where only the lines of files not
    scanned go, to ``err``), and every line to ``log`` as well when there is one."""

    __slots__ = (
        "out",
        "err",
        "json_lines",
        "infected_only",
        "progress",
        "log",
        "counts",
        "started",
        "started_wall",
        "_drawn",
        "_last_draw",
        "output_error",
        "failed_output",
    )

    def __init__(
        self,
        out: TextIO | None,
        err: TextIO,
        json_lines: bool = False,
        infected_only: bool = False,
        progress: bool = False,
        *,
        log: TextIO | None = None,
    ) -> None:
        self.out = out
        self.err = err
        self.json_lines = json_lines
        self.infected_only = infected_only
        self.progress = progress
        self.log = log
        self.counts = Counts()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self._drawn = False
        self._last_draw = 0.0
        # The first error writing the results (a closed pipe, a full disk):
        # from then on nothing more is written, and the scan stops (see
        # scan_command).
        self.output_error: OSError | None = None
        self.failed_output = THE_RESULTS  # what output_error was met writing

    def report(
        self,
        path: str,
        verdict: Verdict,
        outcome: ScanOutcome | None = None,
        action: tuple[str, bool] | None = None,
    ) -> None:
        """One file's line; ``action``: what --move, --copy or --remove did, and if it
        could, as a line of its own after it (in the JSON record, two fields)."""
        if type(verdict) is Clean and not (
            self.json_lines or self.infected_only or self.progress or self.log
        ):
            # the line nearly every file gets, without the general path's matching
            self.counts.scanned += 1
            self._write(f"{display_path(path)}: OK\n")
            return
        self.counts.add(verdict)
        if self.infected_only and type(verdict) is Clean:
            # clamdscan -i's lines: a file not scanned still gets its ERROR
            self._tick()
            return
        self._clear()
        if self.json_lines:
            import json  # only with --json: see json_record

            line = json.dumps(json_record(path, verdict, outcome, action)) + "\n"
        else:
            line = f"{display_path(path)}: {describe(verdict)}\n"
        quiet_error = self.out is None and isinstance(verdict, NotScanned | ScanError)
        self._write(line, self.err if quiet_error else None)
        if action is not None:
            note, done = action
            if not done:
                self.counts.errors += 1
            if not self.json_lines:
                quiet_error = self.out is None and not done
                text = f"{display_path(path)}: {note}" + ("\n" if done else " ERROR\n")
                self._write(text, self.err if quiet_error else None)
        self._tick()

    def _write(self, text: str, stream: TextIO | None = None, *, to_log: bool = True) -> None:
        """``text`` to ``stream``, else to ``out`` (if any), and to the log."""
        if self.output_error is not None:
            return
        try:
            if stream is not None:
                stream.write(text)
            elif self.out is not None:
                self.out.write(text)
        except OSError as exc:
            self.output_error = exc
            return
        if self.log is not None and to_log:
            try:
                self.log.write(text)
            except OSError as exc:
                self._log_failed(exc)

    def flush(self) -> None:
        if self.output_error is None:
            try:
                if self.out is not None:
                    self.out.flush()
            except OSError as exc:
                self.output_error = exc
                return
            try:
                if self.log is not None:
                    self.log.flush()
            except OSError as exc:
                self._log_failed(exc)

    def _log_failed(self, exc: OSError) -> None:
        """The --log file cannot be written: the scan stops, as for its output,
        and says that the log is what failed."""
        self.output_error = exc
        self.failed_output = f"the log {display_path(str(getattr(self.log, 'name', '')))}"

    def _tick(self) -> None:
        if not self.progress:
            return
        now = time.monotonic()
        if now - self._last_draw < _PROGRESS_EVERY:
            return
        self._last_draw = now
        c = self.counts
        rate = c.total / max(now - self.started, 1e-9)
        self.flush()
        self.err.write(
            f"\r\x1b[K{c.total} files, {c.infected} infected, "
            f"{c.not_scanned + c.errors} not scanned, {rate:.0f} files/s"
        )
        self.err.flush()
        self._drawn = True

    def stopped(self, why: str) -> None:
        """The scan ends before its files are done (Ctrl-C, SIGTERM): the lines so
        far written out, then ``why`` and what it means on stderr and in the log
        (not with --json: the log then holds JSON lines only)."""
        self.flush()
        text = f"clamwatch scan: {why} before every file was scanned\n"
        try:
            self._clear()
            self.err.write(text)
            self.err.flush()
        except OSError:
            pass  # a terminal that went away (SIGHUP): the log still says it
        if self.log is not None and self.output_error is None and not self.json_lines:
            try:
                self.log.write(text)
            except OSError as exc:
                self._log_failed(exc)

    def _clear(self) -> None:
        if self._drawn:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._drawn = False

    def summary(self) -> None:
        self._clear()
        c = self.counts
        elapsed = time.monotonic() - self.started
        stream = self.err if self.json_lines and self.out is not None else None
        fmt = "%Y:%m:%d %H:%M:%S"
        minutes, seconds = divmod(int(elapsed), 60)
        # with --json, the log holds the JSON lines alone, as stdout does
        self._write(
            "\n----------- SCAN SUMMARY -----------\n"
            f"Scanned files: {c.scanned}\n"
            f"Infected files: {c.infected}\n"
            f"Not scanned: {c.not_scanned}\n"
            f"Errors: {c.errors}\n"
            f"Time: {elapsed:.3f} sec ({minutes} m {seconds} s)\n"
            f"Start Date: {time.strftime(fmt, time.localtime(self.started_wall))}\n"
            f"End Date:   {time.strftime(fmt)}\n",
            stream,
            to_log=not self.json_lines,
        )
