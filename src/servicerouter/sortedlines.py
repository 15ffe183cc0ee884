"""Lines of a file written whole, kept in the order of their keys, so that a change of
one entry costs that entry (a bisect), not a pass over the others: the owners file
(owners.py) and range mode's map files (rangeindex.py)."""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any


class SortedLines:
    """Lines by key, read back in the order of their keys."""

    def __init__(self) -> None:
        self._keys: list[Any] = []
        self._lines: dict[Any, str] = {}

    def set(self, key: Any, line: str | None) -> None:
        """Put ``line`` under ``key``; None removes it."""
        if line is None:
            if self._lines.pop(key, None) is not None:
                del self._keys[bisect_left(self._keys, key)]
            return
        if key not in self._lines:
            insort(self._keys, key)
        self._lines[key] = line

    def __bool__(self) -> bool:
        return bool(self._keys)

    def join(self, separator: str = "") -> str:
        """The lines in key order, ``separator`` between them."""
        return separator.join(map(self._lines.__getitem__, self._keys))
