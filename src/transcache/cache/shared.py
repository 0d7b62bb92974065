"""The cache's side of the shared tier (`tiers`): after a local miss, whether the tier's entry
answers the request (the same `decide` as a local entry, on the times the entry carries),
and if so its body stored and streamed through the download registered for the key, the
single-flight path an origin's response takes. Only plain HTTP and pinned git fetches are
looked up, never a credentialed request (its entries are never uploaded either)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from .._config import Config
from ..tiers.shared import SharedTier, open_shared_tier
from .decide import Action, RequestKind, decide
from .downloads import Answer, Clock
from .flight import Flight
from .keys import Keyed

if TYPE_CHECKING:
    from .cache import Cache

SHARED_KINDS = frozenset({RequestKind.HTTP, RequestKind.GIT_PACK})


class SharedReader:
    def __init__(self, tier: SharedTier, cache: Cache, clock: Clock) -> None:
        self.tier = tier
        self._cache = cache
        self._downloads = cache.downloads
        self._clock = clock
        self._downloads.on_publish.append(tier.share)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The tier's uploads, until cancelled; then its connections are closed."""
        try:
            await self.tier.run(task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await self.tier.aclose()

    async def offline(self, keyed: Keyed) -> Answer | None:
        """An offline miss answered from the tier (a cache, not an origin), if it can."""
        pending = self._downloads.register(keyed.key)
        answer = await self.answer(keyed, pending)
        if answer is None:
            self._downloads.abandon(pending)
        return answer

    async def answer(self, keyed: Keyed, pending: Flight | None) -> Answer | None:
        """The tier's answer, streaming into the store through `pending`; None for a tier
        miss, a stale or unusable entry, or a tier that fails (the origin is asked)."""
        if pending is None or keyed.view.kind not in SHARED_KINDS or not keyed.shareable:
            return None
        entry = await self.tier.entry(keyed.key, keyed.request.headers)
        if entry is None:
            return None
        now = self._clock()
        if decide(keyed.view, entry, keyed.rule, now, self._cache.mode).action is not Action.HIT:
            return None
        response = await self.tier.open(entry, now)
        if response is None:
            return None
        return await self._downloads.store_or_stream(keyed, response, now, pending)


def open_shared_reader(config: Config, cache: Cache) -> SharedReader | None:
    """The cache's side of the tier `config` names, or None (none named, or no store)."""
    if cache.store is None:
        return None
    tier = open_shared_tier(config, cache.store)
    return SharedReader(tier, cache, cache.clock) if tier is not None else None
