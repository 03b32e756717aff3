"""The pipeline's own retries of a file whose scans lost their connection to clamd.

The engine sends a request lost with its session again, up to
``max_attempts``; after that it reports a ScanError, and the pipeline tries
the file again later (``_RETRY_DELAYS``, shortened here) before it reports
that error. Real files, the real engine, dispatcher and pipeline; the fake
clamd closes the connection at a file's scan, as a clamd that crashes on
it does, which the real one cannot be made to do on demand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from clamwatch import pipeline as pipeline_module
from clamwatch.clamd.address import parse_address
from clamwatch.clamd.engine import Engine
from clamwatch.clamd.settings import EngineSettings
from clamwatch.config import WatchConfig
from clamwatch.dispatch import Dispatcher, Work
from clamwatch.pipeline import Pipeline
from clamwatch.testsig import EICAR_SIGNATURE
from clamwatch.verdict import Infected, ScanError
from clamwatch.watch.filters import WatchFilter
from fakeclamd import FakeClamd, Faults
from helpers import Reports

DEADLINE = 15.0  # only reached when a retry is lost
FAST: dict[str, Any] = {
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
    "connect_timeout": 3.0,
    "sessions": 1,
    # faults are placed by request number; the EICAR check would be one more
    "eicar_check": False,
}


@pytest.fixture(autouse=True)
def short_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "_RETRY_DELAYS", (0.1, 0.2))


@contextmanager
def scanning(address: str, watched: Path, **settings: Any) -> Iterator[tuple[Pipeline, Reports]]:
    engine = Engine(parse_address(address), EngineSettings(**{**FAST, **settings}))
    engine.start()
    watch = WatchConfig(path=watched, name="uploads")
    reports = Reports(DEADLINE)
    pipeline = Pipeline(
        Dispatcher(max_pending=100, settle_time=2.0), engine, {str(watched): WatchFilter(watch)},
        reports,
    )  # fmt: skip
    pipeline.start()
    try:
        yield pipeline, reports
    finally:
        pipeline.stop(time.monotonic() + 2.0)
        engine.close()


def fildes_sent(fake: FakeClamd) -> int:
    return sum(c.name == "FILDES" for log in fake.connections() for c in log.commands)


def test_a_file_that_loses_every_connection_is_tried_again_then_reported_as_an_error(
    watched: Path, eicar: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Three rounds of two attempts each, then one scan-error: never a detection, never clean."""
    path = watched / "crashes-clamd"
    path.write_bytes(eicar)
    # every connection answers its handshake (requests 1 and 2), then closes at the scan
    with (
        caplog.at_level(logging.WARNING, logger="clamwatch.pipeline"),
        FakeClamd(Faults(drop_after=2, repeat=True)) as fake,
        scanning(fake.unix_address, watched, max_attempts=2) as (pipeline, reports),
    ):
        pipeline.dispatcher.due(Work(str(path), str(watched), time.monotonic(), "closed"))
        reports.wait_for(1)
        (result,) = reports.results
        sent = fildes_sent(fake)
    assert isinstance(result.verdict, ScanError), result.verdict
    assert result.verdict.message.startswith("clamd connection lost 2 times while scanning")
    assert result.work.tries == 2
    assert sent == 6
    retries = [r.getMessage() for r in caplog.records if "trying again in" in r.getMessage()]
    assert len(retries) == 2 and all(
        m.startswith(f"{path}: clamd connection lost") for m in retries
    )
    assert len(reports.results) == 1


def test_a_file_whose_scan_lost_its_connection_gets_its_true_verdict_on_the_retry(
    watched: Path, eicar: bytes
) -> None:
    """clamd closes the first connection at the scan and then serves: the retry finds EICAR."""
    path = watched / "infected"
    path.write_bytes(eicar)
    with (
        FakeClamd(Faults(drop_after=2)) as fake,
        scanning(fake.unix_address, watched, max_attempts=1) as (pipeline, reports),
    ):
        pipeline.dispatcher.due(Work(str(path), str(watched), time.monotonic(), "closed"))
        reports.wait_for(1)
        (result,) = reports.results
        sent = fildes_sent(fake)
    assert result.verdict == Infected(EICAR_SIGNATURE)
    assert result.work.tries == 1
    assert sent == 2
