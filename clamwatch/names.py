"""File names printed so that every name reads back unambiguously.

A name may hold any byte but ``/`` and NUL: newlines, terminal escapes,
bytes that are not UTF-8. Those are written as C-style escapes, and a
backslash is always doubled, so ``a\\nb`` (four characters) and ``a``
newline ``b`` never print the same.
"""

from __future__ import annotations

import os

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def display_path(path: str | bytes) -> str:
    """``path`` for a terminal or a log line, escaped where needed."""
    text = os.fsdecode(path) if isinstance(path, bytes) else path
    if text.isprintable() and "\\" not in text:
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif not ch.isprintable() and ch != " ":
            # \u for characters: \x stays for bytes that are not UTF-8
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def is_utf8(path: str) -> bool:
    """True when the name's bytes are valid UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
