"""Which files of a watch are scanned: globs, regexes, our own folders, stat rules."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from clamwatch import staged
from clamwatch.config import WatchConfig
from clamwatch.watch.filters import WatchFilter

ROOT = Path("/srv/up")
STATE = "/var/lib/clamwatch"
QUARANTINE = "/srv/quarantine"


def rules(
    *,
    exclude: tuple[str, ...] = (),
    exclude_regex: tuple[str, ...] = (),
    min_size: int = 0,
    max_size: int | None = None,
    skip_uids: frozenset[int] = frozenset(),
    own: tuple[str, ...] = (),
) -> WatchFilter:
    watch = WatchConfig(
        path=ROOT,
        name="up",
        exclude=exclude,
        exclude_regex=tuple(re.compile(r) for r in exclude_regex),
        min_size=min_size,
        max_size=max_size,
        skip_uids=skip_uids,
    )
    return WatchFilter(watch, own)


def stat_result(size: int, uid: int = 1000) -> os.stat_result:
    return os.stat_result((0o100644, 1, 1, 1, uid, uid, size, 0, 0, 0))


def test_the_root_is_the_configured_path() -> None:
    assert rules().root == "/srv/up"


def test_nothing_is_excluded_without_rules() -> None:
    assert not rules().excluded("/srv/up/a/b.txt")


# -- globs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("/srv/up/upload.part", True),
        ("/srv/up/deep/down/upload.part", True),  # at any depth
        ("/srv/up/upload.part.pdf", False),  # the whole name must match
        ("/srv/up/upload.PART", False),  # case matters on Linux
        ("/srv/up/dir.part/report.pdf", False),  # a folder's name is not the file name
        ("/srv/up/.part", True),  # unlike a shell, fnmatch's * matches a leading dot
    ],
)
def test_a_glob_without_a_slash_matches_the_file_name(path: str, excluded: bool) -> None:
    assert rules(exclude=("*.part",)).excluded(path) is excluded


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("/srv/up/cache/x.bin", True),
        ("/srv/up/cache/sub/x.bin", True),  # fnmatch's * crosses slashes
        ("/srv/up/other/cache/x.bin", False),  # anchored at the watch root
        ("/srv/up/cachex/x.bin", False),
        ("/srv/up/x.bin", False),
    ],
)
def test_a_glob_with_a_slash_matches_the_path_below_the_root(path: str, excluded: bool) -> None:
    assert rules(exclude=("cache/*",)).excluded(path) is excluded


def test_a_glob_with_a_slash_does_not_match_the_file_name_alone() -> None:
    # "*/x.bin" needs a folder below the root; the name alone has none
    filt = rules(exclude=("*/x.bin",))
    assert not filt.excluded("/srv/up/x.bin")
    assert filt.excluded("/srv/up/a/x.bin")


def test_any_of_several_globs_excludes() -> None:
    filt = rules(exclude=("*.part", "*.tmp", "cache/*"))
    assert filt.excluded("/srv/up/a.tmp")
    assert filt.excluded("/srv/up/a.part")
    assert filt.excluded("/srv/up/cache/a.pdf")
    assert not filt.excluded("/srv/up/a.pdf")


# -- regular expressions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("regex", "path", "excluded"),
    [
        (r"/\.git/", "/srv/up/project/.git/config", True),
        (r"/\.git/", "/srv/up/project/.github/workflow.yml", False),
        (r"~$", "/srv/up/notes.txt~", True),
        # searched in the whole path, not matched from its start...
        (r"tmp", "/srv/up/a/tmp-1/x", True),
        # ...and the whole path is the absolute one, not the part below the root
        (r"^/srv/up/private/", "/srv/up/private/x", True),
        (r"^private/", "/srv/up/private/x", False),
    ],
)
def test_a_regex_is_searched_in_the_whole_path(regex: str, path: str, excluded: bool) -> None:
    assert rules(exclude_regex=(regex,)).excluded(path) is excluded


# -- our own folders ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        (STATE, True),
        (f"{STATE}/state.json", True),
        (f"{STATE}/deep/down/file", True),
        (QUARANTINE, True),
        (f"{QUARANTINE}/0001.bin", True),
        ("/var/lib/clamwatch2", False),  # the same prefix, another folder
        ("/var/lib/clamwatch2/file", False),
        ("/var/lib/clamwatch.old/file", False),
        ("/srv/quarantined/file", False),
        ("/var/lib", False),  # above it
    ],
)
def test_own_folders_and_everything_below_them_are_excluded(path: str, excluded: bool) -> None:
    assert rules(own=(STATE, QUARANTINE)).excluded(path) is excluded


def test_an_own_folder_given_with_a_trailing_slash_excludes_the_same() -> None:
    filt = rules(own=(STATE + "/",))
    assert filt.excluded(f"{STATE}/state.json")
    assert not filt.excluded("/var/lib/clamwatch2/file")


@pytest.mark.parametrize(
    "configured",
    [
        "{real}/uploads/quarantine",  # the watch is configured through a link, the folder not
        "{link}/uploads/incoming/../quarantine",  # ".." on the folder's path
    ],
)
def test_an_own_folder_named_by_another_path_to_it_is_still_excluded(
    tmp_path: Path, configured: str
) -> None:
    """Events carry the watch's path as configured: the folder is matched by where it is."""
    real = tmp_path / "real"
    (real / "uploads" / "incoming").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    watch = WatchConfig(path=link / "uploads", name="up")
    outside = str(tmp_path / "elsewhere" / "state")  # not in the watch: as given
    filt = WatchFilter(watch, (configured.format(real=real, link=link), outside))
    root = link / "uploads"
    assert filt.excluded(str(root / "quarantine"))
    assert filt.excluded(str(root / "quarantine" / "0001.bin"))
    assert filt.own_folder(str(root / "quarantine" / "sub"))
    assert not filt.excluded(str(root / "quarantined.bin"))
    assert not filt.excluded(str(root / "incoming" / "upload.bin"))
    assert filt.excluded(f"{outside}/state.json")


# -- stat rules -----------------------------------------------------------------------


def test_a_name_clamwatch_gave_a_file_it_removes_is_excluded_not_its_lookalike() -> None:
    given = staged.new_name(f"{ROOT}/upload.com")
    assert os.path.basename(given).startswith(".clamwatch-")
    assert rules().excluded(given)
    # an upload named like one is scanned: the random part is what is ours
    assert not rules().excluded(f"{ROOT}/.clamwatch-0123456789ab-upload.com")


def test_a_listed_owner_is_skipped_and_the_reason_says_so() -> None:
    filt = rules(skip_uids=frozenset({0, 33}))
    assert filt.skipped_by_stat(stat_result(100, uid=33)) == (
        "owned by uid 33, listed in skip_uids"
    )
    assert filt.skipped_by_stat(stat_result(100, uid=1000)) is None


def test_a_file_under_min_size_is_skipped_and_the_reason_says_so() -> None:
    filt = rules(min_size=10)
    assert filt.skipped_by_stat(stat_result(9)) == "9 bytes, under min_size (10)"
    assert filt.skipped_by_stat(stat_result(10)) is None  # the minimum itself is scanned
    assert filt.skipped_by_stat(stat_result(11)) is None


def test_without_stat_rules_an_empty_file_is_scanned() -> None:
    assert rules().skipped_by_stat(stat_result(0, uid=0)) is None


def test_the_owner_is_reported_before_the_size() -> None:
    filt = rules(min_size=10, skip_uids=frozenset({0}))
    reason = filt.skipped_by_stat(stat_result(1, uid=0))
    assert reason is not None
    assert "skip_uids" in reason


@pytest.mark.parametrize("size", [0, 1, 10**12, 2**63 - 1])
def test_without_max_size_nothing_is_too_large(size: int) -> None:
    assert not rules().too_large(size)


@pytest.mark.parametrize(("size", "too_large"), [(0, False), (100, False), (101, True)])
def test_too_large_means_over_max_size(size: int, too_large: bool) -> None:
    assert rules(max_size=100).too_large(size) is too_large


def test_max_size_zero_allows_only_empty_files() -> None:
    filt = rules(max_size=0)
    assert not filt.too_large(0)
    assert filt.too_large(1)
