"""The shared tier as the cache uses it: after a local miss, `entry` reads an entry's metadata
and `open` its body; after every local store, `share` queues an upload.

In the bucket, under its prefix, entries mirror the local store: `v1/meta/<sha256(key)>` holds
a record (an entry, or a Vary index naming the fields that choose the variant, as locally) and
`v1/blobs/<sha256(body)>` a body. Bodies are content-addressed, so writers never conflict;
metadata is last-writer-wins, which is safe because a newer response replaces an older one.
A body goes up before the metadata naming it, so no reader finds metadata for a body that is
not there in full (a large body goes up in parts and appears when the last one completes).

Faults never fail a request: every failure is a tier miss (counted, logged once per
breaker opening), and the breaker skips a tier that keeps failing. A body read from the tier
is checked against its sha256 while it streams, its last piece held back until the check
passed, so a truncated or corrupted object is never delivered as a complete response, and
never stored (the flight then fails as on an origin that broke off).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import trio

from .. import _policy as policy
from .._config import Config
from .._errors import UpstreamError
from .._protocol import Headers
from ..store import Counter, Entry, Store
from ..store.layout import key_digest
from ..store.metadata import MetadataError, VaryIndex, parse_record
from .breaker import Breaker, BreakerState
from .bucket import Bucket, ObjectBody, TierError, parse_location, read_whole
from .trust import Trust, load_trust

log = logging.getLogger("transcache.tier")

META = "v1/meta/"
BLOBS = "v1/blobs/"
# Uploads running at once, and waiting: past the queue's end an upload is dropped (the entry
# stays local; the next proxy that stores it uploads it).
UPLOADERS = 4
UPLOAD_QUEUE = 1000
# How long a stopping proxy goes on uploading what it queued: a CI job stops its proxy right
# after its last download, and what it fetched is what the next jobs need.
SHUTDOWN_UPLOAD_SECONDS = 30.0
# Keys this proxy took from the tier recently: storing them locally uploads nothing.
FROM_TIER_KEYS = 10_000
# Bodies up to this size are read and checked whole before they are answered, so a bad one
# falls back to the origin unseen; larger ones stream, and a bad one breaks off that response
# as an origin that broke off would.
CHECKED_FIRST_BYTES = 1024 * 1024
# Bodies up to this size are uploaded without asking first whether the bucket has them: the
# PUT costs the round trip a HEAD would (bodies are content-addressed, so writing one again
# changes nothing). Larger ones are asked for first, to spare their upload.
ASK_FIRST_BYTES = 1024 * 1024


SHARED_COUNTERS = (
    Counter.SHARED_HITS,
    Counter.SHARED_BYTES,
    Counter.SHARED_UPLOADS,
    Counter.SHARED_UPLOAD_BYTES,
    Counter.SHARED_ERRORS,
)


def meta_name(key: str) -> str:
    return META + key_digest(key)


def blob_name(digest: str) -> str:
    return BLOBS + digest


@dataclass(frozen=True)
class Upload:
    entry: Entry
    primary: str  # the key its Vary index lives under
    vary: tuple[str, ...]


class TierAnswer:
    """A stored response read from the tier, as an upstream answer the cache stores while it
    streams (`Downloads.store_or_stream`): the entry's head, its age carried in `Age` (the
    tier is a cache hop, RFC 9111 4.2.3), and its body checked against the entry's size and
    sha256, the last piece held back until both match."""

    def __init__(self, entry: Entry, body: ObjectBody, now: float, tier: SharedTier) -> None:
        self.status = entry.status
        self.reason = entry.reason
        age = policy.current_age(entry.headers, entry.request_time, entry.response_time, now)
        self.headers: Headers = [(k, v) for k, v in entry.headers if k.lower() != b"age"]
        self.headers.append((b"Age", str(math.ceil(age)).encode()))
        self.headers.append((b"Content-Length", str(entry.size).encode()))
        self._entry = entry
        self._body = body
        self._tier = tier
        self._hash = hashlib.sha256()
        self._received = 0
        self._held = b""
        self._ahead: list[bytes] | None = None
        self._checked = False  # the whole body arrived and matched

    async def read_ahead(self) -> None:
        """Read and check the whole body now (a small one); `read` then hands it over."""
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        self._ahead = [b"".join(parts)]

    async def read(self) -> bytes:
        if self._ahead is not None:
            return self._ahead.pop() if self._ahead else b""
        if self._checked:
            return b""
        try:
            chunk = await self._body.read()
        except TierError as exc:
            raise self._broken(str(exc)) from exc
        self._received += len(chunk)
        self._hash.update(chunk)
        if self._received > self._entry.size:
            raise self._broken("the body is longer than its metadata says")
        if chunk:
            held, self._held = self._held, chunk
            return held if held else await self.read()
        if self._received != self._entry.size:
            raise self._broken(f"the body ended after {self._received} of {self._entry.size} bytes")
        if self._hash.hexdigest() != self._entry.digest:
            raise self._broken("the body is not what its sha256 says")
        held, self._held = self._held, b""
        self._checked = True
        self._tier.count(Counter.SHARED_BYTES, self._received)
        return held

    def _broken(self, why: str) -> UpstreamError:
        self._tier.found_bad(self._entry)
        self._tier.failed(f"{self._entry.url} from the shared cache: {why}")
        return UpstreamError(f"the shared cache's copy of {self._entry.url} is bad: {why}")

    async def aclose(self) -> None:
        await self._body.aclose()


class SharedTier:
    def __init__(self, bucket: Bucket, store: Store, trust: Trust, config: Config) -> None:
        self.bucket = bucket
        self.store = store
        self.trust = trust
        self.readonly = config.shared_cache_readonly
        self.breaker = Breaker(config.shared_cache_failures, config.shared_cache_skip)
        self._send, self._queue = trio.open_memory_channel[Upload](UPLOAD_QUEUE)
        self._from_tier: dict[str, None] = {}
        # Bodies whose copy in the bucket failed its check: not read again, and uploaded
        # again (whatever the bucket says it has) when this proxy gets them from the origin.
        self._bad: dict[str, None] = {}
        self._uploading = 0
        self._idle = trio.Event()
        self._idle.set()
        self.last_error: str | None = None
        # This process's counts, for its metrics and status page (the store's counters add
        # up every process's, for `cache stats`).
        self.tally: dict[str, int] = dict.fromkeys(SHARED_COUNTERS, 0)

    @property
    def description(self) -> str:
        """What `status` and the log say about the tier."""
        trust = (
            "trusted as it is (no verify key)"
            if self.trust.trusts_bucket_as_is
            else ("signed entries only")
        )
        mode = ", read-only" if self.readonly else ""
        return f"{self.bucket}: {trust}{mode}"

    # -- reading -------------------------------------------------------------------------------

    async def entry(self, key: str, client_headers: Headers) -> Entry | None:
        """The tier's entry for a primary `key` and the request's variant; None on a miss,
        an untrusted record, or any failure (never raises)."""
        if not self.breaker.allows(trio.current_time()):
            return None
        try:
            record = await self._record(key)
            if isinstance(record, VaryIndex):
                record = await self._record(
                    key + "\n" + policy.variant_key(record.fields, client_headers)
                )
        except TierError as exc:
            self.failed(str(exc))
            return None
        self.breaker.succeeded()
        return record if isinstance(record, Entry) else None

    async def open(self, entry: Entry, now: float) -> TierAnswer | None:
        """The entry's body as an answer to store and stream; None when it is gone, known
        bad, or the tier fails."""
        if entry.digest in self._bad:
            return None
        try:
            body = await self.bucket.get(blob_name(entry.digest))
        except TierError as exc:
            self.failed(str(exc))
            return None
        if body is None:
            return None
        if body.size != entry.size:
            await body.aclose()
            self.failed(f"{entry.url}: the shared cache's body has the wrong size")
            return None
        answer = TierAnswer(entry, body, now, self)
        if entry.size <= CHECKED_FIRST_BYTES:
            try:
                await answer.read_ahead()
            except UpstreamError:
                await answer.aclose()
                return None
        self.count(Counter.SHARED_HITS)
        self._remember(entry.key)
        return answer

    async def _record(self, key: str) -> Entry | VaryIndex | None:
        obj = await self.bucket.get(meta_name(key))
        if obj is None:
            return None
        try:
            data = await read_whole(obj)
        finally:
            await obj.aclose()
        record = self.trust.open(data)
        if record is None:
            log.warning("shared cache: ignored an unsigned or mis-signed record for %s", key)
            return None
        try:
            parsed = parse_record(record, self.store.layout.blobs)
        except MetadataError as exc:
            log.warning("shared cache: ignored a record for %s with %s", key, exc)
            return None
        # An entry without Vary is stored under its primary key; its own key adds "\n".
        if parsed.key == key or (isinstance(parsed, Entry) and parsed.key == key + "\n"):
            return parsed
        return None  # a record under another key's name: not what was asked for

    # -- writing -------------------------------------------------------------------------------

    def share(self, entry: Entry, primary: str, vary: tuple[str, ...]) -> None:
        """Queue the upload of an entry just stored locally (nothing when read-only, for a
        credentialed request's entry, or for one this proxy took from the tier)."""
        if self.readonly or entry.key in self._from_tier:
            return
        try:
            self._send.send_nowait(Upload(entry, primary, vary))
        except (trio.WouldBlock, trio.ClosedResourceError):
            log.info("shared cache: upload queue full or closed, %s stays local", entry.url)
            return
        self._uploading += 1
        self._idle = trio.Event()

    async def wait_idle(self) -> None:
        """Until every upload queued so far has ended."""
        await self._idle.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Upload what `share` queued, UPLOADERS at a time, until cancelled; then go on
        with what was queued for up to SHUTDOWN_UPLOAD_SECONDS."""
        drain = trio.CancelScope(shield=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._uploaders, drain)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._send.close()  # the uploaders end once the queue is empty
                drain.deadline = trio.current_time() + SHUTDOWN_UPLOAD_SECONDS

    async def _uploaders(self, drain: trio.CancelScope) -> None:
        with drain:
            async with trio.open_nursery() as uploads:
                for _ in range(UPLOADERS):
                    uploads.start_soon(self._uploader)

    async def _uploader(self) -> None:
        async for upload in self._queue:
            try:
                if self.breaker.allows(trio.current_time()):
                    await self._upload(upload)
                    self.breaker.succeeded()
            except TierError as exc:
                self.failed(f"uploading {upload.entry.url}: {exc}")
            finally:
                self._uploading -= 1
                if not self._uploading:
                    self._idle.set()

    async def _upload(self, upload: Upload) -> None:
        entry = upload.entry
        name = blob_name(entry.digest)
        bad = entry.digest in self._bad
        if entry.size <= ASK_FIRST_BYTES or bad or not await self.bucket.exists(name):
            await self.bucket.put_file(name, Path(entry.body_path), entry.size)
            self.count(Counter.SHARED_UPLOAD_BYTES, entry.size)
            self._bad.pop(entry.digest, None)
        record = entry.to_json()
        if upload.vary:
            await self.bucket.put(meta_name(entry.key), self.trust.seal(record))
            index = VaryIndex(upload.primary, upload.vary).to_json()
            await self.bucket.put(meta_name(upload.primary), self.trust.seal(index))
        else:
            await self.bucket.put(meta_name(upload.primary), self.trust.seal(record))
        self.count(Counter.SHARED_UPLOADS)

    # -- state ---------------------------------------------------------------------------------

    def failed(self, why: str) -> None:
        was = self.breaker.state
        self.breaker.failed(trio.current_time())
        self.count(Counter.SHARED_ERRORS)
        self.last_error = why
        if was is not BreakerState.OPEN and self.breaker.state is BreakerState.OPEN:
            log.warning("shared cache skipped for %g s: %s", self.breaker.skip, why)
        else:
            log.info("shared cache: %s", why)

    def count(self, name: Counter, amount: int = 1) -> None:
        self.store.count(name, amount)
        self.tally[name] += amount

    @property
    def status(self) -> str:
        """The tier, its trust, and whether it is being skipped now (status page, `status`)."""
        skipping = "" if self.breaker.state is BreakerState.CLOSED else "; skipped after errors"
        return self.description + skipping

    def found_bad(self, entry: Entry) -> None:
        """`entry`'s body in the bucket failed its check: the origin's copy goes up again."""
        self._from_tier.pop(entry.key, None)
        self._bad[entry.digest] = None
        if len(self._bad) > FROM_TIER_KEYS:
            del self._bad[next(iter(self._bad))]

    def _remember(self, key: str) -> None:
        self._from_tier[key] = None
        if len(self._from_tier) > FROM_TIER_KEYS:
            del self._from_tier[next(iter(self._from_tier))]

    async def prune(self, older_than: float) -> int:
        """Delete the tier's objects last written before `older_than` (a timestamp)."""
        removed = 0
        for under in (META, BLOBS):
            for listed in await self.bucket.list(under):
                if listed.modified < older_than:
                    await self.bucket.delete(listed.name)
                    removed += 1
        return removed

    async def aclose(self) -> None:
        await self.bucket.aclose()


def open_shared_tier(config: Config, store: Store) -> SharedTier | None:
    """The shared tier `config` names, or None."""
    if not config.shared_cache:
        return None
    from .s3 import S3Bucket, find_endpoint

    trust = load_trust(config.shared_cache_signing_key, config.shared_cache_verify_key)
    bucket = S3Bucket(parse_location(config.shared_cache), config, find_endpoint())
    tier = SharedTier(bucket, store, trust, config)
    # Trusting a bucket as it is lets anyone who can write to it serve every reader: say so.
    (log.warning if trust.trusts_bucket_as_is else log.info)("shared cache %s", tier.description)
    return tier
