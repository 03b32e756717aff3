"""What to do about a verdict: a pure function of the verdict and the watch's rules.

Each verdict kind (clean, infected, not scanned, error) has a rule: at most
one file action (move or copy to quarantine, remove, release), plus tag and
hook. Defaults are what a cautious admin picks: infected files are moved to
quarantine; files that could not be scanned are left where they are, tagged
and logged; clean files are left alone.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from clamwatch.verdict import Clean, Infected, NotScanned, ScanError, Verdict


class FileAction(enum.Enum):
    NONE = "none"  # leave the file where it is
    MOVE = "move"  # into the quarantine; the original name is gone
    COPY = "copy"  # a copy into the quarantine; the original stays
    REMOVE = "remove"  # unlink it (no copy kept)
    RELEASE = "release"  # move a clean file on to release_to (scan-then-release uploads)


_FILE_ACTIONS = {action.value: action for action in FileAction if action is not FileAction.NONE}
WORDS = ("none", "tag", "hook", *_FILE_ACTIONS)


@dataclass(frozen=True, slots=True)
class Rule:
    file_action: FileAction = FileAction.NONE
    tag: bool = False  # user.clamwatch.* extended attributes on the scanned file
    hook: bool = False  # run the watch's hook command

    @property
    def words(self) -> list[str]:
        words = [] if self.file_action is FileAction.NONE else [self.file_action.value]
        words += ["tag"] * self.tag + ["hook"] * self.hook
        return words or ["none"]


def parse_rule(words: Sequence[str], *, for_clean: bool) -> Rule:
    """A rule from words such as ["move", "hook"]; ValueError says what is wrong."""
    unknown = [w for w in words if w not in WORDS]
    if unknown:
        raise ValueError(f"unknown action {unknown[0]!r} (expected some of {', '.join(WORDS)})")
    if "none" in words and len(words) > 1:
        raise ValueError('"none" cannot be combined with other actions')
    actions = [_FILE_ACTIONS[w] for w in words if w in _FILE_ACTIONS]
    if len(actions) > 1:
        raise ValueError(f"at most one of move, copy, remove, release (got {', '.join(words)})")
    action = actions[0] if actions else FileAction.NONE
    if for_clean and action in (FileAction.MOVE, FileAction.COPY, FileAction.REMOVE):
        raise ValueError(
            f"{action.value!r} on a clean file: clamwatch never quarantines clean files"
        )
    if not for_clean and action is FileAction.RELEASE:
        raise ValueError('"release" is for clean files only')
    return Rule(action, "tag" in words, "hook" in words)


@dataclass(frozen=True, slots=True)
class Policy:
    clean: Rule = Rule()
    infected: Rule = Rule(FileAction.MOVE)
    not_scanned: Rule = Rule(tag=True)
    error: Rule = Rule(tag=True)

    @property
    def rules(self) -> tuple[Rule, Rule, Rule, Rule]:
        """Its four rules, one for each kind of verdict."""
        return (self.clean, self.infected, self.not_scanned, self.error)


def decide(verdict: Verdict, policy: Policy) -> Rule:
    match verdict:
        case Clean():
            return policy.clean
        case Infected():
            return policy.infected
        case NotScanned():
            return policy.not_scanned
        case ScanError():
            return policy.error
