"""clamd.conf's ExcludePath as `clamwatch scan` applies it: clamd's matching rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from clamwatch.clamd.address import read_clamd_conf
from clamwatch.excludepath import ExcludePaths
from clamwatch.walk import ListedFile, walk


@pytest.mark.parametrize(
    ("pattern", "path", "excluded"),
    [
        # a pattern ending in "/" is matched with a "/" appended (match_regex)
        ("^/proc/", "/proc", True),
        ("^/proc/", "/proc/1/status", True),
        ("^/proc/", "/procfs/x", False),
        ("^/proc$", "/proc", True),
        ("^/proc$", "/proc/1", False),
        # searched anywhere in the path, as regexec does
        ("skipme", "/srv/a/skipme.txt", True),
        (r"\.iso$", "/srv/disk.iso", True),
        (r"\.iso$", "/srv/disk.iso.txt", False),
        # POSIX bracket classes
        (r"[[:digit:]]\.com$", "/srv/x7.com", True),
        (r"[[:digit:]]\.com$", "/srv/x.com", False),
        (r"^/srv/[[:upper:]][[:alnum:]_]*$", "/srv/Ab_1", True),
        (r"^/srv/[[:upper:]][[:alnum:]_]*$", "/srv/ab", False),
        ("/tmp/[^/]+/cache/", "/tmp/user/cache", True),
        # Python's "$" matches before a last newline, POSIX's does not
        (r"\.iso$", "/srv/x.iso\n", False),
        ("x", "/srv/x\ny", False),
    ],
)
def test_clamds_matching_rules(pattern: str, path: str, excluded: bool) -> None:
    paths = ExcludePaths((pattern,), "/etc/clamav/clamd.conf")
    said = f"ExcludePath {pattern} in /etc/clamav/clamd.conf"
    assert (paths.match(path) == said) is excluded


def test_a_pattern_python_cannot_take_is_ignored_and_said(tmp_path: Path) -> None:
    paths = ExcludePaths(("(unclosed", "^/ok/"), "/etc/clamav/clamd.conf")
    assert paths.match("/ok/x") == "ExcludePath ^/ok/ in /etc/clamav/clamd.conf"
    assert paths.match("(unclosed") is None
    (problem,) = paths.problems
    assert problem.startswith("ExcludePath (unclosed in /etc/clamav/clamd.conf is not a")
    assert problem.endswith("ignored, what it names is scanned")
    assert not ExcludePaths(("(",), "c")  # nothing left to exclude by


def test_a_directory_left_out_with_what_is_below_it_where_a_walk_meets_it() -> None:
    paths = ExcludePaths()
    paths.add_directory("/srv/q[1]/", "the --move directory")
    assert paths.match("/srv/q[1]", "/srv") == "the --move directory"
    assert paths.match("/srv/q[1]/x", "/srv") == "the --move directory"
    assert paths.match("/srv/q[1]x", "/srv") is None and paths.match("/srv/q1/x", "/") is None
    # named inside it: walked all the same
    assert paths.match("/srv/q[1]/x", "/srv/q[1]") is None
    assert paths.match("/srv/q[1]/x/y", "/srv/q[1]/x") is None


@pytest.mark.parametrize("pattern", [r"\d+\.log$", "(?i)^/srv/", r"^/srv/\Z", r"(a)\1"])
def test_a_pattern_python_reads_otherwise_than_clamd_is_ignored(pattern: str) -> None:
    """glibc reads "\\d" as "d" and refuses "(?": Python would leave out more."""
    paths = ExcludePaths((pattern, r"\.iso$", r"^/srv/\w+/a\\d"), "c")
    (problem,) = paths.problems
    assert problem.startswith(f"ExcludePath {pattern} in c: ")
    assert problem.endswith("means one thing to clamd (POSIX) and another to clamwatch"
                            " (Python): ignored, what it names is scanned")  # fmt: skip
    assert paths.match("/srv/123.log") is None and paths.match("/srv/A") is None
    assert paths.match("/srv/x.iso") == r"ExcludePath \.iso$ in c"
    assert paths.match("/srv/ab/a\\d") == r"ExcludePath ^/srv/\w+/a\\d in c"


def test_every_exclude_path_line_is_read(tmp_path: Path) -> None:
    conf = tmp_path / "clamd.conf"
    conf.write_text(
        'LocalSocket /run/c.ctl\nExcludePath ^/proc/\n#ExcludePath ^/no/\nExcludePath "^/sys/"\n'
    )
    assert read_clamd_conf(conf).exclude_paths == ("^/proc/", "^/sys/")


def test_the_walk_prunes_by_real_path_and_skips_named_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("tree/skip/deep/a", "tree/keep/b", "tree/keep/c.iso", "other/d"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"clean")
    (tmp_path / "via").symlink_to(tmp_path / "tree")
    exclude = ExcludePaths((f"^{tmp_path}/tree/skip/", r"\.iso$", "^/nowhere/"), "c")
    monkeypatch.chdir(tmp_path)  # relative paths: matched by their real ones
    found = [
        item.path
        for item in walk(["tree", "via/", "via/skip/deep/a", "tree/keep/c.iso", "other"], exclude)
        if isinstance(item, ListedFile)
    ]
    assert found == ["tree/keep/b", "via/keep/b", "other/d"]
