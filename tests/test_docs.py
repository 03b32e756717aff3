"""What a user reads is true: README's synopses, examples and lists against the code.

The shipped configuration's keys and defaults: test_config.py; the catalog
and the units: test_systemd_unit.py; the journal fields README names:
test_journal.py.
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from pathlib import Path

import pytest

from clamwatch import cli
from clamwatch.config import parse_config
from clamwatch.eventkind import EventKind
from clamwatch.policy import Policy, parse_rule

README = Path(__file__).resolve().parent.parent / "README.md"


def _section(heading: str) -> str:
    """README's text from ``heading`` (a whole line) to the next heading of its level."""
    text = README.read_text(encoding="utf-8")
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n")
    end = text.find(f"\n{level} ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _synopsis(command: str) -> str:
    """The first code block of README's section on ``clamwatch COMMAND``."""
    match = re.search(r"```\n(.*?)```", _section(f"## clamwatch {command}"), re.S)
    assert match, f"README: no synopsis under '## clamwatch {command}'"
    return match.group(1)


def _parsers(command: str) -> list[argparse.ArgumentParser]:
    """The subcommand's parser, and those of its own actions (quarantine list...)."""
    found = [cli._subparser(cli.build_parser(command), command)]
    for parser in found:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.extend(action.choices.values())
    return found


@pytest.mark.parametrize("command", ["scan", "run", "check-config", "quarantine"])
def test_readme_synopsis_names_every_option(command: str) -> None:
    synopsis = _synopsis(command)
    assert synopsis.startswith(f"clamwatch {command} ")
    missing = []
    for parser in _parsers(command):
        for action in parser._actions:
            if not action.option_strings or action.option_strings[0] == "-h":
                continue
            named = any(
                re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", synopsis)
                for option in action.option_strings
            )
            if not named:
                missing.append("/".join(action.option_strings))
    assert missing == [], f"README's synopsis of clamwatch {command} lacks {missing}"


def test_every_help_that_exits_says_how() -> None:
    for command in ("scan", "run", "check-config", "quarantine"):
        text = _parsers(command)[0].format_help()
        assert "exit status:" in text, f"clamwatch {command} --help: no exit status"


def test_scan_help_shows_the_lines_scan_prints() -> None:
    text = _parsers("scan")[0].format_help()
    # verdict.describe(): "Not scanned: DETAIL ERROR" for a file not scanned
    for line in ("PATH: OK", "PATH: SIGNATURE FOUND", "PATH: Not scanned: REASON ERROR"):
        assert f"\n  {line}" in text
    assert f"| `{'PATH: Not scanned: REASON ERROR'}` |" in README.read_text(encoding="utf-8")


def test_readme_configuration_examples_are_valid_and_their_defaults_true() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        parse_config(README, tomllib.loads(block))
        for key, words in re.findall(r"^(on_\w+) = .*# default: (\[.*?\])", block, re.M):
            kind = key.removeprefix("on_")
            rule = parse_rule(json.loads(words), for_clean=kind == "clean")
            assert rule == getattr(Policy(), kind), f"README: {key} default {words}"


def test_readme_lists_every_kind_of_event() -> None:
    match = re.search(r"The kinds: (.*?) \(`clamwatch/events\.py`", README.read_text(), re.S)
    assert match, "README: no list of the kinds of event"
    listed = re.findall(r"[a-z]+(?:-[a-z]+)*", re.sub(r"\([^)]*\)", "", match.group(1)))
    assert listed == [kind.value for kind in EventKind]
