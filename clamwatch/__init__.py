"""clamwatch: scan every finished file in watched directories with clamd."""

__version__ = "0.1.0"
