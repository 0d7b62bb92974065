"""A request as the cache sees it: classified (plain HTTP, git ref discovery, a git pack
fetch, another git request) and keyed. git upload-pack requests are keyed on their body, so
that is read whole here (it is small: a negotiation, never a pack)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import _git
from .. import _policy as policy
from .._errors import BadRequestError, PayloadTooLargeError
from .._protocol import Headers, Origin, header_value
from .._registries import HINT_HEADERS, Ecosystem, Kind, Shape, shape_of
from .._upstream import BodyReader
from ..store import Entry, Store
from .decide import Mode, RequestKind, View, uncached_reason

# The rule for responses whose URL or request names exact content (a commit, a git object).
PINNED = policy.Rule("*", policy.RuleAction.IMMUTABLE)
# git request bodies are read whole to be keyed; no real fetch negotiation comes near this.
MAX_GIT_REQUEST_BYTES = _git.MAX_DECODED_BODY


@dataclass(frozen=True)
class CacheRequest:
    """A request as the server received it; `body` is None when it has none."""

    method: bytes
    origin: Origin
    path: str
    headers: Headers
    body: BodyReader | None = None

    @property
    def url(self) -> str:
        return self.origin.url(self.path)


@dataclass(frozen=True)
class Keyed:
    """A request once classified and keyed."""

    request: CacheRequest
    view: View
    key: str
    rule: policy.Rule | None
    # The request's credential partition ("" without credentials): part of its key, and what
    # keeps it out of the shared tier, both ways.
    partition: str
    whole_body: bytes | None = None  # a git request's body, read to be keyed

    @property
    def shareable(self) -> bool:
        """Whether the shared tier may answer it or receive its entry (no credentials)."""
        return not self.partition

    @property
    def head_only(self) -> bool:
        return self.request.method == b"HEAD"

    @property
    def store_kind(self) -> str:
        return "http" if self.view.kind is RequestKind.HTTP else "git"


@dataclass(frozen=True)
class Freshness:
    """What decides freshness besides the origin's headers: the configured rules (first),
    the registry shapes' immutable artifacts and index window, and whether a client's reload
    is always honoured."""

    rules: tuple[policy.Rule, ...] = ()
    index_ttl: float = 600.0
    strict_reload: bool = False


async def classify(
    request: CacheRequest, mode: Mode, freshness: Freshness, arrived: float | None = None
) -> Keyed:
    """The request's kind, key and freshness rule; a git upload-pack request's body is
    read whole, to be keyed on. `arrived`: when the cache received it (`View.arrived`)."""
    headers, url = request.headers, request.url
    partition = policy.credential_partition(headers, None)
    if mode is not Mode.PASS_THROUGH and _is_ref_discovery(request):
        protocol = (header_value(headers, b"git-protocol") or b"").decode("latin-1")
        key = policy.primary_key(f"{policy.GIT_REFS_PREFIX}{url}\n{protocol}", partition)
        view = View(RequestKind.GIT_REFS, request.method, headers, arrived=arrived)
        return Keyed(request, view, key, None, partition)
    if mode is not Mode.PASS_THROUGH and _is_upload_pack(request):
        return await _classify_upload_pack(request, partition, arrived)
    strict = freshness.strict_reload or policy.strict_reload(url, freshness.rules)
    has_body = request.body is not None
    view = View(RequestKind.HTTP, request.method, headers, has_body, strict, arrived=arrived)
    key = policy.primary_key(url, partition)
    return Keyed(request, view, key, _rule(request, freshness), partition)


async def _classify_upload_pack(
    request: CacheRequest, partition: str, arrived: float | None
) -> Keyed:
    body = await read_whole(request.body) if request.body is not None else b""
    encoding = header_value(request.headers, b"content-encoding")
    try:
        decoded = _git.decode_request_body(body, encoding.decode("latin-1") if encoding else None)
    except _git.GitBodyError as exc:
        raise BadRequestError(f"undecodable git request body: {exc}") from exc
    protocol = (header_value(request.headers, b"git-protocol") or b"").decode("latin-1")
    key = policy.primary_key(_git.pack_cache_key(request.url, protocol, decoded), partition)
    kind = {
        _git.GitRequestKind.REF_DISCOVERY: RequestKind.GIT_REFS,
        _git.GitRequestKind.FETCH_PINNED: RequestKind.GIT_PACK,
    }.get(_git.classify_upload_pack(decoded), RequestKind.GIT_OTHER)
    rule = PINNED if kind is RequestKind.GIT_PACK else None
    view = View(kind, request.method, request.headers, arrived=arrived)
    return Keyed(request, view, key, rule, partition, body)


def ecosystem_of(request: CacheRequest) -> Ecosystem:
    """Which ecosystem the request belongs to: git for git smart HTTP (what `classify` tells
    apart as the git request kinds, by the same tests), else by the URL's shape."""
    if _is_ref_discovery(request) or _is_upload_pack(request):
        return Ecosystem.GIT
    return registry_shape(request).ecosystem


def registry_shape(request: CacheRequest) -> Shape:
    """The registry shape of the request's path, told apart by how the client asks."""
    hints = {
        name: value.decode("latin-1")
        for name in HINT_HEADERS
        if (value := header_value(request.headers, name.encode())) is not None
    }
    return shape_of(request.path, hints)


def _is_ref_discovery(request: CacheRequest) -> bool:
    return _git.is_ref_discovery_get(request.method.decode("ascii", "replace"), request.path)


def _is_upload_pack(request: CacheRequest) -> bool:
    content_type = header_value(request.headers, b"content-type")
    return _git.is_upload_pack_post(
        request.method.decode("ascii", "replace"),
        request.path,
        content_type.decode("latin-1") if content_type else None,
    )


def _rule(request: CacheRequest, freshness: Freshness) -> policy.Rule | None:
    """The rule for a plain HTTP request: a configured one, else a URL naming a commit
    (immutable), else the registry shape of its path (an artifact is immutable, an index page
    gets the index window), else none (the origin's headers alone)."""
    rule = policy.rule_for(request.url, freshness.rules)
    if rule is not None:
        return rule
    if _git.commit_pinned_url(request.path):
        return PINNED  # names a commit: the bytes behind it cannot change
    shape = registry_shape(request)
    if shape.kind is Kind.ARTIFACT:
        return policy.Rule("*", policy.RuleAction.IMMUTABLE, source=shape.convention)
    if shape.kind is Kind.INDEX:
        return policy.Rule("*", policy.RuleAction.INDEX, freshness.index_ttl, shape.convention)
    return None


async def read_whole(read: BodyReader) -> bytes:
    """A request body read into memory (git requests: small, and keyed on their bytes)."""
    parts = []
    size = 0
    while chunk := await read():
        size += len(chunk)
        if size > MAX_GIT_REQUEST_BYTES:
            raise PayloadTooLargeError(
                f"git request body larger than {MAX_GIT_REQUEST_BYTES} bytes"
            )
        parts.append(chunk)
    return b"".join(parts)


def lookup(store: Store, keyed: Keyed) -> Entry | None:
    """The stored entry for a keyed request: its own variant (Vary), or for a credentialed
    request a `public` response stored without the partition."""
    if uncached_reason(keyed.view) is not None:
        return None
    entry = _lookup_key(store, keyed.key, keyed.request.headers)
    if entry is None and keyed.view.kind is RequestKind.HTTP:
        public_key = policy.primary_key(keyed.request.url, "")
        if public_key != keyed.key:
            public = _lookup_key(store, public_key, keyed.request.headers)
            if public is not None and "public" in policy.parse_cache_control(public.headers):
                return public
    return entry


def _lookup_key(store: Store, key: str, client_headers: Headers) -> Entry | None:
    index = store.vary_index(key)
    if index is None:
        return None
    return store.get(key + "\n" + policy.variant_key(index.fields, client_headers))
