"""The on-disk cache store. Modules: `layout` (where files live, shared with archives),
`metadata` (typed records, validated where read), `memo` (records kept in memory), `blobs`
(bodies, eviction, and which thread owns what), `counters`, `store` (the `Store` the cache
uses), `recount` (its size and entries while other processes share the dir), `maintenance`
(the `cache` commands) and `archive` (export and import)."""

from .blobs import BodyWriter
from .counters import Counter
from .metadata import Entry, EntryKind, now
from .store import Store

__all__ = ["BodyWriter", "Counter", "Entry", "EntryKind", "Store", "now"]
