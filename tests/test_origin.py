"""The test origins work on their own: real clients (curl, pip, uv, git) talk to them directly,
with no proxy in between, over TLS from the test CA (fixtures `origin`, `origin_ca`,
`origin_ca_pem`, `plain_origin` and `home` come from conftest.py)."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import ssl
import sys
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest
import trustme
import uv

from . import clients
from .gitrepo import commit_file, git_env, make_repo, run_git
from .origin import Origin, client_env, issue_origin_cert, issue_untrusted_cert, pattern
from .packages import JSON_V1_TYPE, build_wheel, make_index

MiB = 1024 * 1024
GiB = 1024 * MiB
CURLE_PEER_FAILED_VERIFICATION = 60


def curl(origin: Origin, ca_pem: Path, home: Path, *args: str) -> str:
    """curl with files.test resolved to `origin` and only the test CA trusted; its stdout."""
    return clients.curl(
        client_env(home),
        "--fail",
        "--resolve",
        f"files.test:{origin.port}:127.0.0.1",
        "--cacert",
        str(ca_pem),
        *args,
    ).stdout


def request(
    origin: Origin,
    ca: trustme.CA,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; returns status, headers (lower-case names), body."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    connection = http.client.HTTPSConnection("127.0.0.1", origin.port, context=context)
    try:
        connection.request(method, path, headers=dict(headers or {}))
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


# --- static files ----------------------------------------------------------------------------


def test_curl_gets_a_static_file_with_length_and_validators(
    origin: Origin, origin_ca_pem: Path, home: Path
) -> None:
    origin.add_file("/hello.txt", b"hello, world\n", content_type="text/plain")

    output = curl(origin, origin_ca_pem, home, "--include", origin.url("files.test", "/hello.txt"))

    head, _, body = output.partition("\n\n")  # text mode: CRLF arrives as LF
    assert body == "hello, world\n"
    assert head.startswith("HTTP/1.1 200 OK")
    for field in ("Content-Length: 13", "Content-Type: text/plain", "ETag: ", "Last-Modified: "):
        assert field in head
    assert [(r.method, r.path) for r in origin.requests] == [("GET", "/hello.txt")]


def test_static_file_answers_a_matching_if_none_match_with_304(
    origin: Origin, origin_ca: trustme.CA
) -> None:
    file = origin.add_file("/f", b"content", headers={"Cache-Control": "max-age=60"})

    status, headers, body = request(origin, origin_ca, "GET", "/f", {"If-None-Match": file.etag})

    assert (status, body) == (304, b"")
    assert headers["etag"] == file.etag
    assert headers["cache-control"] == "max-age=60"


@pytest.mark.parametrize(
    ("byte_range", "status", "body", "content_range"),
    [
        ("bytes=2-5", 206, b"2345", "bytes 2-5/10"),
        ("bytes=7-", 206, b"789", "bytes 7-9/10"),
        ("bytes=-4", 206, b"6789", "bytes 6-9/10"),
        ("bytes=8-100", 206, b"89", "bytes 8-9/10"),
        ("bytes=10-", 416, b"", "bytes */10"),
        ("bytes=0-1,4-5", 200, b"0123456789", None),
    ],
)
def test_static_file_answers_a_single_byte_range(
    origin: Origin,
    origin_ca: trustme.CA,
    byte_range: str,
    status: int,
    body: bytes,
    content_range: str | None,
) -> None:
    origin.add_file("/digits", b"0123456789")

    got = request(origin, origin_ca, "GET", "/digits", {"Range": byte_range})

    got_status, headers, got_body = got
    assert (got_status, got_body, headers.get("content-range")) == (status, body, content_range)
    assert headers["accept-ranges"] == "bytes"


def test_range_with_a_stale_if_range_gets_the_whole_file(
    origin: Origin, origin_ca: trustme.CA
) -> None:
    origin.add_file("/digits", b"0123456789")

    status, _, body = request(
        origin, origin_ca, "GET", "/digits", {"Range": "bytes=0-1", "If-Range": '"old"'}
    )

    assert (status, body) == (200, b"0123456789")


@pytest.mark.parametrize(("path", "length"), [("/f", 7), (f"/bytes/{GiB}", GiB)])
def test_head_sends_the_length_without_a_body(
    origin: Origin, origin_ca: trustme.CA, path: str, length: int
) -> None:
    origin.add_file("/f", b"content")

    status, headers, body = request(origin, origin_ca, "HEAD", path)

    assert (status, headers["content-length"], body) == (200, str(length), b"")


def test_unknown_path_is_404(origin: Origin, origin_ca: trustme.CA) -> None:
    status, _, _ = request(origin, origin_ca, "GET", "/nothing-here")

    assert status == 404
    assert origin.requests_to("/nothing-here")


# --- /echo -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_echo_reports_the_uploaded_body_hash(
    origin: Origin, origin_ca_pem: Path, home: Path, tmp_path: Path, chunked: bool
) -> None:
    upload = random.Random(1).randbytes(3 * MiB + 17)
    upload_file = tmp_path / "upload.bin"
    upload_file.write_bytes(upload)
    framing = ["--header", "Transfer-Encoding: chunked"] if chunked else []

    output = curl(
        origin,
        origin_ca_pem,
        home,
        *framing,
        "--data-binary",
        f"@{upload_file}",
        origin.url("files.test", "/echo?x=1"),
    )

    echoed = json.loads(output)
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/echo?x=1"
    assert echoed["body_sha256"] == hashlib.sha256(upload).hexdigest()
    assert echoed["body_len"] == len(upload)
    assert echoed["headers"].get("transfer-encoding") == ("chunked" if chunked else None)
    (recorded,) = origin.requests_to("/echo?x=1")
    assert recorded.body_len == len(upload)


# --- /bytes and /chunked ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "framing"),
    [("bytes", f"content-length: {10 * MiB + 3}"), ("chunked", "transfer-encoding: chunked")],
)
def test_pattern_routes_stream_the_requested_bytes(
    origin: Origin, origin_ca_pem: Path, home: Path, tmp_path: Path, route: str, framing: str
) -> None:
    length = 10 * MiB + 3
    body_file, head_file = tmp_path / "body", tmp_path / "head"

    curl(
        origin,
        origin_ca_pem,
        home,
        "--output",
        str(body_file),
        "--dump-header",
        str(head_file),
        origin.url("files.test", f"/{route}/{length}"),
    )

    assert body_file.read_bytes() == pattern(length)
    assert framing in head_file.read_text().lower()


def test_a_gibibyte_streams_completely(plain_origin: Origin, home: Path) -> None:
    size = clients.curl(
        client_env(home),
        "--fail",
        "--output",
        "/dev/null",
        "--write-out",
        "%{size_download}",
        plain_origin.url("127.0.0.1", f"/bytes/{GiB}"),
    ).stdout

    assert int(size) == GiB


# --- connections -----------------------------------------------------------------------------


def test_keep_alive_serves_several_requests_on_one_connection(
    origin: Origin, origin_ca_pem: Path, home: Path
) -> None:
    origin.add_file("/a", b"a")
    origin.add_file("/b", b"b")

    output = curl(
        origin, origin_ca_pem, home, origin.url("files.test", "/a"), origin.url("files.test", "/b")
    )

    assert output == "ab"
    assert origin.connections == 1
    assert [r.path for r in origin.requests] == ["/a", "/b"]


@pytest.mark.parametrize("length", [10, GiB], ids=["idle-keep-alive", "mid-download"])
def test_stop_cuts_open_connections_and_leaves_no_thread(
    origin_ca: trustme.CA, length: int
) -> None:
    threads_before = set(threading.enumerate())
    context = ssl.create_default_context()
    origin_ca.configure_trust(context)
    with Origin.start(issue_origin_cert(origin_ca)) as stopping:
        client = http.client.HTTPSConnection("127.0.0.1", stopping.port, context=context)
        client.request("GET", f"/bytes/{length}")
        assert client.getresponse().read(10) == pattern(10)  # the connection stays open

    assert set(threading.enumerate()) == threads_before
    assert stopping.errors == []
    client.close()


def test_a_client_trusting_the_test_ca_rejects_the_untrusted_origin(
    origin_ca_pem: Path, home: Path
) -> None:
    with Origin.start(issue_untrusted_cert()) as untrusted:
        result = clients.curl(
            client_env(home),
            "--resolve",
            f"untrusted.test:{untrusted.port}:127.0.0.1",
            "--cacert",
            str(origin_ca_pem),
            untrusted.url("untrusted.test", "/echo"),
            check=False,
        )

    assert result.returncode == CURLE_PEER_FAILED_VERIFICATION
    assert untrusted.requests == []
    assert untrusted.errors == []


# --- package index ---------------------------------------------------------------------------


def test_built_wheel_is_reproducible_and_records_every_file(tmp_path: Path) -> None:
    def build(dist_dir: Path) -> Path:
        return build_wheel(dist_dir, "Some.Project", "2.0", deps=["beta"], files={"x/y": b"y"})

    wheel = build(tmp_path / "one")

    assert wheel.name == "some_project-2.0-py3-none-any.whl"
    assert build(tmp_path / "two").read_bytes() == wheel.read_bytes()
    with zipfile.ZipFile(wheel) as archive:
        record = archive.read("some_project-2.0.dist-info/RECORD").decode()
        metadata = archive.read("some_project-2.0.dist-info/METADATA").decode()
        rows = [line.rsplit(",", 2) for line in record.splitlines()]
        assert sorted(path for path, _, _ in rows) == sorted(archive.namelist())
        for path, digest, size in rows:
            if path.endswith("/RECORD"):
                assert (digest, size) == ("", "")
            else:
                assert size == str(len(archive.read(path)))
                assert digest.startswith("sha256=")
    assert "Name: Some.Project\n" in metadata
    assert "Requires-Dist: beta\n" in metadata


PIP_ACCEPT = f"{JSON_V1_TYPE}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, "text/html; charset=utf-8"),
        ("*/*", "text/html; charset=utf-8"),
        (PIP_ACCEPT, JSON_V1_TYPE),
        ("application/vnd.pypi.simple.v1+html", "application/vnd.pypi.simple.v1+html"),
    ],
)
def test_index_page_is_negotiated_on_accept(
    origin: Origin, origin_ca: trustme.CA, tmp_path: Path, accept: str | None, content_type: str
) -> None:
    make_index(origin, tmp_path / "dist")

    status, headers, body = request(
        origin, origin_ca, "GET", "/simple/alpha/", {"Accept": accept} if accept else {}
    )

    assert status == 200
    assert headers["content-type"] == content_type
    assert headers["vary"] == "Accept"
    if content_type == JSON_V1_TYPE:
        (file,) = json.loads(body)["files"]
        assert file["url"] == "../../files/alpha-1.0-py3-none-any.whl"
        assert "core-metadata" in file
    else:
        assert b'href="../../files/alpha-1.0-py3-none-any.whl#sha256=' in body
        assert b"data-core-metadata=" in body


def test_pip_downloads_a_package_and_its_dependency(
    origin: Origin, origin_ca_pem: Path, home: Path, tmp_path: Path
) -> None:
    make_index(origin, tmp_path / "dist")
    dest = tmp_path / "downloads"

    clients.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--isolated",
            "--index-url",
            origin.url("127.0.0.1", "/simple/"),
            "--cert",
            str(origin_ca_pem),
            "--dest",
            str(dest),
            "alpha",
        ],
        client_env(home),
    )

    assert sorted(path.name for path in dest.iterdir()) == [
        "alpha-1.0-py3-none-any.whl",
        "beta-1.0-py3-none-any.whl",
    ]
    (index_request,) = origin.requests_to("/simple/alpha/")
    assert JSON_V1_TYPE in index_request.headers["accept"]
    assert origin.requests_to("/files/alpha-1.0-py3-none-any.whl.metadata")


@pytest.mark.parametrize("metadata", [True, False], ids=["core-metadata", "lazy-wheel"])
def test_uv_installs_a_package_and_its_dependency(
    origin: Origin, origin_ca_pem: Path, home: Path, tmp_path: Path, metadata: bool
) -> None:
    make_index(origin, tmp_path / "dist", metadata=metadata)
    target = tmp_path / "target"

    clients.run(
        [
            uv.find_uv_bin(),
            "pip",
            "install",
            "--no-cache",
            "--python",
            sys.executable,
            "--target",
            str(target),
            "--index-url",
            origin.url("127.0.0.1", "/simple/"),
            "alpha",
        ],
        client_env(home, {"SSL_CERT_FILE": str(origin_ca_pem)}),
    )
    imported = clients.run(
        [sys.executable, "-c", "import alpha_pkg, beta_pkg; print(alpha_pkg.__version__)"],
        client_env(home, {"PYTHONPATH": str(target)}),
    )

    assert imported.stdout.strip() == "1.0"
    wheel_requests = origin.requests_to("/files/alpha-1.0-py3-none-any.whl")
    if metadata:  # PEP 658: the metadata file, then one plain download
        assert origin.requests_to("/files/alpha-1.0-py3-none-any.whl.metadata")
        assert [r.headers.get("range") for r in wheel_requests] == [None]
    else:  # no metadata file: uv reads the wheel's central directory with a range request
        assert any("range" in r.headers for r in wheel_requests)


# --- git smart HTTP --------------------------------------------------------------------------


@pytest.fixture
def git_head(origin: Origin, tmp_path: Path) -> str:
    """Serve tmp_path/repos at /git/ from `origin`, holding pkg.git; returns its HEAD."""
    _, head = make_repo(tmp_path / "repos", "pkg.git", commits=3)
    origin.add_git("git", tmp_path / "repos")
    return head


def test_git_clone_over_https_gets_the_head_commit(
    origin: Origin, git_head: str, origin_ca_pem: Path, home: Path, tmp_path: Path
) -> None:
    env = git_env(home, {"GIT_SSL_CAINFO": str(origin_ca_pem)})
    url = origin.url("127.0.0.1", "/git/pkg.git")

    run_git("clone", "--quiet", url, "clone", cwd=tmp_path, env=env)

    assert run_git("rev-parse", "HEAD", cwd=tmp_path / "clone", env=env) == git_head
    assert run_git("rev-list", "--count", "HEAD", cwd=tmp_path / "clone", env=env) == "3"
    upload_packs = origin.requests_to("/git/pkg.git/git-upload-pack")
    assert upload_packs
    assert upload_packs[0].headers["git-protocol"] == "version=2"


def test_git_push_over_https_updates_the_bare_repository(
    origin: Origin, git_head: str, origin_ca_pem: Path, home: Path, tmp_path: Path
) -> None:
    env = git_env(home, {"GIT_SSL_CAINFO": str(origin_ca_pem)})
    url = origin.url("127.0.0.1", "/git/pkg.git")
    run_git("clone", "--quiet", url, "work", cwd=tmp_path, env=env)
    # Larger than git's 1 MiB http.postBuffer, so the pack goes up chunked.
    big = random.Random(2).randbytes(2 * MiB)
    pushed = commit_file(tmp_path / "work", "big.bin", big, "Add a big file", env)

    run_git("push", "--quiet", "origin", "HEAD:main", cwd=tmp_path / "work", env=env)

    bare = tmp_path / "repos" / "pkg.git"
    assert run_git("rev-parse", "main", cwd=bare, env=env) == pushed
    assert run_git("rev-parse", "main~1", cwd=bare, env=env) == git_head
    (pack_upload,) = [
        r for r in origin.requests_to("/git/pkg.git/git-receive-pack") if r.body_len > MiB
    ]
    assert pack_upload.headers.get("transfer-encoding") == "chunked"
