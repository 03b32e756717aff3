"""`python -m clamwatch`: the clamwatch command."""

from clamwatch.cli import entry

entry()
