"""A shared transcache for a team: users from an auth file, 407 without credentials, the
proxy's public pages open and the rest behind credentials, tokens never forwarded or logged,
per-test tags kept, listening beyond loopback refused without an auth file, and TLS to the
proxy itself for an https:// proxy URL."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
import uv
from prometheus_client.parser import text_string_to_metric_families

from transcache._auth import ANONYMOUS, Credentials, Gate, Identity
from transcache._config import ConfigError
from transcache._errors import ProxyAuthRequiredError, UnauthorizedError

from .clients import curl, run
from .conftest import StartProxy
from .inprocess import connected, proxy_server
from .origin import Origin, client_env
from .packages import make_index
from .proxyproc import ProxyProcess
from .test_clients import index_url

TOKEN = "s3cret-token-for-alice"


@pytest.fixture
def auth_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"# the team\nalice:{TOKEN}\n\nbob:another-token\n")
    path.chmod(0o600)
    return path


def basic(name: str, token: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{name}:{token}".encode())


# -- the auth file and the gate (pure) --------------------------------------------------------


def test_the_auth_file_names_users(auth_file: Path) -> None:
    assert Credentials.load(auth_file).users == ["alice", "bob"]


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ("alice:t\n", 0o644, "chmod 600"),
        ("alice:t\n", 0o640, "chmod 600"),
        ("alice\n", 0o600, "expected USER:TOKEN"),
        ("al~ice:t\n", 0o600, "expected USER:TOKEN"),
        ("# nobody\n", 0o600, "names no user"),
    ],
)
def test_a_bad_auth_file_is_refused(tmp_path: Path, text: str, mode: int, message: str) -> None:
    path = tmp_path / "users"
    path.write_text(text)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=message):
        Credentials.load(path)


def test_the_gate_admits_users_and_tells_their_tags(auth_file: Path) -> None:
    gate = Gate(Credentials.load(auth_file))
    field = b"Proxy-Authorization"
    assert gate.proxy([(field, basic("alice", TOKEN))], ANONYMOUS) == Identity("alice", None)
    assert gate.proxy([(field, basic("alice~test_one", TOKEN))], ANONYMOUS) == Identity(
        "alice", "test_one"
    )
    for refused in ([], [(field, basic("alice", "wrong"))], [(field, basic("carol", TOKEN))]):
        with pytest.raises(ProxyAuthRequiredError):
            gate.proxy(refused, ANONYMOUS)
    # Inside a tunnel whose CONNECT proved who it is, requests need nothing more.
    assert gate.proxy([], Identity("bob", None)) == Identity("bob", None)


def test_the_gate_keeps_tags_without_an_auth_file() -> None:
    gate = Gate(None)
    assert gate.proxy([(b"Proxy-Authorization", basic("test_one", ""))], ANONYMOUS).tag == (
        "test_one"
    )


def test_only_the_public_pages_answer_without_credentials(auth_file: Path) -> None:
    gate = Gate(Credentials.load(auth_file))
    for public in ("/healthz", "/ca.pem", "/ca.pem?x=1"):
        assert gate.admin([], ANONYMOUS, public) == ANONYMOUS
    with pytest.raises(UnauthorizedError):
        gate.admin([], ANONYMOUS, "/tls-rejections")
    who = gate.admin([(b"Authorization", basic("bob", "another-token"))], ANONYMOUS, "/metrics")
    assert who.user == "bob"


async def test_an_authenticated_tag_is_counted_for_its_test(
    tmp_path: Path, auth_file: Path
) -> None:
    server = proxy_server(tmp_path, auth_file=auth_file)
    async with connected(server.handle) as client:
        for token, page in ((TOKEN, b"/healthz"), ("wrong", b"/tls-rejections")):
            await client.send(
                b"GET http://transcache.invalid" + page + b" HTTP/1.1\r\nHost: x\r\n"
                b"Proxy-Authorization: " + basic("alice~test_one", token) + b"\r\n\r\n"
            )
            reply = await client.response()
            if token == TOKEN:
                assert reply.status == 200
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == 'Basic realm="transcache"'
    assert server.stats.by_tag["test_one"].requests == 1  # the refused one is nobody's


# -- a real proxy, real clients ----------------------------------------------------------------


@pytest.fixture
def team_proxy(
    start_proxy: StartProxy, origin: Origin, plain_origin: Origin, auth_file: Path
) -> ProxyProcess:
    return start_proxy(origin, plain_origin, args=["--auth-file", str(auth_file)])


def test_a_request_without_credentials_gets_407(
    team_proxy: ProxyProcess, origin: Origin, home: Path
) -> None:
    env = client_env(home, team_proxy.env())
    result = curl(env, origin.url("files.test", "/echo"), check=False)
    assert "407" in result.stderr  # curl: CONNECT tunnel failed, response 407


def test_a_user_goes_through_and_the_origin_never_sees_the_credentials(
    team_proxy: ProxyProcess,
    origin: Origin,
    plain_origin: Origin,
    home: Path,
) -> None:
    env = client_env(home, team_proxy.env())
    for url in (origin.url("files.test", "/echo"), plain_origin.url("files.test", "/echo")):
        result = curl(env, "--proxy-user", f"alice:{TOKEN}", url)
        seen = {k.lower() for k in json.loads(result.stdout)["headers"]}
        assert "proxy-authorization" not in seen
    wrong = curl(env, "--proxy-user", "alice:wrong", origin.url("files.test", "/echo"), check=False)
    assert "407" in wrong.stderr
    assert TOKEN not in team_proxy.log
    assert "another-token" not in team_proxy.log


def test_public_pages_answer_anyone_and_the_others_need_a_user(team_proxy: ProxyProcess) -> None:
    env = {"PATH": os.environ["PATH"]}
    for page in ("/healthz", "/ca.pem"):
        assert curl(env, "--fail", f"{team_proxy.url}{page}").returncode == 0
    denied = curl(env, "--write-out", "%{http_code}", f"{team_proxy.url}/tls-rejections")
    assert denied.stdout.endswith("401")
    allowed = curl(env, "--fail", "--user", "bob:another-token", f"{team_proxy.url}/tls-rejections")
    assert json.loads(allowed.stdout) == {}


def run_transcache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transcache", "run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_listening_beyond_loopback_without_an_auth_file_is_refused(tmp_path: Path) -> None:
    result = run_transcache(
        "--listen", "0.0.0.0:0", "--ca-dir", str(tmp_path / "ca"), "--cache-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "--auth-file" in result.stderr


def test_an_auth_file_others_can_read_is_refused(tmp_path: Path, auth_file: Path) -> None:
    auth_file.chmod(0o644)
    result = run_transcache(
        "--listen",
        "127.0.0.1:0",
        "--auth-file",
        str(auth_file),
        "--ca-dir",
        str(tmp_path / "ca"),
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 2
    assert "chmod 600" in result.stderr


# -- TLS to the proxy itself ------------------------------------------------------------------


def test_clients_reach_the_proxy_over_tls(
    start_proxy: StartProxy, origin: Origin, plain_origin: Origin, tmp_path: Path, home: Path
) -> None:
    authority = trustme.CA()
    leaf = authority.issue_cert("127.0.0.1")
    cert, key, ca = tmp_path / "proxy.pem", tmp_path / "proxy.key", tmp_path / "proxy-ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    proxy = start_proxy(origin, plain_origin, args=["--tls-cert", str(cert), "--tls-key", str(key)])
    assert proxy.url.startswith("https://127.0.0.1:")
    env = client_env(home, proxy.env())
    origin.add_file("/over-tls.txt", b"through an https proxy\n")
    for url in (origin.url("files.test", "/over-tls.txt"), plain_origin.url("files.test", "/echo")):
        result = curl(env, "--proxy-cacert", str(ca), url)
        assert result.returncode == 0
    assert result.stdout.startswith("{")
    assert proxy.log_lines(f"GET {origin.url('files.test', '/over-tls.txt')} 200")
    # uv trusts one bundle for the proxy and the origins behind it.
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(proxy.bundle.read_bytes() + ca.read_bytes())
    make_index(origin, tmp_path / "dists")
    target = tmp_path / "site"
    run(
        [uv.find_uv_bin(), "pip", "install", "--no-cache", "--python", sys.executable,
         "--index-url", index_url(origin), "--target", str(target), "alpha"],
        {**env, "SSL_CERT_FILE": str(bundle)},
    )  # fmt: skip
    assert any(target.glob("alpha*"))


def test_sighup_rereads_the_auth_file(
    team_proxy: ProxyProcess, origin: Origin, home: Path, auth_file: Path
) -> None:
    env = client_env(home, team_proxy.env())
    url = origin.url("files.test", "/echo")
    refused = curl(env, "--proxy-user", "carol:new-token", url, check=False)
    assert "407" in refused.stderr
    auth_file.write_text(auth_file.read_text() + "carol:new-token\n")
    team_proxy.process.send_signal(signal.SIGHUP)
    team_proxy.log_lines("SIGHUP: settings reloaded")
    assert curl(env, "--proxy-user", "carol:new-token", url).returncode == 0


def test_metrics_need_a_user_and_count_each_users_requests(
    team_proxy: ProxyProcess, origin: Origin, home: Path
) -> None:
    env = client_env(home, team_proxy.env())
    curl(env, "--proxy-user", f"alice:{TOKEN}", origin.url("files.test", "/echo"))
    bare = {"PATH": os.environ["PATH"]}
    denied = curl(bare, "--write-out", "%{http_code}", f"{team_proxy.url}/metrics")
    assert denied.stdout.endswith("401")
    text = curl(bare, "--fail", "--user", "bob:another-token", f"{team_proxy.url}/metrics").stdout
    users = {
        sample.labels["user"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "transcache_user_requests_total"
    }
    assert users == {"alice": 1.0}
    page = curl(bare, "--fail", "--user", "bob:another-token", f"{team_proxy.url}/").stdout
    assert '<table id="users">' in page and "<td>alice</td>" in page
