"""Git smart-HTTP keying rules: which git requests may be answered from the cache, and under
what key (sans-IO, stdlib only).

How it works. A git fetch over smart HTTP is a ref discovery (`GET .../info/refs?service=
git-upload-pack`, or a protocol v2 `POST` carrying `command=ls-refs`) followed by one or more
`POST .../git-upload-pack` requests whose pkt-line body names the objects the client wants by
id. Ref discovery answers "where do the branches point now", so it is never fresh from a cache.
A fetch whose wants are all object ids asks for a function of the object graph, and object ids
name immutable content: the same request body gets the same pack for as long as the objects
exist. Such a fetch is `FETCH_PINNED` and is keyed on URL + `Git-Protocol` + sha256 of the
decoded body.

`classify_upload_pack` parses the body as pkt-lines (a 4-hex-digit length, then the payload;
`0000` flush, `0001` delim, `0002` response-end) and accepts only what it fully understands:

- protocol v2: one first section holding exactly one `command=` line plus capabilities, then
  for `fetch` a delim and argument lines ending in one flush. Every argument must be in
  `_FETCH_ARGS` with a valid value; `want-ref` (a ref name: the answer moves with the ref),
  `deepen-not <ref>`, sparse filters (`sparse:oid=<rev>` names a blob by expression) and any
  argument this module does not know make the request `OTHER`.
- protocol v0/v1 (no command line; the body starts with `want`): want lines (capabilities on
  the first), then shallow/deepen/filter lines, a flush, then have lines and flushes, optionally
  ending with `done`. `done` is optional, as it is for v2: a round without it (the depth round
  of a v0 shallow clone, a negotiation round) is answered from the same object graph.
- `have` lines are allowed: they are part of the hashed body, so a new have set is a new key.

Limits of "same request, same answer", accepted because they cost bytes, never correctness:
the acknowledgements of a negotiation round depend on which objects the server has, a set that
only grows, so a stored answer may acknowledge less than a fresh one and the client sends more
haves or a bigger pack arrives; `include-tag` adds tag objects that point into the pack, so a
tag made after the answer was stored is missing from it and git fetches it separately (a new
key).

Anything else, malformed or truncated framing included, is `OTHER`: classification never
raises for client input, it declines to cache.

The key leaves out what varies between clients but not between answers: the `agent=` and
`session-id=` capabilities (v2 capability lines, v0 tokens on the first want line) are removed
before hashing, so two git versions asking the same question share one entry. Every other byte
(capabilities such as `object-format`, `server-option`, `side-band-64k` included) stays in the
hash, because it can change the bytes of the answer.

Object ids are 40 (sha1) or 64 (sha256) lower-case hex digits, the spelling git sends; the
length must match the request's `object-format` capability (sha1 when absent).
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import re
import zlib
from collections.abc import Callable
from urllib.parse import parse_qs, parse_qsl

from ._errors import TranscacheError

GIT_UPLOAD_PACK_CONTENT_TYPE = "application/x-git-upload-pack-request"
UPLOAD_PACK_SERVICE = "git-upload-pack"

# A decoded request body above this is a decompression bomb, not a negotiation: real fetch
# bodies are kilobytes, megabytes for a large have set.
MAX_DECODED_BODY = 64 * 1024 * 1024
# Git's largest pkt-line (LARGE_PACKET_MAX): 65516 payload bytes plus the 4-byte length.
MAX_PKT_LEN = 65520

# Capabilities that identify the client process, not the question it asks.
_VOLATILE_CAPABILITIES = (b"agent=", b"session-id=")

_OID_LENGTH = {"sha1": 40, "sha256": 64}
_DEFAULT_OBJECT_FORMAT = "sha1"
_PKT_LENGTH = re.compile(rb"[0-9a-fA-F]{4}")
_HEX = re.compile(r"[0-9a-f]+")
_NUMBER = re.compile(r"[0-9]+")
_FULL_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# A whole path segment that is a full object id, bare or as a file name: "<sha>",
# "<sha>.tar.gz", "<sha>.zip", "<sha>.patch".
_OID_SEGMENT = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})(?:\.[A-Za-z0-9]+)*")
# Query parameters that name a revision in common forges' archive and raw-file URLs (?ref=,
# ?sha=, ?at=, ...). Other parameters are not trusted: a 40-hex value there may as well
# be a token or a session id, and calling such a URL immutable would pin a changing answer.
_REVISION_PARAMS = frozenset({"ref", "rev", "sha", "commit", "at"})


class GitBodyError(TranscacheError, ValueError):
    """A request body that cannot be decoded for keying (bad gzip, unknown coding, too big).
    The request is still forwarded as it came; it is only not cached."""


class GitRequestKind(enum.Enum):
    FETCH_PINNED = "fetch-pinned"
    """A fetch whose wants are all object ids: cacheable, immutable."""
    REF_DISCOVERY = "ref-discovery"
    """info/refs or ls-refs: always upstream; a stored copy only when upstream is unreachable."""
    OTHER = "other"
    """Anything else: forwarded, never cached."""


# --- request shapes ---------------------------------------------------------------------------


def _route(path: str) -> str:
    return path.partition("?")[0]


def is_upload_pack_post(method: str, path: str, content_type: str | None) -> bool:
    """A POST to .../git-upload-pack (query ignored) with git's upload-pack request type."""
    if method != "POST" or content_type is None:
        return False
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == GIT_UPLOAD_PACK_CONTENT_TYPE and _route(path).endswith(
        "/" + UPLOAD_PACK_SERVICE
    )


def is_ref_discovery_get(method: str, path: str) -> bool:
    """GET .../info/refs?service=git-upload-pack. receive-pack (push) discovery is not."""
    route, _, query = path.partition("?")
    if method != "GET" or not route.endswith("/info/refs"):
        return False
    return parse_qs(query, keep_blank_values=True).get("service") == [UPLOAD_PACK_SERVICE]


def commit_pinned_url(path: str) -> bool:
    """Does this request target (origin-form or absolute) name a full commit id?

    True when a whole path segment is a 40- or 64-hex id, bare or with file extensions
    (`/o/r/archive/<sha>.tar.gz`, `/o/r/raw/<sha>/setup.py`), or when a revision query
    parameter (`ref`, `rev`, `sha`, `commit`, `at`) is one. Branch and tag names, short ids
    and 32-hex (md5-sized) segments are not pins.

    A 64-hex segment may be a sha256 content hash rather than a sha256 commit (content-
    addressed artifact stores). No attempt is made to tell them apart: both name bytes that
    never change, so treating either as immutable is right. (PyPI's own file URLs split a
    blake2b digest into 2 + 2 + 60 hex digits, so they do not match and keep the index's
    own caching headers.)
    """
    route, _, query = path.partition("?")
    if any(_OID_SEGMENT.fullmatch(segment) for segment in route.split("/")):
        return True
    return any(
        name in _REVISION_PARAMS and _FULL_OID.fullmatch(value)
        for name, value in parse_qsl(query, keep_blank_values=True)
    )


# --- body decoding ----------------------------------------------------------------------------


def decode_request_body(body: bytes, content_encoding: str | None) -> bytes:
    """The body as git-upload-pack reads it. Git gzips large request bodies; nothing else is
    expected, so any other coding raises GitBodyError rather than hashing encoded bytes."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "x-gzip"):
        raise GitBodyError(f"unsupported Content-Encoding {content_encoding!r}")
    # Git writes exactly one gzip member; anything else is not a git client's body.
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        decoded = decompressor.decompress(body, MAX_DECODED_BODY + 1)
    except zlib.error as error:
        raise GitBodyError(f"bad gzip body: {error}") from error
    if len(decoded) > MAX_DECODED_BODY:
        raise GitBodyError(f"gzip body decodes to more than {MAX_DECODED_BODY} bytes")
    if not decompressor.eof:
        raise GitBodyError("truncated gzip body")
    if decompressor.unused_data:
        raise GitBodyError("data after the end of the gzip body")
    return decoded


# --- pkt-lines --------------------------------------------------------------------------------


class _Special(enum.Enum):
    FLUSH = 0
    DELIM = 1
    RESPONSE_END = 2


_Packet = bytes | _Special
_SPECIALS = {special.value: special for special in _Special}


def _split_packets(body: bytes) -> list[_Packet] | None:
    """The pkt-lines of `body` (payloads as sent), or None when the framing is broken."""
    packets: list[_Packet] = []
    position = 0
    while position < len(body):
        header = body[position : position + 4]
        if not _PKT_LENGTH.fullmatch(header):
            return None
        length = int(header, 16)
        if length in _SPECIALS:
            packets.append(_SPECIALS[length])
            position += 4
            continue
        end = position + length
        if length < 4 or length > MAX_PKT_LEN or end > len(body):
            return None
        packets.append(body[position + 4 : end])
        position = end
    return packets


def _encode_packet(packet: _Packet) -> bytes:
    if isinstance(packet, _Special):
        return b"%04x" % packet.value
    return b"%04x" % (len(packet) + 4) + packet


def _text(packet: _Packet) -> str | None:
    """A data line as text, its one optional trailing LF removed; None for special packets
    and for bytes that are not ASCII (no argument this module accepts is)."""
    if isinstance(packet, _Special):
        return None
    try:
        return packet.removesuffix(b"\n").decode("ascii")
    except UnicodeDecodeError:
        return None


def _first_section_end(packets: list[_Packet]) -> int:
    """Index of the first flush, delim or response-end (the length when there is none)."""
    return next((i for i, p in enumerate(packets) if isinstance(p, _Special)), len(packets))


def _is_v0(packets: list[_Packet]) -> bool:
    first = packets[0] if packets else None
    return isinstance(first, bytes) and first.startswith(b"want ")


# --- argument checks: (value or None for a bare word, object id length) -> acceptable? --------

_ArgCheck = Callable[[str | None, int], bool]


def _is_want(line: str | None) -> bool:
    return line is not None and line.startswith("want ")


def _flag(value: str | None, oid_length: int) -> bool:
    return value is None


def _oid(value: str | None, oid_length: int) -> bool:
    return value is not None and len(value) == oid_length and bool(_HEX.fullmatch(value))


def _number(value: str | None, oid_length: int) -> bool:
    return value is not None and bool(_NUMBER.fullmatch(value))


def _filter(value: str | None, oid_length: int) -> bool:
    # sparse:oid=<blob-ish> may be "main:.sparse", which moves with the branch.
    return value is not None and value != "" and "sparse:" not in value


def _word_list(value: str | None, oid_length: int) -> bool:
    return bool(value)


# deepen-not takes a revision; only an object id keeps the answer fixed (a ref name would not).
_SHALLOW_ARGS: dict[str, _ArgCheck] = {
    "shallow": _oid,
    "deepen": _number,
    "deepen-since": _number,
    "deepen-not": _oid,
    "filter": _filter,
}
_WANT_ARGS: dict[str, _ArgCheck] = {"want": _oid}
_HAVE_ARGS: dict[str, _ArgCheck] = {"have": _oid}
# Protocol v2 fetch arguments (gitprotocol-v2, "fetch"). want-ref is deliberately absent.
_FETCH_ARGS: dict[str, _ArgCheck] = {
    **_WANT_ARGS,
    **_HAVE_ARGS,
    **_SHALLOW_ARGS,
    "done": _flag,
    "thin-pack": _flag,
    "no-progress": _flag,
    "include-tag": _flag,
    "ofs-delta": _flag,
    "deepen-relative": _flag,
    "sideband-all": _flag,
    "wait-for-done": _flag,
    "packfile-uris": _word_list,
}


def _arg_ok(line: str | None, table: dict[str, _ArgCheck], oid_length: int) -> bool:
    if line is None:
        return False
    keyword, space, value = line.partition(" ")
    check = table.get(keyword)
    return check is not None and check(value if space else None, oid_length)


def _oid_length(object_format: str | None) -> int | None:
    """Hex digits in an object id of this format (sha1 when absent); None when unknown."""
    return _OID_LENGTH.get(_DEFAULT_OBJECT_FORMAT if object_format is None else object_format)


# --- classification ---------------------------------------------------------------------------


def classify_upload_pack(decoded_body: bytes) -> GitRequestKind:
    """What a decoded git-upload-pack request body asks for (see the module comment)."""
    packets = _split_packets(decoded_body)
    if not packets:
        return GitRequestKind.OTHER
    if _is_v0(packets):
        return GitRequestKind.FETCH_PINNED if _v0_fetch_ok(packets) else GitRequestKind.OTHER
    return _classify_v2(packets)


def _classify_v2(packets: list[_Packet]) -> GitRequestKind:
    # The first section runs to the first delim or flush; git's server takes the command line
    # anywhere in it, among the capabilities.
    end = _first_section_end(packets)
    lines = [_text(packet) for packet in packets[:end]]
    commands = [line for line in lines if line is not None and line.startswith("command=")]
    if end == len(packets) or len(commands) != 1 or None in lines:
        return GitRequestKind.OTHER
    command = commands[0].removeprefix("command=")
    terminator, rest = packets[end], packets[end + 1 :]
    if command == "ls-refs":
        # Its arguments (ref prefixes) may be any bytes; only the framing is checked.
        well_formed = (terminator is _Special.FLUSH and not rest) or (
            terminator is _Special.DELIM and rest[-1:] == [_Special.FLUSH]
        )
        shape_ok = well_formed and all(isinstance(p, bytes) for p in rest[:-1])
        return GitRequestKind.REF_DISCOVERY if shape_ok else GitRequestKind.OTHER
    if command != "fetch" or terminator is not _Special.DELIM or rest[-1:] != [_Special.FLUSH]:
        return GitRequestKind.OTHER
    object_formats = [
        line.removeprefix("object-format=")
        for line in lines
        if line is not None and line.startswith("object-format=")
    ]
    oid_length = _oid_length(object_formats[0] if object_formats else None)
    args = [_text(packet) for packet in rest[:-1]]
    if (
        oid_length is None
        or len(object_formats) > 1
        or not any(_is_want(arg) for arg in args)
        or not all(_arg_ok(arg, _FETCH_ARGS, oid_length) for arg in args)
    ):
        return GitRequestKind.OTHER
    return GitRequestKind.FETCH_PINNED


def _v0_fetch_ok(packets: list[_Packet]) -> bool:
    """want lines (capabilities on the first), shallow/deepen/filter lines, flush, then have
    lines and flushes, optionally ending in `done`."""
    first = _text(packets[0])
    if first is None:
        return False
    _, oid, *capabilities = first.split(" ")
    object_format = next(
        (c.removeprefix("object-format=") for c in capabilities if c.startswith("object-format=")),
        None,
    )
    oid_length = _oid_length(object_format)
    if oid_length is None or not _oid(oid, oid_length):
        return False
    try:
        flush = packets.index(_Special.FLUSH)
    except ValueError:
        return False
    state = [_text(packet) for packet in packets[1:flush]]
    wants = sum(1 for _ in itertools.takewhile(_is_want, state))
    if not all(_arg_ok(line, _WANT_ARGS, oid_length) for line in state[:wants]) or not all(
        _arg_ok(line, _SHALLOW_ARGS, oid_length) for line in state[wants:]
    ):
        return False
    negotiation = packets[flush + 1 :]
    if negotiation and _text(negotiation[-1]) == "done":
        negotiation = negotiation[:-1]
    return all(
        packet is _Special.FLUSH or _arg_ok(_text(packet), _HAVE_ARGS, oid_length)
        for packet in negotiation
    )


# --- keys -------------------------------------------------------------------------------------


def _without_volatile_capabilities(decoded_body: bytes) -> bytes:
    """The body with agent= and session-id= removed (v2 capability lines, tokens on the first
    v0 want line); bodies that are not pkt-lines come back unchanged."""
    packets = _split_packets(decoded_body)
    if not packets:
        return decoded_body
    if _is_v0(packets):
        first = packets[0]
        assert isinstance(first, bytes)
        line, newline = first.removesuffix(b"\n"), first[len(first.removesuffix(b"\n")) :]
        kept = [token for token in line.split(b" ") if not token.startswith(_VOLATILE_CAPABILITIES)]
        packets[0] = b" ".join(kept) + newline
    else:
        end = _first_section_end(packets)
        packets = [
            packet
            for i, packet in enumerate(packets)
            if i >= end
            or not (isinstance(packet, bytes) and packet.startswith(_VOLATILE_CAPABILITIES))
        ]
    return b"".join(_encode_packet(packet) for packet in packets)


def pack_cache_key(url: str, git_protocol: str | None, decoded_body: bytes) -> str:
    """The cache key of an upload-pack POST: readable, the store hashes it again. The body hash
    covers the request without the client's agent= and session-id= capabilities."""
    digest = hashlib.sha256(_without_volatile_capabilities(decoded_body)).hexdigest()
    return f"{UPLOAD_PACK_SERVICE} {url}\n{git_protocol or ''}\n{digest}"
