"""A request as the cache sees it: classified (plain HTTP, git ref discovery, a git pack
fetch, another git request) and keyed. git upload-pack requests are keyed on their body, so
that is read whole here (it is small: a negotiation, never a pack)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import _git
from .. import _policy as policy
from .._errors import BadRequestError, PayloadTooLargeError
from .._protocol import Headers, Origin, header_value
from .._registries import HINT_HEADERS, Kind, shape_of
from .._upstream import BodyReader
from .decide import Mode, RequestKind, View

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
    whole_body: bytes | None = None  # a git request's body, read to be keyed

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


async def classify(request: CacheRequest, mode: Mode, freshness: Freshness) -> Keyed:
    """The request's kind, key and freshness rule; a git upload-pack request's body is
    read whole, to be keyed on."""
    headers, url = request.headers, request.url
    partition = policy.credential_partition(headers, None)
    verb = request.method.decode("ascii", "replace")
    content_type = header_value(headers, b"content-type")
    if mode is not Mode.PASS_THROUGH and _git.is_ref_discovery_get(verb, request.path):
        protocol = (header_value(headers, b"git-protocol") or b"").decode("latin-1")
        key = policy.primary_key(f"{policy.GIT_REFS_PREFIX}{url}\n{protocol}", partition)
        return Keyed(request, View(RequestKind.GIT_REFS, request.method, headers), key, None)
    if mode is not Mode.PASS_THROUGH and _git.is_upload_pack_post(
        verb, request.path, content_type.decode("latin-1") if content_type else None
    ):
        return await _classify_upload_pack(request, partition)
    strict = freshness.strict_reload or policy.strict_reload(url, freshness.rules)
    view = View(RequestKind.HTTP, request.method, headers, request.body is not None, strict)
    return Keyed(request, view, policy.primary_key(url, partition), _rule(request, freshness))


async def _classify_upload_pack(request: CacheRequest, partition: str) -> Keyed:
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
    return Keyed(request, View(kind, request.method, request.headers), key, rule, body)


def _rule(request: CacheRequest, freshness: Freshness) -> policy.Rule | None:
    """The rule for a plain HTTP request: a configured one, else a URL naming a commit
    (immutable), else the registry shape of its path (an artifact is immutable, an index page
    gets the index window), else none (the origin's headers alone)."""
    rule = policy.rule_for(request.url, freshness.rules)
    if rule is not None:
        return rule
    if _git.commit_pinned_url(request.path):
        return PINNED  # names a commit: the bytes behind it cannot change
    hints = {
        name: value.decode("latin-1")
        for name in HINT_HEADERS
        if (value := header_value(request.headers, name.encode())) is not None
    }
    shape = shape_of(request.path, hints)
    if shape.kind is Kind.ARTIFACT:
        return policy.Rule("*", policy.RuleAction.IMMUTABLE, source=shape.convention)
    if shape.kind is Kind.INDEX:
        return policy.Rule("*", policy.RuleAction.INDEX, freshness.index_ttl, shape.convention)
    return None


def replay(body: bytes | None) -> BodyReader | None:
    """A body reader over bytes already read (git requests are read whole to be keyed)."""
    if body is None:
        return None
    pending = [body]

    async def read() -> bytes:
        return pending.pop() if pending else b""

    return read


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
