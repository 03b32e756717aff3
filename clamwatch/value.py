"""Value: the base of the small immutable records on `clamwatch scan`'s path.

`clamwatch scan` is timed against clamdscan, which starts in 4 ms, and a hook
may run it once per upload. On Python 3.11 ``@dataclass`` compiles each method
it writes from source when the class is defined (167 compiles for the 32
records scan imported: 15-18 ms), and importing :mod:`dataclasses` pulls in
:mod:`inspect` (6.5 ms more), out of some 55 ms for an empty scan. The records
on that path are therefore written out:

- a :class:`Value` subclass names its fields in ``__slots__``, declares them
  ``Final`` (mypy then rejects any assignment outside ``__init__``) and writes
  its own ``__init__``; equality, hash and repr come from here, by field;
- a mutable record (counters, a request in flight) is a plain class with
  ``__slots__`` and its ``__init__``, compared by identity.

Modules that `clamwatch scan` does not import (the daemon's, the
configuration's) keep using dataclasses.
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing (2-3.5 ms of scan's start):
# mypy takes any name TYPE_CHECKING as true, Python sees False. The modules
# on scan's path define it the same way.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import ClassVar


class Value:
    """Equal to another of the same class with equal fields; hashable; repr by field.

    Subclasses list their fields in ``__slots__`` (a tuple); fields inherited
    from a Value base come first.
    """

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        own = cls.__dict__.get("__slots__", ())
        if isinstance(own, str):
            raise TypeError(f"{cls.__name__}.__slots__ must be a tuple of names")
        cls._fields = (*cls._fields, *own)

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Value)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"
