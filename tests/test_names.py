"""File names printed so that they read back unambiguously."""

from __future__ import annotations

import os

import pytest

from clamwatch.names import display_path, is_utf8


@pytest.mark.parametrize(
    "name",
    [
        "/srv/upload/report.pdf",
        "/srv/upload/with space.txt",
        "/srv/upload/ünïcödé/日本語.txt",
        "/srv/upload/a: b.txt",
        "relative/name",
        "",
    ],
)
def test_plain_names_are_unchanged(name: str) -> None:
    assert display_path(name) == name
    assert display_path(os.fsencode(name)) == name


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("/up/two\nlines", "/up/two\\nlines"),
        ("/up/tab\there", "/up/tab\\there"),
        ("/up/cr\rhere", "/up/cr\\rhere"),
        ("/up/back\\slash", "/up/back\\\\slash"),
        ("/up/\x1b[31mred\x1b[0m", "/up/\\x1b[31mred\\x1b[0m"),
        ("/up/bell\x07", "/up/bell\\x07"),
        ("/up/del\x7f", "/up/del\\x7f"),
        ("/up/rlo\u202etxt.exe", "/up/rlo\\u202etxt.exe"),
        ("/up/zero\u200bwidth", "/up/zero\\u200bwidth"),
        (b"/up/\xff\xfe.bin", "/up/\\xff\\xfe.bin"),
        (os.fsdecode(b"/up/\xff\xfe.bin"), "/up/\\xff\\xfe.bin"),
        (b"/up/caf\xe9 \xe9t\xe9", "/up/caf\\xe9 \\xe9t\\xe9"),
    ],
)
def test_names_needing_escapes(name: str | bytes, shown: str) -> None:
    assert display_path(name) == shown


def test_no_control_character_reaches_the_terminal() -> None:
    for code in [*range(0x3000), 0x2028, 0x2029, 0x202E, 0xFEFF, 0xE000, 0x10FFFF]:
        shown = display_path(f"/up/{chr(code)}")
        assert shown.isprintable(), (hex(code), shown)


def test_invalid_utf8_bytes_survive_as_escapes() -> None:
    shown = display_path(b"/up/\x80\xc3(")
    assert shown == "/up/\\x80\\xc3("
    assert "\udc80" not in shown  # a lone surrogate cannot even be printed


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("a\nb", "a\\nb"),
        ("a\\nb", "a\\\\nb"),
        ("a\x1bb", "a\\x1bb"),
        (b"a\xffb", "a\\xffb"),
        (b"a\xffb", "a\xffb"),  # the byte 0xff, and U+00FF (bytes c3 bf)
        # U+009B (CSI, bytes c2 9b) and the lone byte 0x9b
        (b"a\xc2\x9bb", b"a\x9bb"),
        # U+00A0 (no-break space, bytes c2 a0) and the lone byte 0xa0
        (b"a\xc2\xa0b", b"a\xa0b"),
    ],
)
def test_different_names_never_print_the_same(one: str | bytes, other: str | bytes) -> None:
    assert display_path(one) != display_path(other)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("/srv/upload/plain.txt", True),
        ("/srv/upload/ünïcödé/日本語.txt", True),
        ("/up/two\nlines", True),
        (os.fsdecode(b"/up/\xff.bin"), False),
        (os.fsdecode(b"/up/\xc3"), False),
        ("/up/\udcff", False),
    ],
)
def test_is_utf8(name: str, expected: bool) -> None:
    assert is_utf8(name) is expected
