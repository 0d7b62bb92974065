"""The caching layer between the server and the upstream pool: lookup, decide, do.

The server hands every request to `Cache.respond` and streams what comes back; it makes no
caching decision. Here a request is classified and keyed (git requests are read whole to be
keyed on their body), its stored entry looked up, `decide.decide` says what to do, and this
module does it: answer from disk, revalidate, join or start a download (`flight`), forward,
or refuse. This is the one owner of the upstream request headers, of `Cache-Status`, and of
offline misses.

A lookup that races with the store (a body evicted or found corrupt between lookup and
reading, a download being published as we look) simply looks again, a bounded number of
times. The last look waits for no other download: a miss then fetches for itself, so
downloads of the same key that keep starting and ending (concurrent git clones' ref
discovery) cannot keep a request from its answer.
"""

from __future__ import annotations

import logging

import trio

from .. import _policy as policy
from .._config import Config
from .._errors import (
    OfflineMissError,
    ProxyError,
    RevalidationRequiredError,
    UpstreamError,
)
from .._protocol import Headers
from .._protocol import request_headers_for_upstream as upstream_fields
from .._upstream import replay
from ..store import Counter, Entry, Store, now
from .decide import (
    Action,
    Decision,
    Mode,
    Outcome,
    RequestKind,
    cache_status,
    decide,
    failure_of,
    stored_head,
    uncached_reason,
)
from .downloads import Clock, Downloads, Joined, stored_headers
from .flight import State
from .keys import CacheRequest, Freshness, Keyed, classify, lookup
from .shared import open_shared_reader
from .sources import (
    EntryGoneError,
    Heads,
    PassThrough,
    ResponseSource,
    StoredResponse,
    Upstream,
)

log = logging.getLogger("transcache.cache")

COUNTER_FLUSH_SECONDS = 5.0
# A lookup that finds its body gone or its download being published looks again; a third
# try covers a publish racing with a removal. The last one joins no download.
LOOKUP_ATTEMPTS = 3


Answer = tuple[ResponseSource, Outcome]


class Cache:
    def __init__(
        self, config: Config, store: Store | None, pool: Upstream, clock: Clock = now
    ) -> None:
        self.store = store
        self.pool = pool
        self.clock = clock
        self.reload(config)
        self._downloads = Downloads(store, clock) if store is not None else None
        self._refreshing: set[str] = set()  # keys revalidated in the background now
        self._heads = Heads()
        self._nursery: trio.Nursery | None = None
        self.shared = open_shared_reader(config, self)

    def reload(self, config: Config) -> None:
        """Decide new requests by `config`'s rules, index window, mode and size limit."""
        self.config = config
        self.freshness = Freshness(config.rules, config.index_ttl, config.strict_client_reload)
        if config.offline:
            self.mode = Mode.OFFLINE
        else:
            self.mode = Mode.ONLINE if self.store is not None else Mode.PASS_THROUGH
        if self.store is not None:
            self.store.max_size = config.max_size

    @property
    def downloads(self) -> Downloads:
        assert self._downloads is not None, "only a cache with a store downloads"
        return self._downloads

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background downloads and flush counters until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._downloads is not None:
                    self._downloads.nursery = nursery
                if self.shared is not None:
                    await nursery.start(self.shared.run)
                task_status.started()
                while True:
                    await trio.sleep(COUNTER_FLUSH_SECONDS)
                    if self.store is not None:
                        self.store.flush_counters()
        finally:
            self._nursery = None
            if self._downloads is not None:
                self._downloads.nursery = None
            if self.store is not None:
                self.store.close()

    async def respond(self, request: CacheRequest) -> Answer:
        """What the client gets, and what happened. Raises ProxyError for the answers the
        server turns into an error status (offline misses, upstream failures)."""
        keyed = await classify(request, self.mode, self.freshness, self.clock())
        for attempt in range(1, LOOKUP_ATTEMPTS + 1):
            try:
                answer = await self._respond_once(keyed, join=attempt < LOOKUP_ATTEMPTS)
                if answer is not None:
                    return await self._intact(answer)
            except EntryGoneError as gone:
                # Evicted between lookup and open, or corrupt: removed, so now a miss.
                if self.store is not None:
                    self.store.remove(gone.key)
        raise ProxyError(f"{request.url}: the cache entry kept changing; try again")

    # -- decide, then do -----------------------------------------------------------------------

    async def _respond_once(self, keyed: Keyed, *, join: bool = True) -> Answer | None:
        entry = lookup(self.store, keyed) if self.store is not None else None
        decision = decide(keyed.view, entry, keyed.rule, self.clock(), self.mode)
        action = decision.action
        if action is Action.HIT:
            assert entry is not None
            if decision.refresh:
                self._refresh_behind(keyed, entry)
            return self._hit(keyed, entry, decision), decision.outcome
        if action is Action.REVALIDATE:
            assert entry is not None
            return await self._revalidate(keyed, entry)
        if action is Action.MISS:
            return await self._miss(keyed, entry, join=join)
        if action is Action.FORWARD:
            return await self._forward(keyed, decision)
        if self.shared is not None and (answer := await self.shared.offline(keyed)):
            return answer
        self._count(Counter.OFFLINE_MISSES)
        cacheable = uncached_reason(keyed.view) is None
        where = "is not in the cache" if cacheable else "cannot be answered from the cache"
        raise OfflineMissError(f"offline mode: {keyed.request.url} {where}")

    def _hit(self, keyed: Keyed, entry: Entry, decision: Decision) -> StoredResponse:
        assert self.store is not None
        status = count_stored_answer(self.store, entry, decision)
        self.store.touch(entry)
        head = stored_head(entry, keyed.request.headers, keyed.head_only, decision.age, status)
        return StoredResponse(head, entry, self.store, self._heads)

    def _stale_or_refuse(self, keyed: Keyed, entry: Entry | None, error: UpstreamError) -> Answer:
        """The origin failed while it was needed: a stale answer where allowed, else the
        error, or a 504 naming what forbids a stale answer."""
        decision = decide(keyed.view, entry, keyed.rule, self.clock(), self.mode, failure_of(error))
        if decision.action is Action.STALE:
            assert entry is not None
            log.warning("%s: serving stale copy: %s", keyed.request.url, error)
            return self._hit(keyed, entry, decision), decision.outcome
        if decision.why is None:
            raise error
        raise RevalidationRequiredError(
            f"{keyed.request.url}: the origin cannot be reached ({error}), and the stored "
            f"copy may not be served without it ({decision.why})"
        ) from error

    async def _revalidate(self, keyed: Keyed, entry: Entry) -> Answer:
        assert self.store is not None
        request = keyed.request
        headers = upstream_headers(request, policy.conditional_headers(entry.headers))
        request_time = self.clock()
        try:
            response = await self.pool.request(
                request.origin, b"GET", request.path.encode(), headers, None
            )
        except UpstreamError as error:
            return self._stale_or_refuse(keyed, entry, error)
        self.store.count(Counter.REVALIDATIONS)
        if response.status != 304:  # changed (or an error): a new response
            return await self.downloads.store_or_stream(keyed, response, request_time, None)
        while await response.read():  # no body; reading its end returns the connection
            pass
        entry.headers = policy.merge_not_modified(
            entry.headers, stored_headers(response, self.clock())
        )
        entry.request_time, entry.response_time = request_time, self.clock()
        try:
            self.store.update_headers(entry)
        except OSError as exc:
            log.warning("cannot refresh cached head for %s: %s", entry.url, exc)
        revalidated = Decision(Action.HIT, Outcome.REVALIDATED)
        return self._hit(keyed, entry, revalidated), Outcome.REVALIDATED

    async def _miss(self, keyed: Keyed, entry: Entry | None, *, join: bool = True) -> Answer | None:
        """Join the download of this key under way (when `join`), else start one (or pass
        the request through when another is under way); None when the download joined was
        just published (look again: a hit)."""
        request = keyed.request
        joined = await self.downloads.join(keyed) if join else Joined.NOTHING
        if joined is Joined.AGAIN:
            return None
        if joined is not Joined.NOTHING:
            self._count(Counter.MISSES)
            return joined
        pending = self.downloads.register(keyed.key)
        request_time = self.clock()
        headers = upstream_headers(request, [])
        try:
            if self.shared is not None and (shared := await self.shared.answer(keyed, pending)):
                return shared
            try:
                response = await self.pool.request(
                    request.origin,
                    request.method,
                    request.path.encode(),
                    headers,
                    replay(keyed.whole_body),
                )
            except UpstreamError as error:
                if keyed.view.kind is not RequestKind.GIT_REFS:
                    raise
                self.downloads.abandon(pending)
                return self._stale_or_refuse(keyed, entry, error)
            return await self.downloads.store_or_stream(keyed, response, request_time, pending)
        except BaseException:
            if pending is not None and pending.state is State.PENDING:
                self.downloads.abandon(pending)
            raise

    async def _forward(self, keyed: Keyed, decision: Decision) -> Answer:
        """Pass the request through as asked (a full download may start behind it)."""
        request = keyed.request
        if decision.prefetch and not self.downloads.busy(keyed.key) and self._nursery is not None:
            self._nursery.start_soon(self._prefetch, keyed)
        if decision.outcome in (Outcome.MISS, Outcome.BYPASS):
            self._count(Counter.MISSES)
        body = request.body if keyed.whole_body is None else replay(keyed.whole_body)
        response = await self.pool.request(
            request.origin,
            request.method,
            request.path.encode(),
            upstream_fields(request.headers, request.origin),
            body,
        )
        extra: Headers = []
        if self.mode is not Mode.PASS_THROUGH:
            status = cache_status(decision.outcome, response.status, uncached=decision.why)
            extra = [(b"Cache-Status", status)]
        return PassThrough(response, extra), decision.outcome

    def _refresh_behind(self, keyed: Keyed, entry: Entry) -> None:
        """Revalidate an index page past its window in the background, once per key at a
        time; the client has its answer already (stale-while-revalidate)."""
        if keyed.key in self._refreshing or self._nursery is None:
            return
        self._refreshing.add(keyed.key)
        self._nursery.start_soon(self._refresh, keyed, entry)

    async def _refresh(self, keyed: Keyed, entry: Entry) -> None:
        try:
            source, _ = await self._revalidate(keyed, entry)
            await source.aclose()  # a new body goes on downloading into the store
        except ProxyError as error:
            log.info("%s: background refresh failed: %s", keyed.request.url, error)
        finally:
            self._refreshing.discard(keyed.key)

    async def _prefetch(self, keyed: Keyed) -> None:
        """Fetch the whole resource into the cache with no client waiting on it."""
        try:
            answer = await self._miss(keyed, None)
            if answer is not None:
                await answer[0].aclose()
        except ProxyError as error:
            log.info("%s: background fetch failed: %s", keyed.request.url, error)

    async def _intact(self, answer: Answer) -> Answer:
        """`answer`, unless it comes from a stored body that is not what its digest says:
        then that body is gone and the request looks again (EntryGoneError). Hashing a
        large body the first time runs in a worker thread, off the event loop."""
        source = answer[0]
        if not isinstance(source, StoredResponse) or self.store is None:
            return answer
        entry = source.entry
        if not self.store.needs_hashing(entry):
            return answer
        try:
            intact = await self.store.verified(entry)
        except BaseException:
            await source.aclose()
            raise
        if not intact:
            await source.aclose()
            raise EntryGoneError(entry.key)
        return answer

    def _count(self, name: Counter) -> None:
        if self.store is not None:
            self.store.count(name)


def count_stored_answer(store: Store, entry: Entry, decision: Decision) -> bytes:
    """Count an answer from `entry` and return its Cache-Status: a hit's, or for one stored
    by the download the request waited for (COLLAPSED), a miss's, as for a reader of that
    download."""
    if decision.outcome is Outcome.COLLAPSED:
        store.count(Counter.MISSES)
        return cache_status(decision.outcome, entry.status, stored=True)
    store.count(Counter.HITS)
    if entry.kind == "git":
        store.count(Counter.GIT_HITS)
        store.count(Counter.GIT_BYTES_FROM_CACHE, entry.size)
    return cache_status(decision.outcome, rule=decision.rule)


def upstream_headers(request: CacheRequest, conditional: Headers) -> Headers:
    """What a request the cache makes upstream carries: the client's headers without its
    own validators and Range (the full response is fetched, and the client's conditions
    answered from it), plus `conditional` (a revalidation's validators)."""
    headers = policy.without_conditionals(request.headers) + list(conditional)
    return upstream_fields(headers, request.origin)
