"""Event lines: the JSON each event prints, and lines held back for a round of verdicts."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from clamwatch.eventkind import EventKind, emit
from clamwatch.events import (
    EventStreamHandler,
    JsonFormatter,
    TextFormatter,
    _sole_event_handler,
    emit_fields,
    held_back,
)
from helpers import RecordingHandler


class CountingStream(io.StringIO):
    """A text stream that counts its write() calls."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


@pytest.fixture
def stream() -> Iterator[CountingStream]:
    """The events logger writing JSON lines to a counting stream (as `clamwatch run` does)."""
    out = CountingStream()
    handler = EventStreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("clamwatch.events")
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield out
    logger.removeHandler(handler)
    logger.setLevel(old_level)
    logger.propagate = old_propagate


def test_a_verdict_line_has_its_fields_in_order_without_none(stream: CountingStream) -> None:
    emit(
        EventKind.DETECTION,
        "/srv/up/caf\u00e9.exe: Eicar FOUND",
        logging.WARNING,
        signature="Eicar",
        path="/srv/up/caf\u00e9.exe",
        watch=Path("/srv/up"),
        latency_ms=1.5,
        attempts=1,
        clean=False,
        transport=None,
    )
    (line,) = stream.getvalue().splitlines()
    assert "caf\u00e9" in line  # not escaped: ensure_ascii is off
    data = json.loads(line)
    assert list(data) == [
        "time", "level", "event", "message", "logger",
        "signature", "path", "watch", "latency_ms", "attempts", "clean",
    ]  # fmt: skip
    assert data["level"] == "warning"
    assert data["event"] == "detection"
    assert data["logger"] == "clamwatch.events"
    assert data["watch"] == "/srv/up"  # a PathLike as its text
    assert data["latency_ms"] == 1.5
    assert data["clean"] is False
    assert len(str(data["time"])) == len("2026-11-25T09:59:00.123Z")
    assert str(data["time"]).endswith("Z")


def test_a_name_that_is_not_utf8_is_valid_json_and_exact_in_b64(stream: CountingStream) -> None:
    """A lone surrogate in "path" made the line no valid JSON for a strict parser."""
    path = os.fsdecode(b"/srv/up/j\xffk\nl")
    emit(EventKind.CLEAN, "x: OK", logging.INFO, path=path, verdict="clean")
    line = stream.getvalue()
    line.encode("utf-8")  # no lone surrogate left
    (data,) = stream.lines()
    assert data["path"] == "/srv/up/j\\xffk\nl"
    assert base64.b64decode(str(data["path_b64"])) == b"/srv/up/j\xffk\nl"
    assert data["verdict"] == "clean" and "verdict_b64" not in data


def test_emit_fields_prints_what_emit_prints(stream: CountingStream) -> None:
    fields: dict[str, object] = {"path": "/srv/up/a", "verdict": "clean", "attempts": 2}
    emit(EventKind.CLEAN, "/srv/up/a: OK", logging.INFO, **fields)
    emit_fields(EventKind.CLEAN, "/srv/up/a: OK", logging.INFO, dict(fields))
    first, second = stream.lines()
    del first["time"], second["time"]
    assert first == second


def test_a_disabled_level_prints_nothing(stream: CountingStream) -> None:
    logging.getLogger("clamwatch.events").setLevel(logging.WARNING)
    emit_fields(EventKind.CLEAN, "/srv/up/a: OK", logging.INFO, {"path": "/srv/up/a"})
    emit(EventKind.CLEAN, "/srv/up/a: OK", logging.INFO, path="/srv/up/a")
    assert stream.getvalue() == ""


def test_a_lone_event_is_written_at_once(stream: CountingStream) -> None:
    emit(EventKind.CLEAN, "/srv/up/a: OK", path="/srv/up/a")
    assert stream.writes == 1
    assert [line["path"] for line in stream.lines()] == ["/srv/up/a"]


def test_held_back_lines_are_written_together_at_the_end(stream: CountingStream) -> None:
    with held_back():
        for name in "abc":
            emit(EventKind.CLEAN, f"/srv/up/{name}: OK", path=f"/srv/up/{name}")
        with held_back():  # nested: only the outermost end writes
            emit(EventKind.CLEAN, "/srv/up/d: OK", path="/srv/up/d")
        assert stream.writes == 0
    assert stream.writes == 1
    assert [line["path"] for line in stream.lines()] == [f"/srv/up/{n}" for n in "abcd"]
    emit(EventKind.CLEAN, "/srv/up/e: OK", path="/srv/up/e")  # after the block: at once again
    assert stream.writes == 2


def test_held_back_lines_are_written_when_the_block_fails(stream: CountingStream) -> None:
    with pytest.raises(RuntimeError), held_back():
        emit(EventKind.CLEAN, "/srv/up/a: OK", path="/srv/up/a")
        raise RuntimeError("boom")
    assert [line["path"] for line in stream.lines()] == ["/srv/up/a"]


@contextlib.contextmanager
def sole() -> Iterator[EventStreamHandler]:
    """The stream's handler alone on the events logger, as the daemon sets it up.

    pytest adds its capture handlers as each test's call starts, so this is
    entered inside the test, not in a fixture.
    """
    logger = logging.getLogger("clamwatch.events")
    saved = logger.handlers[:]
    (handler,) = [h for h in saved if isinstance(h, EventStreamHandler)]
    logger.handlers[:] = [handler]
    try:
        yield handler
    finally:
        logger.handlers[:] = saved


@pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter])
def test_an_event_prints_the_same_with_or_without_a_log_record(
    stream: CountingStream, formatter: type[logging.Formatter]
) -> None:
    """The daemon's sole handler takes events directly; with another handler in
    the way they go through logging's records. Both print the same line."""
    logger = logging.getLogger("clamwatch.events")
    fields: dict[str, object] = {"path": "/srv/up/caf\u00e9", "watch": Path("/srv"), "n": 2}
    other = RecordingHandler()
    with sole() as handler:
        handler.setFormatter(formatter())
        assert _sole_event_handler(logging.WARNING) is handler
        emit_fields(EventKind.DETECTION, "/srv/up/caf\u00e9: Eicar FOUND", logging.WARNING, fields)
        logger.addHandler(other)
        assert _sole_event_handler(logging.WARNING) is None
        emit_fields(EventKind.DETECTION, "/srv/up/caf\u00e9: Eicar FOUND", logging.WARNING, fields)
    assert len(other.records) == 1  # the second went through logging
    direct, recorded = stream.getvalue().splitlines()
    if formatter is JsonFormatter:
        first, second = json.loads(direct), json.loads(recorded)
        del first["time"], second["time"]
        assert first == second
        assert first["watch"] == "/srv" and first["logger"] == "clamwatch.events"
    else:
        assert direct == recorded == "clamwatch[warning]: /srv/up/caf\u00e9: Eicar FOUND"


def test_a_filter_or_a_higher_handler_level_takes_events_through_logging(
    stream: CountingStream,
) -> None:
    logger = logging.getLogger("clamwatch.events")
    with sole() as handler:
        handler.setLevel(logging.WARNING)
        assert _sole_event_handler(logging.INFO) is None  # the handler's level decides
        emit(EventKind.CLEAN, "/srv/up/a: OK", path="/srv/up/a")
        assert stream.getvalue() == ""
        handler.setLevel(logging.NOTSET)
        logger.addFilter(lambda record: False)
        try:
            assert _sole_event_handler(logging.INFO) is None
            emit(EventKind.CLEAN, "/srv/up/a: OK", path="/srv/up/a")
            assert stream.getvalue() == ""  # the filter dropped it
        finally:
            logger.filters.clear()
