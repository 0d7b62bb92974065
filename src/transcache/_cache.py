"""The caching layer between the server and the upstream pool.

For each cacheable request (GET or HEAD without a body) `Cache.respond` decides, with the pure
rules in `_policy`, between:

- a fresh hit: answered from the stored body (HEAD, Range and the client's own conditionals
  handled here, never re-encoded);
- a stale entry: a conditional request upstream; 304 refreshes the stored head and serves the
  body, 200 replaces it; an unreachable origin (or offline mode) serves the stale copy;
- a miss: a single flight. The first asker sends the request; when a storable response head
  arrives, a background task (owned by the server's nursery, so it survives the asker hanging
  up) writes the body into a temp file while it hashes it. Every asker, the first included,
  reads that growing file from its own offset, waking whenever more bytes land, so a late
  joiner gets its first byte at once, not when the download ends. The body is published
  atomically when complete; an upstream failure discards it and cuts every reader short.
  If the disk fails mid-way the flight keeps going and feeds its readers from memory instead,
  so clients still get whole responses, and nothing is published.
- anything not storable streams straight through.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Protocol

import trio

from . import _git
from . import _policy as policy
from ._channel import READ_SIZE
from ._config import Config
from ._errors import (
    BadRequestError,
    OfflineMissError,
    ProxyError,
    RevalidationRequiredError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from ._protocol import (
    Headers,
    Origin,
    drop_connection_fields,
    header_value,
    request_headers_for_upstream,
)
from ._upstream import BodyReader, UpstreamPool, UpstreamResponse
from .store import BodyWriter, Counter, Entry, Store, now

log = logging.getLogger("transcache.cache")

# Chunks a reader may fall behind a flight that lost its disk, before the flight waits for it.
LIVE_BUFFER_CHUNKS = 16
COUNTER_FLUSH_SECONDS = 5.0
# A lookup that finds its entry published or removed under it looks again; twice is enough
# for a miss to follow a removal, a third try covers a publish racing with it.
LOOKUP_ATTEMPTS = 3
# The rule for responses whose URL or request names exact content (a commit, a git object).
PINNED = policy.Rule("*", policy.RuleAction.IMMUTABLE)


class ResponseSource(Protocol):
    """What the server streams to a client: a head, then body pieces until b""."""

    status: int
    reason: bytes
    headers: Headers

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


@dataclass
class Outcome:
    """What the access log and the counters learn about one cached exchange."""

    label: str = "-"


# -- responses served from a stored body ----------------------------------------------------


class _Published(Exception):
    """The download a request would join has all its bytes and is being published: ask the
    store again in a moment, and get a hit."""


class _EntryGone(Exception):
    """A stored body vanished (evicted, deleted) between lookup and reading, or is not what
    its digest says (and was removed)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class StoredResponse:
    """A response whose body is (part of) a stored blob, read straight from disk. `entry`
    is the stored entry it answers from (also for HEAD, 304 and 416), checked before use."""

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        entry: Entry | None,
        start: int = 0,
        length: int = 0,
        store: Store | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.entry = entry
        self._store = store
        self._fd = -1
        self._position = start
        self._remaining = length
        self._small: bytes | None = None
        self._served = 0
        if entry is not None and length:
            # Read or opened now: an eviction after this point cannot take the body away.
            try:
                self._small = store.small_body(entry) if store is not None else None
                if self._small is None:
                    self._fd = os.open(entry.body_path, os.O_RDONLY)
            except OSError as exc:
                raise _EntryGone(entry.key) from exc

    async def read(self) -> bytes:
        if self._remaining <= 0:
            await self.aclose()
            return b""
        if self._small is not None:
            data = self._small[self._position : self._position + self._remaining]
            self._remaining = 0
            self._served += len(data)
            return data
        data = os.pread(self._fd, min(READ_SIZE, self._remaining), self._position)
        if not data:
            await self.aclose()
            raise UpstreamError("stored body ended early")
        self._position += len(data)
        self._remaining -= len(data)
        self._served += len(data)
        return data

    async def aclose(self) -> None:
        if self._store is not None and self._served:
            self._store.count(Counter.BYTES_FROM_CACHE, self._served)
            self._served = 0
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- single flight --------------------------------------------------------------------------


@dataclass(eq=False)
class Flight:
    """One upstream download, shared by everyone who asks for it. It is registered before
    its request goes out, so askers that arrive before the response head wait for that head
    instead of sending requests of their own."""

    key: str
    kind: str = "http"
    # Set once the head is in: `storing` says whether the body is being stored (joinable).
    head_ready: trio.Event = field(default_factory=trio.Event)
    storing: bool = False
    variant: str = ""
    status: int = 0
    reason: bytes = b""
    headers: Headers = field(default_factory=list)  # as stored: no Content-Length
    content_length: bytes | None = None
    path: str = ""
    written: int = 0
    finished: bool = False
    # Every body byte has arrived (publishing may still be under way): readers can end.
    body_complete: bool = False
    error: str | None = None
    spilled: bool = False
    readers: set[FlightReader] = field(default_factory=set)
    done: trio.Event = field(default_factory=trio.Event)  # finished: published or not
    _changed: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait(self) -> None:
        await self._changed.wait()


class FlightReader:
    """One client's view of a flight: the temp file from offset 0, then live chunks if the
    flight lost its disk."""

    def __init__(self, flight: Flight, headers: Headers, head_only: bool) -> None:
        self.status = flight.status
        self.reason = flight.reason
        self.headers = headers
        self._flight = flight
        self._position = 0
        self._head_only = head_only
        self._fd = os.open(flight.path, os.O_RDONLY)
        self._live_send, self._live = trio.open_memory_channel[bytes](LIVE_BUFFER_CHUNKS)
        flight.readers.add(self)

    async def read(self) -> bytes:
        flight = self._flight
        if self._head_only:
            return b""
        while True:
            if self._position < flight.written:
                size = min(READ_SIZE, flight.written - self._position)
                data = os.pread(self._fd, size, self._position)
                self._position += len(data)
                return data
            if flight.spilled:
                try:
                    return await self._live.receive()
                except trio.EndOfChannel:
                    pass
            if flight.body_complete and not flight.spilled:
                return b""
            if flight.finished or flight.spilled:
                if flight.error is not None:
                    raise UpstreamError(flight.error)
                return b""
            await flight.wait()

    async def feed(self, chunk: bytes) -> None:
        """Hand over a chunk that never reached the disk (the flight lost it)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._live_send.send(chunk)

    def end_feed(self) -> None:
        self._live_send.close()

    async def aclose(self) -> None:
        self._flight.readers.discard(self)
        self._live.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Cache:
    def __init__(self, config: Config, store: Store, pool: UpstreamPool) -> None:
        self.config = config
        self.store = store
        self.pool = pool
        self.rules = (*config.rules, *policy.DEFAULT_RULES)
        self._flights: dict[str, Flight] = {}
        self._nursery: trio.Nursery | None = None
        self._evicting = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background downloads and flush counters until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await trio.sleep(COUNTER_FLUSH_SECONDS)
                    self.store.flush_counters()
        finally:
            self._nursery = None
            self.store.close()

    # -- the decision -----------------------------------------------------------------------

    async def respond(
        self,
        method: bytes,
        origin: Origin,
        path: str,
        client_headers: Headers,
        outcome: Outcome,
        *,
        git: bool = False,
        body: bytes | None = None,
    ) -> ResponseSource:
        """Answer a cacheable GET or HEAD, or (git=True) a git smart-HTTP request whose
        body, if any, was read whole: pack fetches for object ids are cached as immutable;
        ref discovery always asks upstream and keeps the answer for when it cannot."""
        once = self._respond_git_once if git else self._respond_once
        for _ in range(LOOKUP_ATTEMPTS):
            try:
                return await self._intact(
                    await once(method, origin, path, client_headers, body, outcome)
                )
            except _Published:
                pass  # published a moment ago: look again, and hit
            except _EntryGone as gone:
                # Evicted between lookup and open, or corrupt: removed, so now a miss.
                self.store.remove(gone.key)
        raise ProxyError(f"{origin.url(path)}: the cache entry kept changing; try again")

    async def _intact(self, source: ResponseSource) -> ResponseSource:
        """`source`, unless it answers from a stored body that is not what its digest says:
        then that body is gone and the request becomes a miss (_EntryGone). Hashing a large
        body the first time runs in a worker thread, off the event loop."""
        if not isinstance(source, StoredResponse) or source.entry is None:
            return source
        entry = source.entry
        if not self.store.needs_hashing(entry):
            return source
        try:
            intact = await self.store.verified(entry)
        except BaseException:
            await source.aclose()
            raise
        if not intact:
            await source.aclose()
            raise _EntryGone(entry.key)
        return source

    async def _respond_once(
        self,
        method: bytes,
        origin: Origin,
        path: str,
        client_headers: Headers,
        body: bytes | None,
        outcome: Outcome,
    ) -> ResponseSource:
        url = origin.url(path)
        rule = self._rule(url, path)
        partition = policy.credential_partition(client_headers, None)
        key = policy.primary_key(url, partition)
        entry = self._lookup(key, client_headers)
        if entry is None and partition:
            public = self._lookup(policy.primary_key(url, ""), client_headers)
            if public is not None and "public" in policy.parse_cache_control(public.headers):
                entry = public
        head_only = method == b"HEAD"

        if entry is not None:
            age = policy.current_age(entry.headers, entry.request_time, entry.response_time, now())
            lifetime = policy.freshness_lifetime(entry.headers, rule)
            immutable = lifetime == float("inf")
            revalidate = policy.client_wants_revalidation(client_headers) and not immutable
            if age < lifetime and not revalidate:
                return self._hit(entry, client_headers, head_only, age, outcome, "hit")
            if self.config.offline or _only_if_cached(client_headers):
                return self._hit(entry, client_headers, head_only, age, outcome, "offline")
            return await self._revalidate(
                entry, origin, path, client_headers, head_only, rule, key, outcome
            )

        if self.config.offline or _only_if_cached(client_headers):
            self.store.count(Counter.OFFLINE_MISSES)
            raise OfflineMissError(f"offline: {url} is not in the cache")
        if head_only or header_value(client_headers, b"range") is not None:
            # Forwarded as asked; a full download starts (or continues) behind it so the
            # next request hits.
            if not head_only and self._nursery is not None and key not in self._flights:
                self._nursery.start_soon(self._prefetch, origin, path, client_headers, key, rule)
            return await self._forward(origin, method, path, client_headers, outcome, "miss")
        return await self._miss(origin, path, client_headers, key, rule, outcome)

    def _rule(self, url: str, path: str) -> policy.Rule | None:
        rule = policy.rule_for(url, self.rules)
        if rule is None and _git.commit_pinned_url(path):
            return PINNED  # names a commit: the bytes behind it cannot change
        return rule

    # -- git smart HTTP ---------------------------------------------------------------------

    async def _respond_git_once(
        self,
        method: bytes,
        origin: Origin,
        path: str,
        client_headers: Headers,
        body: bytes | None,
        outcome: Outcome,
    ) -> ResponseSource:
        url = origin.url(path)
        protocol = (header_value(client_headers, b"git-protocol") or b"").decode("latin-1")
        partition = policy.credential_partition(client_headers, None)
        if body is None:  # GET info/refs
            key = policy.primary_key(f"{policy.GIT_REFS_PREFIX}{url}\n{protocol}", partition)
            return await self._git_refs(origin, path, client_headers, key, outcome, None, method)
        encoding = header_value(client_headers, b"content-encoding")
        try:
            decoded = _git.decode_request_body(
                body, encoding.decode("latin-1") if encoding else None
            )
        except _git.GitBodyError as exc:
            raise BadRequestError(f"undecodable git request body: {exc}") from exc
        kind = _git.classify_upload_pack(decoded)
        key = policy.primary_key(_git.pack_cache_key(url, protocol, decoded), partition)
        if kind is _git.GitRequestKind.REF_DISCOVERY:
            return await self._git_refs(origin, path, client_headers, key, outcome, body, method)
        if kind is _git.GitRequestKind.OTHER:
            return await self._forward(
                origin, method, path, client_headers, outcome, "bypass", body
            )
        entry = self._lookup(key, client_headers)
        if entry is not None:
            return self._hit(entry, client_headers, False, 0, outcome, "hit")
        if self.config.offline:
            self.store.count(Counter.OFFLINE_MISSES)
            raise OfflineMissError(f"offline: {url} (git fetch) is not in the cache")
        self.store.count(Counter.GIT_MISSES)
        return await self._miss(
            origin, path, client_headers, key, PINNED, outcome, method, body, "git"
        )

    async def _git_refs(
        self,
        origin: Origin,
        path: str,
        client_headers: Headers,
        key: str,
        outcome: Outcome,
        body: bytes | None,
        method: bytes,
    ) -> ResponseSource:
        entry = self._lookup(key, client_headers)
        if self.config.offline and entry is not None:
            return self._hit(entry, client_headers, False, 0, outcome, "offline")
        if self.config.offline:
            self.store.count(Counter.OFFLINE_MISSES)
            raise OfflineMissError(f"offline: {origin.url(path)} (git refs) is not in the cache")
        try:
            return await self._miss(
                origin, path, client_headers, key, None, outcome, method, body, "git"
            )
        except UpstreamError as error:
            if entry is None:
                raise
            _check_stale_allowed(entry, origin.url(path), error)
            status = policy.cache_status("stale", detail="upstream-unreachable")
            return self._hit(entry, client_headers, False, 0, outcome, "stale", status)

    def _lookup(self, key: str, client_headers: Headers) -> Entry | None:
        index = self.store.vary_index(key)
        if index is None:
            return None
        return self.store.get(key + "\n" + policy.variant_key(index.fields, client_headers))

    # -- hits -------------------------------------------------------------------------------

    def _hit(
        self,
        entry: Entry,
        client_headers: Headers,
        head_only: bool,
        age: float,
        outcome: Outcome,
        label: str,
        cache_status: bytes | None = None,
    ) -> StoredResponse:
        outcome.label = label
        self.store.count(Counter.HITS)
        if entry.kind == "git":
            self.store.count(Counter.GIT_HITS)
            self.store.count(Counter.GIT_BYTES_FROM_CACHE, entry.size)
        self.store.touch(entry)
        status_value = cache_status or policy.cache_status(
            "hit", detail="offline" if label == "offline" else None
        )
        common: Headers = [
            (b"Age", str(int(age)).encode()),
            (b"Cache-Status", status_value),
        ]
        if policy.not_modified_for_client(client_headers, entry.headers):
            headers = policy.not_modified_headers(entry.headers) + common
            return StoredResponse(304, b"Not Modified", headers, entry)
        base = [
            (k, v)
            for k, v in entry.headers
            if k.lower() not in (b"content-length", b"age", b"accept-ranges", b"content-range")
        ]
        base += [(b"Accept-Ranges", b"bytes"), *common]
        try:
            span = policy.parse_range(client_headers, entry.headers, entry.size)
        except policy.Unsatisfiable:
            headers = [
                *base,
                (b"Content-Range", f"bytes */{entry.size}".encode()),
                (b"Content-Length", b"0"),
            ]
            return StoredResponse(416, b"Range Not Satisfiable", headers, entry)
        if span is None or entry.status != 200:
            headers = [*base, (b"Content-Length", str(entry.size).encode())]
            length = 0 if head_only else entry.size
            return StoredResponse(entry.status, entry.reason, headers, entry, 0, length, self.store)
        start, end = span
        headers = [
            *base,
            (b"Content-Range", f"bytes {start}-{end}/{entry.size}".encode()),
            (b"Content-Length", str(end - start + 1).encode()),
        ]
        length = 0 if head_only else end - start + 1
        return StoredResponse(206, b"Partial Content", headers, entry, start, length, self.store)

    # -- revalidation ------------------------------------------------------------------------

    async def _revalidate(
        self,
        entry: Entry,
        origin: Origin,
        path: str,
        client_headers: Headers,
        head_only: bool,
        rule: policy.Rule | None,
        key: str,
        outcome: Outcome,
    ) -> ResponseSource:
        headers = request_headers_for_upstream(
            policy.without_conditionals(client_headers) + policy.conditional_headers(entry.headers),
            origin,
        )
        request_time = now()
        try:
            response = await self.pool.request(origin, b"GET", path.encode(), headers, None)
        except UpstreamError as error:
            _check_stale_allowed(entry, origin.url(path), error)
            age = policy.current_age(entry.headers, entry.request_time, entry.response_time, now())
            status = policy.cache_status("stale", detail="upstream-unreachable")
            return self._hit(entry, client_headers, head_only, age, outcome, "stale", status)
        self.store.count(Counter.REVALIDATIONS)
        if response.status == 304:
            while await response.read():  # no body; reading its end returns the connection
                pass
            entry.headers = policy.merge_not_modified(entry.headers, _stored_headers(response))
            entry.request_time, entry.response_time = request_time, now()
            try:
                self.store.update_headers(entry)
            except OSError as exc:
                log.warning("cannot refresh cached head for %s: %s", entry.url, exc)
            status = policy.cache_status("stale", fwd_status=304)
            return self._hit(entry, client_headers, head_only, 0, outcome, "revalidated", status)
        # Changed (or an error): this is a new response to store or pass on.
        return await self._store_or_stream(
            response, origin, path, client_headers, key, rule, outcome, request_time, head_only
        )

    # -- misses ------------------------------------------------------------------------------

    async def _miss(
        self,
        origin: Origin,
        path: str,
        client_headers: Headers,
        key: str,
        rule: policy.Rule | None,
        outcome: Outcome,
        method: bytes = b"GET",
        body: bytes | None = None,
        kind: str = "http",
    ) -> ResponseSource:
        flight = self._flights.get(key)
        if flight is not None:
            if not flight.head_ready.is_set():
                log.info("%s: waiting for the download already under way", origin.url(path))
                await flight.head_ready.wait()
            if flight.body_complete and not flight.finished:
                await flight.done.wait()  # milliseconds: the fsync and renames
                raise _Published
            joinable = flight.storing and not (flight.finished or flight.spilled)
            if joinable and flight.variant == policy.variant_key(
                _vary(flight.headers), client_headers
            ):
                try:
                    reader = self._reader(flight, client_headers, "miss", collapsed=True)
                except FileNotFoundError:
                    pass  # published a moment ago; fetch it ourselves
                else:
                    outcome.label = "collapsed"
                    self.store.count(Counter.MISSES)
                    return reader
        pending = None
        if key not in self._flights:
            pending = self._flights[key] = Flight(key, kind)
        request_time = now()
        headers = request_headers_for_upstream(policy.without_conditionals(client_headers), origin)
        try:
            response = await self.pool.request(
                origin, method, path.encode(), headers, _replay(body)
            )
            return await self._store_or_stream(
                response,
                origin,
                path,
                client_headers,
                key,
                rule,
                outcome,
                request_time,
                False,
                kind,
                pending,
            )
        except BaseException:
            if pending is not None and not pending.head_ready.is_set():
                self._abandon(pending)
            raise

    def _abandon(self, flight: Flight) -> None:
        """A registered flight that will not store: its waiters go upstream themselves."""
        flight.head_ready.set()
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    async def _store_or_stream(
        self,
        response: UpstreamResponse,
        origin: Origin,
        path: str,
        client_headers: Headers,
        key: str,
        rule: policy.Rule | None,
        outcome: Outcome,
        request_time: float,
        head_only: bool,
        kind: str = "http",
        pending: Flight | None = None,
    ) -> ResponseSource:
        """Store the response while streaming it (through `pending`, the flight registered
        for it, or a new one), or pass it through when it may not or cannot be stored."""
        self.store.count(Counter.MISSES)
        stored_headers = _stored_headers(response)
        if kind == "git":
            pass  # git keys carry the request's partition whatever the response says
        elif policy.credential_partition(client_headers, stored_headers) == "":
            key = policy.primary_key(origin.url(path), "")  # public: shareable
        flight = pending if pending is not None and pending.key == key else None
        if pending is not None and flight is None:
            self._abandon(pending)  # stored under another key (a public response)
        reason = policy.not_storable_reason(response.status, client_headers, stored_headers, rule)
        if reason is None and flight is None and key in self._flights:
            reason = "in-flight"  # someone else is storing this key right now
        writer = None
        if reason is None and self._nursery is not None:
            try:
                writer = self.store.begin()
            except OSError as exc:
                log.warning("cannot store %s: %s", origin.url(path), exc)
                reason = "storage"
        if writer is None or self._nursery is None:
            if flight is not None:
                self._abandon(flight)
            outcome.label = "miss"
            status = policy.cache_status("miss", fwd_status=response.status, detail=reason)
            return Annotated(response, [(b"Cache-Status", status)], head_only=head_only)
        vary = policy.vary_fields(stored_headers) or ()
        if flight is None:
            flight = self._flights[key] = Flight(key, kind)
        flight.variant = policy.variant_key(vary, client_headers)
        flight.status, flight.reason, flight.headers = (
            response.status,
            response.reason,
            stored_headers,
        )
        flight.content_length = header_value(response.headers, b"content-length")
        flight.path = str(writer.path)
        flight.storing = True
        flight.head_ready.set()
        self._nursery.start_soon(
            self._download, flight, response, writer, origin.url(path), request_time, vary
        )
        outcome.label = "miss"
        return self._reader(flight, client_headers, "miss", head_only=head_only)

    def _reader(
        self,
        flight: Flight,
        client_headers: Headers,
        label: str,
        *,
        collapsed: bool = False,
        head_only: bool = False,
    ) -> FlightReader:
        status = policy.cache_status(
            label, fwd_status=flight.status, stored=True, collapsed=collapsed
        )
        headers = _without(flight.headers, b"age")
        if flight.content_length is not None:
            headers.append((b"Content-Length", flight.content_length))
        headers += [(b"Age", b"0"), (b"Cache-Status", status)]
        return FlightReader(flight, headers, head_only)

    async def _download(
        self,
        flight: Flight,
        response: UpstreamResponse,
        writer: BodyWriter,
        url: str,
        request_time: float,
        vary: tuple[str, ...],
    ) -> None:
        live_writer: BodyWriter | None = writer
        received = 0
        try:
            while chunk := await response.read():
                received += len(chunk)
                if live_writer is not None:
                    before = live_writer.written
                    try:
                        live_writer.write(chunk)
                    except OSError as exc:
                        # Readers get what reached the file from it, the rest from memory.
                        log.warning("cannot store %s (%s): passing it through", url, exc)
                        flight.written = live_writer.written
                        chunk = chunk[live_writer.written - before :]
                        live_writer.abort()
                        live_writer = None
                        flight.spilled = True
                        flight.notify()
                    else:
                        flight.written = live_writer.written
                        flight.notify()
                        continue
                await self._feed_readers(flight, chunk)
            flight.body_complete = True
            flight.notify()
            if live_writer is not None:
                fields = {
                    "key": flight.key + "\n" + flight.variant,
                    "url": url,
                    "status": flight.status,
                    "reason": flight.reason,
                    "headers": flight.headers,
                    "request_time": request_time,
                    "response_time": now(),
                    "kind": flight.kind,
                }
                try:
                    await self.store.commit(live_writer, fields)
                    self.store.write_index(flight.key, vary)
                    self.store.count(Counter.STORED)
                except OSError as exc:
                    log.warning("cannot publish %s: %s", url, exc)
                    live_writer.abort()
                live_writer = None
                await self._maybe_evict()
        except ProxyError as error:
            log.warning("%s: download failed, nothing stored: %s", url, error)
            flight.error = str(error)
        finally:
            self.store.count(Counter.BYTES_FROM_UPSTREAM, received)
            if live_writer is not None:
                live_writer.abort()
            flight.finished = True
            for reader in list(flight.readers):
                reader.end_feed()
            flight.notify()
            flight.done.set()
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
            await response.aclose()

    async def _feed_readers(self, flight: Flight, chunk: bytes) -> None:
        for reader in list(flight.readers):
            await reader.feed(chunk)

    async def _maybe_evict(self) -> None:
        if self._evicting or not self.store.over_limit():
            return
        self._evicting = True
        try:
            freed = await self.store.evict()
            log.info("evicted %d bytes to stay under %d", freed, self.store.max_size)
        except OSError as exc:
            log.warning("eviction failed: %s", exc)
        finally:
            self._evicting = False

    async def _prefetch(
        self,
        origin: Origin,
        path: str,
        client_headers: Headers,
        key: str,
        rule: policy.Rule | None,
    ) -> None:
        """Fetch the whole resource into the cache with no client waiting on it."""
        try:
            source = await self._miss(origin, path, client_headers, key, rule, Outcome())
            await source.aclose()
        except _Published:
            pass  # someone else's download of it has just landed
        except ProxyError as error:
            log.info("%s: background fetch failed: %s", origin.url(path), error)

    async def _forward(
        self,
        origin: Origin,
        method: bytes,
        path: str,
        client_headers: Headers,
        outcome: Outcome,
        label: str,
        body: bytes | None = None,
    ) -> ResponseSource:
        outcome.label = label
        self.store.count(Counter.MISSES)
        headers = request_headers_for_upstream(client_headers, origin)
        response = await self.pool.request(origin, method, path.encode(), headers, _replay(body))
        status = policy.cache_status(label, fwd_status=response.status)
        return Annotated(response, [(b"Cache-Status", status)])


class Annotated:
    """An upstream response passed through, with extra headers for the client; with
    `head_only` (a GET sent upstream for a client's HEAD) its body is left unread, and the
    connection is closed rather than pooled."""

    def __init__(
        self, response: UpstreamResponse, extra: Headers, *, head_only: bool = False
    ) -> None:
        self._response = response
        self._head_only = head_only
        self.status = response.status
        self.reason = response.reason
        self.headers = [*response.headers, *extra]

    async def read(self) -> bytes:
        if self._head_only:
            return b""
        return await self._response.read()

    async def aclose(self) -> None:
        await self._response.aclose()


def _stored_headers(response: UpstreamResponse) -> Headers:
    """End-to-end headers worth keeping, with a Date (pip treats a Date-less entry as stale)."""
    headers = [
        (k, v)
        for k, v in drop_connection_fields(response.headers)
        if k.lower() not in (b"content-length", b"via")
    ]
    if header_value(headers, b"date") is None:
        headers.append((b"Date", policy.format_http_date(now())))
    return headers


def _replay(body: bytes | None) -> BodyReader | None:
    """A body reader over bytes already read (git requests are read whole to be keyed)."""
    if body is None:
        return None
    pending = [body]

    async def read() -> bytes:
        return pending.pop() if pending else b""

    return read


def _check_stale_allowed(entry: Entry, url: str, error: UpstreamError) -> None:
    """Return if a stale copy of `entry` may answer for `error`, else raise what the client
    gets instead. Only an origin that cannot be reached qualifies: after a certificate failure
    (maybe an interception) or a broken answer the error stands, and a stored response that
    must be revalidated is a 504 (RFC 9111 5.2.2)."""
    if not isinstance(error, UpstreamUnreachableError | UpstreamTimeoutError):
        raise error
    forbidden = policy.stale_forbidden_by(entry.headers)
    if forbidden is not None:
        raise RevalidationRequiredError(
            f"{url}: the origin cannot be reached ({error}), and the stored copy may not be "
            f"served without it ({forbidden})"
        ) from error
    log.warning("%s: serving stale copy: %s", url, error)


def _only_if_cached(headers: Headers) -> bool:
    return "only-if-cached" in policy.parse_cache_control(headers)


def _without(headers: Headers, name: bytes) -> Headers:
    return [(k, v) for k, v in headers if k.lower() != name]


def _vary(headers: Headers) -> tuple[str, ...]:
    return policy.vary_fields(headers) or ()
