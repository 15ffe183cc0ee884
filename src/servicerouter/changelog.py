"""Which backends the apply loop changed after a given moment. Pure.

Each batch the apply loop plans is numbered (:attr:`ChangeLog.seq`). A reader that
works from one moment's state while the loop goes on (a read of HAProxy's servers, a
reload's render) notes the number it began at (:meth:`ChangeLog.begin`), asks later
which backends changed since (:meth:`ChangeLog.changed_since`, :meth:`ChangeLog.since`)
and says when it is done (:meth:`ChangeLog.end`). What no reader in flight can ask for
any more is forgotten: kept whole until the next reload, one entry per backend name
ever changed was kept for good where apps come and go without reloads (range mode).
"""

from __future__ import annotations

from collections.abc import Iterable

KEEP_AT_LEAST = 1024
"""Entries kept before the first look for ones no reader needs (then twice as many as
were kept at the last look): forgetting costs O(1) per change, amortized."""


class ChangeLog:
    def __init__(self) -> None:
        self.seq = 0  # the number of the last batch
        self._at: dict[str, int] = {}  # backend -> the number of its last batch
        self._readers: dict[int, int] = {}  # seq a reader began at -> readers
        self._look_at = KEEP_AT_LEAST

    def __len__(self) -> int:
        return len(self._at)

    def record(self, names: Iterable[str]) -> None:
        """A new batch changed ``names``."""
        self.seq += 1
        self._at.update(dict.fromkeys(names, self.seq))
        if len(self._at) > self._look_at:
            oldest = min(self._readers, default=self.seq)
            self._at = {name: at for name, at in self._at.items() if at > oldest}
            self._look_at = max(KEEP_AT_LEAST, 2 * len(self._at))

    def begin(self) -> int:
        """A reader begins now: the number to ask with, and to :meth:`end` with."""
        self._readers[self.seq] = self._readers.get(self.seq, 0) + 1
        return self.seq

    def end(self, seq: int) -> None:
        """The reader that began at ``seq`` is done."""
        if left := self._readers.get(seq, 1) - 1:
            self._readers[seq] = left
        else:
            self._readers.pop(seq, None)

    def changed_since(self, name: str, seq: int) -> bool:
        return self._at.get(name, 0) > seq

    def since(self, seq: int) -> set[str]:
        """The backends changed after ``seq``."""
        return {name for name, at in self._at.items() if at > seq}

    def clear(self) -> None:
        """Forget every change (a reload: everything is read anew)."""
        self._at = {}
