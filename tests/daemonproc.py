"""`clamwatch run` as a real process, for end-to-end tests and benchmarks.

The daemon logs one JSON object per event to stderr (--log-format json); a
reader thread collects them so tests can wait, with a deadline, for the
verdicts they expect.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

VERDICT_EVENTS = ("clean", "detection", "not-scanned", "scan-error")


def write_config(
    path: Path,
    *,
    address: str,
    watches: Iterable[Path],
    state_directory: Path,
    daemon: dict[str, Any] | None = None,
    clamd: dict[str, Any] | None = None,
    quarantine: dict[str, Any] | None = None,
    watch_options: dict[str, Any] | None = None,
) -> Path:
    """A TOML configuration for a test daemon."""

    def value(v: Any) -> str:
        return json.dumps(v)  # TOML strings, numbers and arrays read the same

    lines = ["[clamd]", f"address = {value(address)}"]
    lines += [f"{k} = {value(v)}" for k, v in (clamd or {}).items()]
    lines += ["[daemon]", f"state_directory = {value(str(state_directory))}"]
    lines += [f"{k} = {value(v)}" for k, v in (daemon or {}).items()]
    # never the system's /var/lib/clamwatch/quarantine: beside the state
    quarantine = {"directory": str(state_directory / "quarantine"), **(quarantine or {})}
    lines += ["[quarantine]"] + [f"{k} = {value(v)}" for k, v in quarantine.items()]
    for watch in watches:
        lines += ["[[watch]]", f"path = {value(str(watch))}"]
        lines += [f"{k} = {value(v)}" for k, v in (watch_options or {}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class DaemonProcess:
    def __init__(
        self,
        config: Path,
        *,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        log_target: str = "stderr",
    ) -> None:
        self.config = config
        self.events: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        self._cond = threading.Condition()
        self.process = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "clamwatch",
                "run",
                "--config",
                str(config),
                "--log-format",
                "json",
                "--log-target",
                log_target,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, name="daemon-log-reader")
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
            with self._cond:
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.other_lines.append(line)
                self._cond.notify_all()

    def wait_until(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(json.dumps(e) for e in self.events[-10:])
                    raise AssertionError(
                        f"timed out after {timeout} s waiting for {what}; last events:\n{tail}\n"
                        + "\n".join(self.other_lines[-20:])
                    )
                self._cond.wait(min(left, 0.2))

    def wait_event(self, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        self.wait_until(lambda evs: any(e["event"] == kind for e in evs), timeout, kind)
        return next(e for e in self.events if e["event"] == kind)

    def verdicts(self) -> dict[str, list[dict[str, Any]]]:
        """Verdict events by path."""
        with self._cond:
            found: dict[str, list[dict[str, Any]]] = {}
            for event in self.events:
                if event["event"] in VERDICT_EVENTS:
                    found.setdefault(event["path"], []).append(event)
            return found

    def wait_verdicts(self, paths: Iterable[Path | str], timeout: float = 60.0) -> None:
        wanted = {os.fsdecode(p) for p in paths}

        def all_in(events: list[dict[str, Any]]) -> bool:
            seen = {e.get("path") for e in events if e["event"] in VERDICT_EVENTS}
            return wanted <= seen

        self.wait_until(all_in, timeout, f"verdicts for {len(wanted)} files")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reader.join()
            assert self.process.stderr is not None
            self.process.stderr.close()
        return code

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


StartDaemon = Callable[..., DaemonProcess]
"""The ``start_daemon`` fixture (conftest.py): start ``clamwatch run``, stopped after the test."""


def only_once(daemon: DaemonProcess, paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Every path has exactly one verdict; returns them by path."""
    verdicts = daemon.verdicts()
    twice = {p: [e["reason"] for e in v] for p, v in verdicts.items() if len(v) > 1}
    assert not twice, (
        f"{len(twice)} files got more than one verdict, e.g. {list(twice.items())[:3]}"
    )
    return {str(p): verdicts[str(p)][0] for p in paths}
