"""clamwatch.lazylog: scan's loggers import logging only for a message that passes."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from clamwatch import lazylog


def run(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter, where logging is not imported yet."""
    prelude = "import sys\nfrom clamwatch import lazylog\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, check=True
    )


def test_messages_below_the_level_do_not_import_logging() -> None:
    result = run(
        "lazylog.configure(lazylog.WARNING, 'clamwatch: %(message)s')\n"
        "log = lazylog.Logger('clamwatch.x')\n"
        "log.debug('not shown %s', 1)\n"
        "log.info('not shown either')\n"
        "print('logging' in sys.modules)\n"
        "log.warning('shown %s', 2)\n"
        "print('logging' in sys.modules)\n"
    )
    assert result.stdout == "False\nTrue\n"
    assert result.stderr == "clamwatch: shown 2\n"


def test_the_level_given_is_the_level_applied() -> None:
    result = run(
        "lazylog.configure(lazylog.INFO, 'clamwatch: %(message)s')\n"
        "log = lazylog.Logger('clamwatch.x')\n"
        "log.debug('not shown')\n"
        "log.info('info %s', 'shown')\n"
        "log.debug('still not shown')\n"
        "lazylog.shutdown()\n"
    )
    assert result.stderr == "clamwatch: info shown\n"


def test_exception_carries_the_traceback() -> None:
    result = run(
        "lazylog.configure(lazylog.WARNING, 'clamwatch: %(message)s')\n"
        "try:\n"
        "    raise KeyError('boom')\n"
        "except KeyError:\n"
        "    lazylog.Logger('clamwatch.x').exception('it failed: %s', 'here')\n"
    )
    assert result.stderr.startswith("clamwatch: it failed: here\nTraceback")
    assert "KeyError: 'boom'" in result.stderr


def test_shutdown_without_logging_does_not_import_it() -> None:
    result = run("lazylog.shutdown()\nprint('logging' in sys.modules)\n")
    assert result.stdout == "False\n"


def test_once_logging_is_set_up_it_decides(caplog: pytest.LogCaptureFixture) -> None:
    # the daemon (and pytest) import and configure logging themselves
    log = lazylog.Logger("clamwatch.lazylog-test")
    with caplog.at_level(logging.DEBUG, logger="clamwatch.lazylog-test"):
        log.debug("debug %d", 1)
        log.error("error %d", 2)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "debug 1"),
        (logging.ERROR, "error 2"),
    ]
    assert caplog.records[0].funcName == "test_once_logging_is_set_up_it_decides"
