"""Chaining through a corporate parent proxy: a real squid with basic authentication between
transcache and the local origins, and real clients (pip, git, curl) in front. squid resolves
the origins' `.test` names (its hosts file); transcache is given no --resolve for them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients import PIP, curl, run
from .gitrepo import make_repo, run_git
from .origin import ORIGIN_NAMES, Origin, client_env
from .packages import make_index
from .proxyproc import ProxyProcess
from .squid import Squid, running_squid

# A heavier tier: real package managers or a real squid (`-m 'not slow'` skips it).
pytestmark = pytest.mark.slow


FILE_BODY = b"stored once, served again\n" * 100
CACHEABLE = {"Cache-Control": "max-age=3600"}


@pytest.fixture
def squid() -> Iterator[Squid]:
    with running_squid([name for name in ORIGIN_NAMES if name.endswith(".test")]) as parent:
        yield parent


def parent_file(path: Path, url: str) -> Path:
    path.write_text(url + "\n")
    path.chmod(0o600)
    return path


def start_chained(
    tmp_path: Path, origin_ca_pem: Path, url: str, *origins: Origin, args: tuple[str, ...] = ()
) -> ProxyProcess:
    """`transcache run` with `url` as its parent, read from a 0600 file (never in argv)."""
    ports = [arg for o in origins for arg in ("--connect-port", str(o.port))]
    return ProxyProcess.start(
        tmp_path / "proxy",
        upstream_ca=[origin_ca_pem],
        args=["--upstream-proxy-file", str(parent_file(tmp_path / "parent", url)), *ports, *args],
    )


@pytest.fixture
def chained(
    tmp_path: Path, origin_ca_pem: Path, squid: Squid, origin: Origin, plain_origin: Origin
) -> Iterator[ProxyProcess]:
    proxy = start_chained(tmp_path, origin_ca_pem, squid.url, origin, plain_origin)
    yield proxy
    proxy.stop()
    assert "Traceback" not in proxy.log, proxy.log


def test_pip_goes_through_the_parent_once_and_then_from_cache(
    origin: Origin, squid: Squid, chained: ProxyProcess, tmp_path: Path
) -> None:
    wheels = make_index(origin, tmp_path / "dists")
    env = client_env(tmp_path / "home", chained.env())
    index = origin.url("index.test", "/simple/")
    for attempt in ("first", "again"):
        dest = tmp_path / attempt
        run([*PIP, "download", "--index-url", index, "--dest", str(dest), "alpha"], env)
        assert {p.name for p in dest.iterdir()} <= {w.name for w in wheels}
    wheel_path = next(r.path for r in origin.requests if r.path.endswith(".whl"))
    assert len(origin.requests_to(wheel_path)) == 1  # the repeat never left transcache
    chained.stop()  # squid logs a CONNECT when its tunnel closes
    connects = squid.wait_for(1, "CONNECT")
    assert {line.url for line in connects} == {f"index.test:{origin.port}"}
    assert {line.user for line in connects} == {squid.user}
    assert squid.password not in chained.log


def test_git_clone_goes_through_the_parent(
    origin: Origin, squid: Squid, chained: ProxyProcess, tmp_path: Path
) -> None:
    bare, head = make_repo(tmp_path / "repos", "pkg.git", commits=3)
    origin.add_git("git", bare.parent)
    env = client_env(tmp_path / "home", chained.env())
    clone = tmp_path / "clone"
    run(["git", "clone", "--quiet", origin.url("git.test", "/git/pkg.git"), str(clone)], env)
    assert run_git("rev-parse", "HEAD", cwd=clone, env=env) == head
    chained.stop()
    assert [line.url for line in squid.wait_for(1, "CONNECT")] == [f"git.test:{origin.port}"]


def test_a_repeat_is_a_hit_that_never_reaches_the_parent_and_connections_are_reused(
    plain_origin: Origin, squid: Squid, chained: ProxyProcess, tmp_path: Path
) -> None:
    plain_origin.add_file("/file.bin", FILE_BODY, headers=CACHEABLE)
    plain_origin.add_file("/other.bin", FILE_BODY, headers=CACHEABLE)
    env = client_env(tmp_path / "home", chained.env())
    url = plain_origin.url("files.test", "/file.bin")
    for _ in range(3):
        assert curl(env, url).stdout.encode() == FILE_BODY
    assert curl(env, plain_origin.url("files.test", "/other.bin")).stdout.encode() == FILE_BODY
    gets = squid.wait_for(2, "GET")
    assert [line.url for line in gets] == [url, plain_origin.url("files.test", "/other.bin")]
    assert gets[0].client_port == gets[1].client_port  # one pooled connection to the parent
    assert chained.log_lines(f"GET {url} 200", count=3)[2].endswith(" hit")


def test_https_requests_share_one_tunnel_through_the_parent(
    origin: Origin, squid: Squid, chained: ProxyProcess, tmp_path: Path
) -> None:
    env = client_env(tmp_path / "home", chained.env())
    for size in (10, 20, 30):  # not cacheable: each one goes upstream
        assert len(curl(env, origin.url("files.test", f"/bytes/{size}")).stdout) == size
    assert len(origin.requests) == 3
    chained.stop()
    assert [line.url for line in squid.wait_for(1, "CONNECT")] == [f"files.test:{origin.port}"]


def test_wrong_parent_credentials_give_a_502_that_says_so(
    tmp_path: Path, origin_ca_pem: Path, squid: Squid, origin: Origin, plain_origin: Origin
) -> None:
    wrong = f"http://{squid.user}:not-the-password@127.0.0.1:{squid.port}"
    proxy = start_chained(tmp_path, origin_ca_pem, wrong, origin, plain_origin)
    env = client_env(tmp_path / "home", proxy.env())
    for url in (origin.url("files.test", "/bytes/5"), plain_origin.url("files.test", "/bytes/5")):
        answer = curl(env, "--include", url, check=False).stdout
        assert "HTTP/1.1 502" in answer, answer
        assert f"the upstream proxy http://127.0.0.1:{squid.port}" in answer
        assert "407 Proxy Authentication Required" in answer
    assert not origin.requests and not plain_origin.requests
    proxy.stop()
    assert "not-the-password" not in proxy.log


def test_bypassed_hosts_go_direct(
    tmp_path: Path, origin_ca_pem: Path, squid: Squid, plain_origin: Origin
) -> None:
    plain_origin.add_file("/file.bin", FILE_BODY)
    proxy = start_chained(
        tmp_path,
        origin_ca_pem,
        squid.url,
        plain_origin,
        args=(
            "--upstream-proxy-bypass",
            "localhost, .files.test",
            "--resolve",
            f"files.test:{plain_origin.port}:127.0.0.1",
        ),
    )
    env = client_env(tmp_path / "home", proxy.env())
    assert curl(env, plain_origin.url("files.test", "/file.bin")).stdout.encode() == FILE_BODY
    assert curl(env, plain_origin.url("index.test", "/file.bin")).stdout.encode() == FILE_BODY
    lines = squid.wait_for(1, "GET")
    assert [line.url for line in lines] == [plain_origin.url("index.test", "/file.bin")]
    proxy.stop()


def test_passthrough_tunnels_go_through_the_parent(
    tmp_path: Path, origin_ca_pem: Path, squid: Squid, origin: Origin
) -> None:
    proxy = start_chained(
        tmp_path, origin_ca_pem, squid.url, origin, args=("--passthrough", "files.test")
    )
    env = {**client_env(tmp_path / "home", proxy.env()), "CURL_CA_BUNDLE": str(origin_ca_pem)}
    for _ in range(2):  # blind tunnels: curl verifies the origin itself, nothing is cached
        assert len(curl(env, origin.url("files.test", "/bytes/7")).stdout) == 7
    assert len(origin.requests) == 2
    proxy.stop()
    connects = squid.wait_for(2, "CONNECT")
    assert [line.url for line in connects] == [f"files.test:{origin.port}"] * 2
