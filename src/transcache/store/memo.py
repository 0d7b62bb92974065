"""The metadata memo: records kept in memory so a hit reads no metadata file.

Each record is kept with the signature (inode, mtime, size) of the file it was read from, or
written to by this process (taken before the rename that published it). A lookup stats the
file and uses the record only when the signature still matches, so a rewrite or a removal by
another process sharing the cache dir is seen at the next lookup. An entry written here is
marked unchecked: the first lookup of it confirms that its body is still present.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .layout import Signature
from .metadata import Entry, VaryIndex

# Records kept, least recently used dropped first.
META_MEMO_ENTRIES = 20_000


@dataclass(slots=True)
class Memo:
    signature: Signature
    record: Entry | VaryIndex
    checked: bool  # an entry's body was seen present since the record was kept


class RecordMemo:
    def __init__(self, capacity: int = META_MEMO_ENTRIES) -> None:
        self.capacity = capacity
        self._memos: OrderedDict[str, Memo] = OrderedDict()

    def lookup(self, key: str, current: Signature) -> Memo | None:
        """The memo of `key` if its file still has the signature it was kept with."""
        memo = self._memos.get(key)
        if memo is None or memo.signature != current:
            return None
        self._memos.move_to_end(key)
        return memo

    def remember(
        self, key: str, kept: Signature, record: Entry | VaryIndex, *, checked: bool = False
    ) -> None:
        self._memos[key] = Memo(kept, record, checked)
        self._memos.move_to_end(key)
        if len(self._memos) > self.capacity:
            self._memos.popitem(last=False)

    def forget(self, key: str) -> Entry | VaryIndex | None:
        """Drop `key`'s memo; the record it held, if any."""
        memo = self._memos.pop(key, None)
        return None if memo is None else memo.record
