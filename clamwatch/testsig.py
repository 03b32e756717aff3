"""The bundled test signature: EICAR, built at run time.

The 68-byte EICAR test string is never stored in this repository as such (an
anti-virus scanning a checkout would flag it); it is assembled from two
halves here, and written out only into test and demo folders.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing's own, without importing typing (see value.py)

if TYPE_CHECKING:
    from pathlib import Path  # the engine imports this module: no pathlib at start-up

# The EICAR anti-virus test file (https://www.eicar.org), in two halves so
# that this source file itself does not match the signature.
_EICAR_HEAD = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$"
_EICAR_TAIL = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

#: The name clamd reports for the test signature: clamd appends ".UNOFFICIAL"
#: to names from databases that are not signed by Cisco-Talos.
EICAR_SIGNATURE = "Eicar-Test-Signature.UNOFFICIAL"


def eicar_bytes() -> bytes:
    """The 68-byte EICAR test string."""
    return _EICAR_HEAD + _EICAR_TAIL


def write_test_database(directory: Path) -> Path:
    """Write a clamd database folder holding the EICAR signature as a .ndb line.

    The signature matches the EICAR string at offset 0, so a file whose content
    starts with it is reported as ``Eicar-Test-Signature.UNOFFICIAL FOUND``.
    Returns the signature file's path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "clamwatch-test.ndb"
    target.write_text(f"Eicar-Test-Signature:0:0:{eicar_bytes().hex()}\n", encoding="ascii")
    return target
