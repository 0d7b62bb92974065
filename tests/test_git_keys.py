"""Git smart-HTTP keying rules (pure): which git requests are cacheable and under what key.

Hand-built pkt-line bodies cover the grammar; bodies captured from the real git on this
machine (clones and fetches against `git http-backend` on a loopback origin, recorded before
the CGI sees them) show that what git actually sends is classified and keyed as intended.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import pytest

from transcache import _git
from transcache._git import (
    GIT_UPLOAD_PACK_CONTENT_TYPE,
    GitBodyError,
    GitRequestKind,
    classify_upload_pack,
    commit_pinned_url,
    decode_request_body,
    is_ref_discovery_get,
    is_upload_pack_post,
    pack_cache_key,
)

from .gitrepo import commit_file, git_env, make_repo, run_git
from .origin import Exchange, Origin

OID = hashlib.sha1(b"one").hexdigest()
OID2 = hashlib.sha1(b"two").hexdigest()
OID3 = hashlib.sha1(b"three").hexdigest()
OID256 = hashlib.sha256(b"one").hexdigest()
URL = "https://git.test/owner/pkg.git/git-upload-pack"
FETCH, LS_REFS, OTHER = (
    GitRequestKind.FETCH_PINNED,
    GitRequestKind.REF_DISCOVERY,
    GitRequestKind.OTHER,
)

# --- building request bodies by hand ----------------------------------------------------------

FLUSH, DELIM, RESPONSE_END = b"0000", b"0001", b"0002"
AGENT = "agent=git/2.39.5"
V2_CAPS = (AGENT, "object-format=sha1")
V0_CAPS = "multi_ack_detailed no-done side-band-64k thin-pack ofs-delta agent=git/2.39.5"


def pkt(line: str | bytes) -> bytes:
    data = line.encode() if isinstance(line, str) else line
    return b"%04x" % (len(data) + 4) + data


def v2_request(command: str, caps: Sequence[str], args: Sequence[str] | None) -> bytes:
    """Shaped like git 2.39's: no LF on the command and capability lines, LF on arguments."""
    head = pkt(f"command={command}") + b"".join(pkt(cap) for cap in caps)
    if args is None:
        return head + FLUSH
    return head + DELIM + b"".join(pkt(arg + "\n") for arg in args) + FLUSH


def v2_fetch(*args: str, caps: Sequence[str] = V2_CAPS) -> bytes:
    return v2_request("fetch", caps, args)


def v0_fetch(
    *state: str, caps: str = V0_CAPS, haves: Sequence[str] = (), done: bool = True
) -> bytes:
    """want/shallow/deepen lines (the first carries `caps`), flush, haves, optional done."""
    first, *rest = state
    body = pkt(f"{first} {caps}\n" if caps else f"{first}\n")
    body += b"".join(pkt(line + "\n") for line in rest) + FLUSH
    body += b"".join(pkt(f"have {have}\n") for have in haves)
    return body + (pkt("done\n") if done else b"")


# --- capturing what real git sends ------------------------------------------------------------


class Captured(NamedTuple):
    method: str
    target: str
    headers: dict[str, str]
    body: bytes  # as sent: still gzip-encoded when git compressed it

    @property
    def decoded(self) -> bytes:
        return decode_request_body(self.body, self.headers.get("content-encoding"))


class _Replay(Exchange):
    """The exchange as the git CGI route sees it, with a body that was already read.

    Deliberately does not call Exchange.__init__ (that would read the request again): it takes
    the request head from the original and sends the response through it."""

    def __init__(self, original: Exchange, body: bytes) -> None:
        self.method = original.method
        self.target = original.target
        self.path = original.path
        self.query = original.query
        self.headers = original.headers
        self.client_address = original.client_address
        self._original = original
        self._replayed = body

    def body_chunks(self) -> Iterator[bytes]:
        return iter([self._replayed])

    def start(self, status: int, headers: Mapping[str, str] | None, *, length: int | None) -> None:
        self._original.start(status, headers, length=length)

    def write(self, data: bytes | memoryview) -> None:
        self._original.write(data)


class RealGit:
    """git commands run against a loopback `git http-backend`; each run's requests are kept
    under its label."""

    def __init__(self, origin: Origin, root: Path) -> None:
        self.root = root
        self.runs: dict[str, list[Captured]] = {}
        self._label = ""
        git_route = origin.route_for("/git/")
        assert git_route is not None

        def record_then_serve(exchange: Exchange) -> None:
            body = b"".join(exchange.body_chunks())
            self.runs[self._label].append(
                Captured(exchange.method, exchange.target, exchange.headers, body)
            )
            git_route(_Replay(exchange, body))

        origin.add_route("/git/", record_then_serve, prefix=True)

    def run(self, label: str, *args: str, cwd: Path, agent: str | None = None) -> None:
        self._label = label
        self.runs[label] = []
        env = git_env(self.root / "home", {"GIT_USER_AGENT": agent} if agent else None)
        run_git(*args, cwd=cwd, env=env)

    def posts(self, label: str) -> list[Captured]:
        return [request for request in self.runs[label] if request.method == "POST"]

    def pack_request(self, label: str) -> Captured:
        """The last POST of a run: the one that receives the pack."""
        return self.posts(label)[-1]


@pytest.fixture(scope="module")
def real_git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealGit]:
    root = tmp_path_factory.mktemp("git-bodies")
    (root / "home").mkdir()
    env = git_env(root / "home")
    bare, head = make_repo(root / "repos", "pkg.git", commits=3)
    # Thirty annotated tags make a clone's want list long enough for git to gzip the body.
    tagged, tagged_head = make_repo(root / "repos", "tagged.git", commits=1)
    for number in range(30):
        run_git("tag", "-a", f"v{number}", "-m", f"v{number}", tagged_head, cwd=tagged, env=env)
    run_git("config", "transfer.advertiseSID", "true", cwd=tagged, env=env)

    with Origin.start() as origin:
        origin.add_git("/git", root / "repos")
        git = RealGit(origin, root)
        url = origin.url("127.0.0.1", "/git/pkg.git")
        tagged_url = origin.url("127.0.0.1", "/git/tagged.git")
        v2, v0 = ("-c", "protocol.version=2"), ("-c", "protocol.version=0")
        git.run("v2 clone", *v2, "clone", "-q", url, "v2", cwd=root)
        git.run("v2 clone, other agent", *v2, "clone", "-q", url, "v2b", cwd=root, agent="x/1")
        git.run("v2 clone --depth 1", *v2, "clone", "-q", "--depth", "1", url, "v2d", cwd=root)
        run_git("init", "-q", "empty", cwd=root, env=env)
        git.run("v2 fetch <sha>", *v2, "fetch", "-q", url, head, cwd=root / "empty")
        git.run("v0 clone", *v0, "clone", "-q", url, "v0", cwd=root)
        git.run("v0 clone, other agent", *v0, "clone", "-q", url, "v0b", cwd=root, agent="x/1")
        git.run("v0 clone --depth 1", *v0, "clone", "-q", "--depth", "1", url, "v0d", cwd=root)
        sid = ("-c", "transfer.advertiseSID=true")
        git.run("gzip, session a", *v2, *sid, "clone", "-q", tagged_url, "ta", cwd=root)
        git.run("gzip, session b", *v2, *sid, "clone", "-q", tagged_url, "tb", cwd=root)
        # Upstream moves on; the existing clone fetches with its commits as haves.
        run_git("clone", "-q", str(bare), "work", cwd=root, env=env)
        commit_file(root / "work", "new.txt", b"new\n", "Add new", env)
        run_git("push", "-q", "origin", "main", cwd=root / "work", env=env)
        git.run("v2 incremental fetch", *v2, "fetch", "-q", cwd=root / "v2")
        git.run("v0 incremental fetch", *v0, "fetch", "-q", cwd=root / "v0")
        yield git
    assert not origin.errors, origin.errors


# --- what real git sends ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "label",
    [
        "v2 clone",
        "v2 clone --depth 1",
        "v2 fetch <sha>",
        "v0 clone",
        "v2 incremental fetch",
        "v0 incremental fetch",
    ],
)
def test_real_git_pack_request_is_a_pinned_fetch(real_git: RealGit, label: str) -> None:
    assert classify_upload_pack(real_git.pack_request(label).decoded) is FETCH


def test_real_v0_shallow_clone_rounds_are_both_pinned_fetches(real_git: RealGit) -> None:
    depth_round, pack_round = real_git.posts("v0 clone --depth 1")
    assert depth_round.decoded.endswith(FLUSH)  # no "done": the server answers shallow lines
    assert classify_upload_pack(depth_round.decoded) is FETCH
    assert classify_upload_pack(pack_round.decoded) is FETCH


def test_real_incremental_fetch_sends_haves(real_git: RealGit) -> None:
    for label in ("v2 incremental fetch", "v0 incremental fetch"):
        assert b"have " in real_git.pack_request(label).decoded


@pytest.mark.parametrize("label", ["v2 clone", "v2 clone --depth 1", "v2 fetch <sha>"])
def test_real_v2_ls_refs_is_ref_discovery(real_git: RealGit, label: str) -> None:
    ls_refs = real_git.posts(label)[0]
    assert b"command=ls-refs" in ls_refs.decoded
    assert classify_upload_pack(ls_refs.decoded) is LS_REFS


def test_real_git_requests_are_recognised_by_method_path_and_type(real_git: RealGit) -> None:
    requests = [request for run in real_git.runs.values() for request in run]
    for request in requests:
        if request.method == "POST":
            content_type = request.headers.get("content-type")
            assert is_upload_pack_post(request.method, request.target, content_type), request
        else:
            assert is_ref_discovery_get(request.method, request.target), request


def test_real_gzip_body_decodes_to_a_pinned_fetch(real_git: RealGit) -> None:
    request = real_git.pack_request("gzip, session a")
    assert request.headers.get("content-encoding") == "gzip"
    assert classify_upload_pack(request.decoded) is FETCH


@pytest.mark.parametrize("version", ["v2", "v0"])
def test_two_git_agents_share_one_key(real_git: RealGit, version: str) -> None:
    default = real_git.pack_request(f"{version} clone")
    other = real_git.pack_request(f"{version} clone, other agent")
    assert b"agent=x/1" in other.decoded
    assert default.decoded != other.decoded
    protocol = default.headers.get("git-protocol")
    assert protocol == other.headers.get("git-protocol")
    assert pack_cache_key(URL, protocol, default.decoded) == pack_cache_key(
        URL, protocol, other.decoded
    )


def test_session_ids_do_not_enter_the_key(real_git: RealGit) -> None:
    first = real_git.pack_request("gzip, session a")
    second = real_git.pack_request("gzip, session b")
    assert b"session-id=" in first.decoded
    assert first.decoded != second.decoded
    protocol = first.headers.get("git-protocol")
    assert pack_cache_key(URL, protocol, first.decoded) == pack_cache_key(
        URL, protocol, second.decoded
    )


def test_a_new_have_set_is_a_new_key(real_git: RealGit) -> None:
    clone = real_git.pack_request("v2 clone")
    fetch = real_git.pack_request("v2 incremental fetch")
    protocol = clone.headers.get("git-protocol")
    assert pack_cache_key(URL, protocol, clone.decoded) != pack_cache_key(
        URL, protocol, fetch.decoded
    )


def test_no_prefix_of_a_real_v2_fetch_is_cacheable(real_git: RealGit) -> None:
    body = real_git.pack_request("v2 clone").decoded
    for end in range(len(body)):
        assert classify_upload_pack(body[:end]) is OTHER, body[:end]


@pytest.mark.parametrize("label", ["v0 clone", "v2 incremental fetch", "gzip, session a"])
def test_classification_never_raises_on_any_prefix(real_git: RealGit, label: str) -> None:
    body = real_git.pack_request(label).decoded
    for end in range(len(body)):
        classify_upload_pack(body[:end])


# --- classification: hand-built protocol v2 ----------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        v2_fetch(f"want {OID}", "done"),
        v2_fetch(f"want {OID}", f"want {OID2}", "thin-pack", "no-progress", "ofs-delta", "done"),
        v2_fetch(f"want {OID}", f"have {OID2}", f"have {OID3}"),  # a negotiation round
        v2_fetch(f"want {OID}", f"have {OID2}", "done"),
        v2_fetch("deepen 1", f"want {OID}", "done"),
        v2_fetch(f"want {OID}", f"shallow {OID2}", "deepen 3", "deepen-relative", "done"),
        v2_fetch(f"want {OID}", "deepen-since 1700000000", "done"),
        v2_fetch(f"want {OID}", f"deepen-not {OID2}", "done"),
        v2_fetch(f"want {OID}", "filter blob:none", "done"),
        v2_fetch(f"want {OID}", "filter tree:0", "include-tag", "done"),
        v2_fetch(f"want {OID}", "sideband-all", "wait-for-done", "done"),
        v2_fetch(f"want {OID}", "packfile-uris https", "done"),
        v2_fetch(f"want {OID256}", "done", caps=(AGENT, "object-format=sha256")),
        v2_fetch(f"want {OID}", "done", caps=()),
        v2_fetch(f"want {OID}", "done", caps=(AGENT, "server-option=x", "session-id=abc")),
        # git's server takes the command line anywhere in the first section.
        pkt(AGENT) + pkt("command=fetch\n") + DELIM + pkt(f"want {OID}\n") + FLUSH,
    ],
)
def test_v2_fetch_of_object_ids_is_pinned(body: bytes) -> None:
    assert classify_upload_pack(body) is FETCH


@pytest.mark.parametrize(
    "body",
    [
        v2_request("ls-refs", V2_CAPS, ["peel", "symrefs", "ref-prefix refs/heads/"]),
        v2_request("ls-refs", V2_CAPS, ["ref-prefix refs/heads/caf\u00e9"]),
        v2_request("ls-refs", V2_CAPS, None),
    ],
)
def test_v2_ls_refs_is_ref_discovery(body: bytes) -> None:
    assert classify_upload_pack(body) is LS_REFS


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(v2_fetch("want-ref refs/heads/main", "done"), id="want-ref"),
        pytest.param(v2_fetch(f"want {OID}", "want-ref refs/heads/main"), id="oid and want-ref"),
        pytest.param(v2_fetch("done"), id="no wants"),
        pytest.param(v2_fetch(f"want {OID[:12]}", "done"), id="short oid"),
        pytest.param(v2_fetch(f"want {OID.upper()}", "done"), id="upper-case oid"),
        pytest.param(v2_fetch("want main", "done"), id="branch name"),
        pytest.param(v2_fetch(f"want {OID256}", "done"), id="sha256 oid in a sha1 request"),
        pytest.param(
            v2_fetch(f"want {OID}", caps=("object-format=sha256",)), id="sha1 oid, sha256 repo"
        ),
        pytest.param(
            v2_fetch(f"want {OID}", caps=("object-format=sha1", "object-format=sha256")),
            id="two object formats",
        ),
        pytest.param(v2_fetch(f"want {OID}", caps=("object-format=md5",)), id="unknown format"),
        pytest.param(v2_fetch(f"want {OID}", "deepen-not main"), id="deepen-not ref"),
        pytest.param(v2_fetch(f"want {OID}", "deepen one"), id="deepen not a number"),
        pytest.param(v2_fetch(f"want {OID}", "filter sparse:oid=main:.sparse"), id="sparse"),
        pytest.param(v2_fetch(f"want {OID}", "filter"), id="filter without spec"),
        pytest.param(v2_fetch(f"want {OID}", "done now"), id="flag with a value"),
        pytest.param(v2_fetch(f"want {OID}", "future-arg"), id="unknown argument"),
        pytest.param(v2_fetch(f"want {OID}", f"have {OID2} extra"), id="have with extra"),
        pytest.param(v2_request("object-info", V2_CAPS, ["size", f"oid {OID}"]), id="object-info"),
        pytest.param(v2_request("fetch", V2_CAPS, None), id="fetch without args"),
        pytest.param(
            pkt("command=fetch\ncommand=fetch\n") + DELIM + pkt(f"want {OID}\n") + FLUSH,
            id="command and garbage in one line",
        ),
        pytest.param(
            pkt("command=fetch") + pkt("command=ls-refs") + DELIM + pkt(f"want {OID}") + FLUSH,
            id="two commands",
        ),
        pytest.param(pkt(AGENT) + DELIM + pkt(f"want {OID}\n") + FLUSH, id="no command"),
        pytest.param(v2_fetch(f"want {OID}")[: -len(FLUSH)], id="no final flush"),
        pytest.param(v2_fetch(f"want {OID}") + FLUSH, id="two flushes"),
        pytest.param(v2_fetch(f"want {OID}") + pkt("done\n"), id="data after the flush"),
        pytest.param(v2_fetch(f"want {OID}")[: -len(FLUSH)] + DELIM + FLUSH, id="second delim"),
        pytest.param(v2_fetch(f"want {OID}")[: -len(FLUSH)] + RESPONSE_END, id="response-end"),
        pytest.param(v2_request("ls-refs", V2_CAPS, ["peel"])[: -len(FLUSH)], id="ls-refs cut"),
        pytest.param(pkt("command=fetch") + pkt(b"agent=\xff") + DELIM + FLUSH, id="not ascii"),
    ],
)
def test_v2_requests_that_are_not_pinned_are_other(body: bytes) -> None:
    assert classify_upload_pack(body) is OTHER


# --- classification: hand-built protocol v0/v1 -------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        v0_fetch(f"want {OID}"),
        v0_fetch(f"want {OID}", caps=""),
        v0_fetch(f"want {OID}", f"want {OID2}", haves=[OID3]),
        v0_fetch(f"want {OID}", "deepen 1", done=False),  # the depth round of a shallow clone
        v0_fetch(f"want {OID}", f"shallow {OID2}", "deepen 1", "filter blob:none"),
        v0_fetch(f"want {OID}", "deepen-since 1700000000", f"deepen-not {OID2}"),
        v0_fetch(f"want {OID}", haves=[OID2, OID3], done=False),  # a negotiation round
        v0_fetch(f"want {OID}", haves=[OID2]).replace(pkt("done\n"), FLUSH + pkt("done\n")),
        v0_fetch(f"want {OID256}", caps="ofs-delta object-format=sha256"),
    ],
)
def test_v0_want_negotiation_of_object_ids_is_pinned(body: bytes) -> None:
    assert classify_upload_pack(body) is FETCH


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(v0_fetch("want main"), id="branch name"),
        pytest.param(v0_fetch(f"want {OID[:7]}"), id="short oid"),
        pytest.param(v0_fetch(f"want {OID}", "want refs/heads/main"), id="second want a ref"),
        pytest.param(v0_fetch(f"want {OID256}"), id="sha256 oid in a sha1 request"),
        pytest.param(v0_fetch(f"want {OID}", caps="object-format=sha256"), id="sha1 in sha256"),
        pytest.param(v0_fetch(f"want {OID}", "deepen 1", f"want {OID2}"), id="want after deepen"),
        pytest.param(v0_fetch(f"want {OID}", "deepen-not main"), id="deepen-not ref"),
        pytest.param(v0_fetch(f"want {OID}", "filter sparse:oid=main:x"), id="sparse filter"),
        pytest.param(v0_fetch(f"want {OID}", f"have {OID2}"), id="have before the flush"),
        pytest.param(v0_fetch(f"want {OID}", haves=["main"]), id="have a ref"),
        pytest.param(v0_fetch(f"want {OID}", done=False)[: -len(FLUSH)], id="no flush"),
        pytest.param(v0_fetch(f"want {OID}") + pkt(f"have {OID2}\n"), id="data after done"),
        pytest.param(v0_fetch(f"want {OID}") + pkt("done\n"), id="two dones"),
        pytest.param(v0_fetch(f"want {OID}", done=False) + DELIM, id="delim"),
        pytest.param(v0_fetch(f"want {OID}", done=False) + pkt("deepen 2\n"), id="deepen late"),
    ],
)
def test_v0_requests_that_are_not_pinned_are_other(body: bytes) -> None:
    assert classify_upload_pack(body) is OTHER


# --- classification: broken framing ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(FLUSH, id="flush only"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="not pkt-lines"),
        pytest.param(b"00", id="short length"),
        pytest.param(b"0003", id="length 3"),
        pytest.param(b"zz10command=fetch", id="non-hex length"),
        pytest.param(b"+00dcommand=fetch", id="signed length"),
        pytest.param(b"0x0dcommand=fetch", id="0x length"),
        pytest.param(b"0050command=fetch", id="length past the end"),
        pytest.param(b"fff5" + b"x" * 0xFFF1, id="longer than git allows"),
        pytest.param(pkt(f"want {OID}\n")[:-3], id="payload cut"),
        pytest.param(b"\x00" * 64, id="nul bytes"),
    ],
)
def test_broken_framing_is_other(body: bytes) -> None:
    assert classify_upload_pack(body) is OTHER


# --- body decoding -----------------------------------------------------------------------------

BODY = v2_fetch(f"want {OID}", "done")


@pytest.mark.parametrize("coding", [None, "", "identity", " Identity "])
def test_identity_bodies_are_returned_unchanged(coding: str | None) -> None:
    assert decode_request_body(BODY, coding) == BODY


@pytest.mark.parametrize("coding", ["gzip", "GZIP", " gzip ", "x-gzip"])
def test_gzip_bodies_are_decoded(coding: str) -> None:
    assert decode_request_body(gzip.compress(BODY), coding) == BODY


@pytest.mark.parametrize(
    ("body", "coding"),
    [
        pytest.param(BODY, "gzip", id="not gzip"),
        pytest.param(gzip.compress(BODY)[:-6], "gzip", id="truncated"),
        pytest.param(b"", "gzip", id="empty"),
        pytest.param(gzip.compress(BODY) + b"junk", "gzip", id="data after the member"),
        pytest.param(gzip.compress(BODY), "br", id="unsupported coding"),
        pytest.param(gzip.compress(BODY), "gzip, gzip", id="coding list"),
    ],
)
def test_undecodable_bodies_raise_git_body_error(body: bytes, coding: str) -> None:
    with pytest.raises(GitBodyError):
        decode_request_body(body, coding)


def test_git_body_error_is_a_value_error() -> None:
    assert issubclass(GitBodyError, ValueError)


def test_a_gzip_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_git, "MAX_DECODED_BODY", 1000)
    assert decode_request_body(gzip.compress(b"0" * 1000), "gzip") == b"0" * 1000
    with pytest.raises(GitBodyError, match="more than 1000 bytes"):
        decode_request_body(gzip.compress(b"0" * 1001), "gzip")


# --- keys --------------------------------------------------------------------------------------


def test_key_is_readable_url_protocol_and_body_hash() -> None:
    body = v2_fetch(f"want {OID}", "done", caps=("object-format=sha1",))
    digest = hashlib.sha256(body).hexdigest()
    assert pack_cache_key(URL, "version=2", body) == (f"git-upload-pack {URL}\nversion=2\n{digest}")
    assert pack_cache_key(URL, None, body) == f"git-upload-pack {URL}\n\n{digest}"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(
            v2_fetch(f"want {OID}", "done", caps=("agent=git/2.39.5", "object-format=sha1")),
            v2_fetch(f"want {OID}", "done", caps=("agent=git/2.47.0", "object-format=sha1")),
            id="v2 agent",
        ),
        pytest.param(
            v2_fetch(f"want {OID}", "done", caps=("object-format=sha1",)),
            v2_fetch(f"want {OID}", "done", caps=(AGENT, "session-id=s1", "object-format=sha1")),
            id="v2 agent and session-id absent or present",
        ),
        pytest.param(
            v0_fetch(f"want {OID}", caps="ofs-delta agent=git/2.39.5"),
            v0_fetch(f"want {OID}", caps="ofs-delta agent=git/2.47.0 session-id=s2"),
            id="v0 agent and session-id",
        ),
    ],
)
def test_client_identity_does_not_enter_the_key(first: bytes, second: bytes) -> None:
    assert pack_cache_key(URL, "version=2", first) == pack_cache_key(URL, "version=2", second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(
            v2_fetch(f"want {OID}", f"have {OID2}", "done"),
            v2_fetch(f"want {OID}", f"have {OID3}", "done"),
            id="have set",
        ),
        pytest.param(v2_fetch(f"want {OID}", "done"), v2_fetch(f"want {OID2}", "done"), id="want"),
        pytest.param(
            v2_fetch(f"want {OID}", "done"), v2_fetch(f"want {OID}", "deepen 1", "done"), id="depth"
        ),
        pytest.param(
            v2_fetch(f"want {OID}", "done", caps=(AGENT,)),
            v2_fetch(f"want {OID}", "done", caps=(AGENT, "server-option=x")),
            id="server option",
        ),
        pytest.param(
            v0_fetch(f"want {OID}", caps="side-band-64k ofs-delta"),
            v0_fetch(f"want {OID}", caps="side-band ofs-delta"),
            id="v0 capabilities that shape the answer",
        ),
        pytest.param(
            v2_fetch(f"want {OID}", "filter blob:none"),
            v2_fetch(f"want {OID}", "filter blob:limit=1"),
            id="filter",
        ),
    ],
)
def test_requests_that_can_be_answered_differently_have_different_keys(
    first: bytes, second: bytes
) -> None:
    assert pack_cache_key(URL, "version=2", first) != pack_cache_key(URL, "version=2", second)


def test_url_and_git_protocol_are_part_of_the_key() -> None:
    keys = {
        pack_cache_key(URL, "version=2", BODY),
        pack_cache_key(URL.replace("pkg.git", "other.git"), "version=2", BODY),
        pack_cache_key(URL, "version=1", BODY),
        pack_cache_key(URL, None, BODY),
    }
    assert len(keys) == 4


def test_unparseable_bodies_are_keyed_on_their_bytes() -> None:
    body = b"not pkt-lines agent=x"
    assert pack_cache_key(URL, None, body).endswith(hashlib.sha256(body).hexdigest())


# --- request shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "content_type", "expected"),
    [
        ("POST", "/owner/pkg.git/git-upload-pack", GIT_UPLOAD_PACK_CONTENT_TYPE, True),
        ("POST", "/pkg/git-upload-pack?x=1", GIT_UPLOAD_PACK_CONTENT_TYPE, True),
        ("POST", "/pkg/git-upload-pack", "Application/X-Git-Upload-Pack-Request; x=y", True),
        ("POST", "https://git.test/pkg/git-upload-pack", GIT_UPLOAD_PACK_CONTENT_TYPE, True),
        ("POST", "/pkg/git-upload-pack", None, False),
        ("POST", "/pkg/git-upload-pack", "application/octet-stream", False),
        ("POST", "/pkg/git-receive-pack", "application/x-git-receive-pack-request", False),
        ("POST", "/pkg/git-receive-pack", GIT_UPLOAD_PACK_CONTENT_TYPE, False),
        ("POST", "/pkg/git-upload-pack/x", GIT_UPLOAD_PACK_CONTENT_TYPE, False),
        ("POST", "/pkg/not-git-upload-pack", GIT_UPLOAD_PACK_CONTENT_TYPE, False),
        ("POST", "/x?next=/git-upload-pack", GIT_UPLOAD_PACK_CONTENT_TYPE, False),
        ("GET", "/pkg/git-upload-pack", GIT_UPLOAD_PACK_CONTENT_TYPE, False),
        ("PUT", "/pkg/git-upload-pack", GIT_UPLOAD_PACK_CONTENT_TYPE, False),
    ],
)
def test_upload_pack_post_is_recognised(
    method: str, path: str, content_type: str | None, expected: bool
) -> None:
    assert is_upload_pack_post(method, path, content_type) is expected


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/owner/pkg.git/info/refs?service=git-upload-pack", True),
        ("GET", "/pkg/info/refs?foo=1&service=git-upload-pack", True),
        ("GET", "https://git.test/pkg/info/refs?service=git-upload-pack", True),
        ("GET", "/pkg/info/refs?service=git-receive-pack", False),  # push: never cached
        ("GET", "/pkg/info/refs", False),  # dumb HTTP
        ("GET", "/pkg/info/refs?service=git-upload-pack-x", False),
        ("GET", "/pkg/info/refs?service=Git-Upload-Pack", False),
        ("GET", "/pkg/info/refs?service=git-upload-pack&service=git-receive-pack", False),
        ("GET", "/pkg/info/refs/x?service=git-upload-pack", False),
        ("GET", "/pkg/info/refsx?service=git-upload-pack", False),
        ("HEAD", "/pkg/info/refs?service=git-upload-pack", False),
        ("POST", "/pkg/info/refs?service=git-upload-pack", False),
    ],
)
def test_ref_discovery_get_is_recognised(method: str, path: str, expected: bool) -> None:
    assert is_ref_discovery_get(method, path) is expected


SHA1 = "0123456789abcdef0123456789abcdef01234567"
SHA256 = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/owner/repo/archive/{SHA1}.tar.gz", True),
        (f"/owner/repo/archive/{SHA1}.zip", True),
        (f"/owner/repo/raw/{SHA1}/setup.py", True),
        (f"/owner/repo/{SHA1}/pyproject.toml", True),
        (f"/owner/repo/tar.gz/{SHA1}", True),
        (f"/{SHA1}/", True),
        (f"/owner/repo/-/archive/{SHA1}/repo-{SHA1}.tar.gz", True),
        (f"https://files.test/owner/repo/archive/{SHA1}.tar.gz", True),
        (f"/owner/repo/commit/{SHA1}.patch", True),
        (f"/api/repos/owner/repo/contents/file.txt?ref={SHA1}", True),
        (f"/api/v4/projects/1/repository/archive?sha={SHA1}", True),
        (f"/projects/p/repos/r/raw/file?at={SHA1}", True),
        # 64 hex: a sha256 commit, or a sha256 content hash; both name bytes that never change.
        (f"/owner/repo/archive/{SHA256}.tar.gz", True),
        (f"/packages/ab/cd/{SHA256}/pkg-1.0-py3-none-any.whl", True),
        # PyPI's real file URLs split a 64-hex blake2b digest 2 + 2 + 60: not a commit id.
        (f"/packages/01/23/{SHA256[4:]}/pkg-1.0-py3-none-any.whl", False),
        ("/owner/repo/archive/main.tar.gz", False),
        ("/owner/repo/archive/refs/tags/v1.0.tar.gz", False),
        ("/owner/repo/raw/main/setup.py", False),
        (f"/owner/repo/archive/{SHA1[:7]}.tar.gz", False),  # short id: may become ambiguous
        (f"/owner/repo/archive/{SHA1[:32]}.tar.gz", False),  # md5-sized
        (f"/owner/repo/archive/{SHA1}0.tar.gz", False),  # 41 hex
        (f"/owner/repo/archive/{SHA1.upper()}.tar.gz", False),
        (f"/owner/repo/archive/v{SHA1}.tar.gz", False),
        (f"/owner/repo/archive/{SHA1}-dirty.tar.gz", False),
        (f"/owner/repo/archive/{SHA1}..tar.gz", False),
        ("/owner/repo/contents/file.txt?ref=main", False),
        (f"/user/repos?access_token={SHA1}", False),  # a 40-hex token is not a pin
        (f"/download?file={SHA1}", False),
        ("/", False),
        ("", False),
    ],
)
def test_commit_pinned_url(path: str, expected: bool) -> None:
    assert commit_pinned_url(path) is expected
