"""The downloads of one cache: at most one flight per key, joined by every request for that
key while it runs, stored while it streams.

Owned by the trio thread: the flights map, each flight's state and the eviction flag change
only there; the worker threads this module starts (publishing a body, evicting) return
values and touch nothing here.

The flights map collapses the requests of one process; `Claims` (a lock file per key) those
of several processes on one cache dir, the workers of `transcache run --workers N`: the first
request of a process for a key claims it in `join`, or waits there for the process holding it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

import trio

from .. import _policy as policy
from .._protocol import Headers, drop_connection_fields, header_value
from ..store import BodyWriter, Counter, Entry, Store, now
from ..store.metadata import VaryIndex
from .claims import Claims
from .decide import Outcome, cache_status
from .flight import Flight, FlightReader, State
from .keys import Keyed, ecosystem_of
from .sources import PassThrough, ResponseSource, UpstreamAnswer

log = logging.getLogger("transcache.cache")

Answer = tuple[ResponseSource, Outcome]
# Wall-clock seconds; tests give the cache a clock of their own (trio's virtual one).
Clock = Callable[[], float]
# Told of every entry published from a request without credentials: the entry, the primary
# key its Vary index is under, and the Vary fields (the shared tier uploads it).
Published = Callable[[Entry, str, tuple[str, ...]], None]


class Joined(enum.Enum):
    NOTHING = enum.auto()  # no download of this key to join: start one
    AGAIN = enum.auto()  # it was just published: look the key up again (a hit)


class Downloads:
    def __init__(self, store: Store, clock: Clock = now) -> None:
        self.store = store
        self.clock = clock
        self.nursery: trio.Nursery | None = None  # set while the cache runs
        self._flights: dict[str, Flight] = {}
        self._evicting = False
        self.claims = Claims(store.layout.tmp)
        # Called on the trio thread with each entry published from a request without
        # credentials (after its body and metadata are on disk): the shared tier's uploads.
        self.on_publish: list[Published] = []

    def busy(self, key: str) -> bool:
        return key in self._flights

    def in_flight(self) -> list[Flight]:
        """The downloads storing right now (their `url`, `written` and `content_length`)."""
        return [flight for flight in self._flights.values() if flight.state is State.STORING]

    async def wait_idle(self) -> None:
        """Until every download under way has ended: stored, or given up."""
        while self._flights:
            await next(iter(self._flights.values())).done.wait()

    def register(self, key: str) -> Flight | None:
        """Claim `key` before its request goes out, so later askers wait for this one's
        head; None when a flight for it exists already."""
        if key in self._flights:
            return None
        flight = self._flights[key] = Flight(key)
        if self.claims.holds(key) and self.nursery is not None:
            self.nursery.start_soon(self._release_claim, flight)
        return flight

    async def _release_claim(self, flight: Flight) -> None:
        """Keep the key claimed across processes until `flight` ends, unless a newer flight
        of this process took the key over (it releases the claim then)."""
        await flight.done.wait()
        if self._flights.get(flight.key, flight) is flight:
            self.claims.release(flight.key)

    async def join(self, keyed: Keyed) -> Answer | Joined:
        """Read along with the download of this key under way, if it stores this variant."""
        request = keyed.request
        flight = self._flights.get(keyed.key)
        if flight is None:
            if self.nursery is None or self.claims.claim(keyed.key):
                return Joined.NOTHING
            log.info("%s: waiting for the download another process has under way", request.url)
            if await self.claims.wait(keyed.key):
                return Joined.AGAIN
            log.info("%s: the other process's download is slow; fetching it too", request.url)
            return Joined.NOTHING
        if not flight.head_ready.is_set():
            log.info("%s: waiting for the download already under way", request.url)
            await flight.head_ready.wait()
        if flight.state is State.COMPLETE:
            await flight.done.wait()  # milliseconds: the fsync and renames
            return Joined.AGAIN
        if flight.joinable and flight.variant == policy.variant_key(
            _vary(flight.headers), request.headers
        ):
            return self._reader(flight, request.headers, Outcome.COLLAPSED), Outcome.COLLAPSED
        return Joined.NOTHING

    def abandon(self, flight: Flight | None) -> None:
        """A registered flight that will not store: its waiters go upstream themselves."""
        if flight is None or flight.state is not State.PENDING:
            return
        flight.move(State.ABANDONED)
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    async def store_or_stream(
        self,
        keyed: Keyed,
        response: UpstreamAnswer,
        request_time: float,
        pending: Flight | None,
    ) -> Answer:
        """Store the response while streaming it (through `pending`, the flight registered
        for it, or a new one), or pass it through when it may not or cannot be stored."""
        assert self.store is not None
        request = keyed.request
        self.store.count(Counter.MISSES)
        if keyed.store_kind == "git":
            self.store.count(Counter.GIT_MISSES)
        stored = stored_headers(response, self.clock())
        key = keyed.key
        if keyed.store_kind == "http" and not policy.credential_partition(request.headers, stored):
            key = policy.primary_key(request.url, "")  # public: shareable
        flight = pending if pending is not None and pending.key == key else None
        if pending is not None and flight is None:
            self.abandon(pending)  # stored under another key (a public response)
        reason = policy.not_storable_reason(response.status, request.headers, stored, keyed.rule)
        if reason is None and flight is None and key in self._flights:
            reason = "in-flight"  # someone else is storing this key right now
        writer = None
        if reason is None and self.nursery is not None:
            try:
                writer = self.store.begin()
            except OSError as exc:
                log.warning("cannot store %s: %s", request.url, exc)
                reason = "storage"
        if writer is None or self.nursery is None:
            self.abandon(flight)
            status = cache_status(Outcome.MISS, response.status, detail=reason)
            source = PassThrough(response, [(b"Cache-Status", status)], head_only=keyed.head_only)
            return source, Outcome.MISS
        vary = _vary(stored)
        if flight is None:
            flight = self._flights[key] = Flight(key)
        flight.variant = policy.variant_key(vary, request.headers)
        flight.status, flight.reason, flight.headers = (
            response.status,
            response.reason,
            stored,
        )
        flight.content_length = header_value(response.headers, b"content-length")
        flight.url = request.url
        flight.move(State.STORING)
        fields = {
            "key": key + "\n" + flight.variant,
            "url": request.url,
            "status": flight.status,
            "reason": flight.reason,
            "headers": flight.headers,
            "request_time": request_time,
            "kind": keyed.store_kind,
            "ecosystem": ecosystem_of(request),
        }
        self.nursery.start_soon(self._download, flight, response, writer, fields, keyed.shareable)
        reader = self._reader(flight, request.headers, Outcome.MISS, head_only=keyed.head_only)
        return reader, Outcome.MISS

    def _reader(
        self, flight: Flight, client_headers: Headers, outcome: Outcome, *, head_only: bool = False
    ) -> FlightReader:
        status = cache_status(outcome, flight.status, stored=True)
        headers = [(k, v) for k, v in flight.headers if k.lower() != b"age"]
        if flight.content_length is not None:
            headers.append((b"Content-Length", flight.content_length))
        headers += [(b"Age", b"0"), (b"Cache-Status", status)]
        return FlightReader(flight, headers, head_only)

    async def _download(
        self,
        flight: Flight,
        response: UpstreamAnswer,
        writer: BodyWriter,
        fields: dict[str, object],
        shareable: bool,
    ) -> None:
        store = self.store
        assert store is not None
        vary = _vary(flight.headers)

        async def publish(complete: BodyWriter) -> None:
            finished = self.clock()
            started = fields["request_time"]
            assert isinstance(started, float)
            took = max(0.0, finished - started)
            entry = await store.commit(
                complete,
                {**fields, "response_time": finished, "fetch_seconds": took},
                VaryIndex(flight.key, vary),
            )
            store.count(Counter.STORED)
            if shareable:
                for hook in self.on_publish:
                    hook(entry, flight.key, vary)

        try:
            received = await flight.run(response, writer, publish)
        finally:
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
        store.count(Counter.BYTES_FROM_UPSTREAM, received)
        if flight.state is State.PUBLISHED:
            await self._maybe_evict()

    async def _maybe_evict(self) -> None:
        assert self.store is not None
        if self._evicting or not self.store.ledger.due_for_a_look():
            return
        self._evicting = True
        try:
            freed = await self.store.evict(over=self.store.max_size)
            if freed:
                log.info("evicted %d bytes to stay under %d", freed, self.store.max_size)
        except OSError as exc:
            log.warning("eviction failed: %s", exc)
        finally:
            self._evicting = False


def stored_headers(response: UpstreamAnswer, now: float) -> Headers:
    """End-to-end headers worth keeping, with a Date (pip treats a Date-less entry as stale)."""
    headers = [
        (k, v)
        for k, v in drop_connection_fields(response.headers)
        if k.lower() not in (b"content-length", b"via")
    ]
    if header_value(headers, b"date") is None:
        headers.append((b"Date", policy.format_http_date(now)))
    return headers


def _vary(headers: Headers) -> tuple[str, ...]:
    return policy.vary_fields(headers) or ()
