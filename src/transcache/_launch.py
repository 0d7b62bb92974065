"""How processes meet a proxy: the `transcache run` command line and the environment that
proxy runs in, the line it prints once it listens, and the environment a client needs to go
through it. The API, the CLI, the tests and the benchmarks all take these from here, so what
one starts and what another expects cannot drift apart."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
BUNDLE_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "CARGO_HTTP_CAINFO",
)
# Node adds the certificates of this file to its own roots (it replaces nothing).
NODE_CA_VARIABLE = "NODE_EXTRA_CA_CERTS"
NO_PROXY = "localhost,127.0.0.1,::1"
# Names the transcache the proxy variables point at, so that a transcache started with them
# does not take it for a parent proxy (see `_parent`).
OWN_URL_VARIABLE = "TRANSCACHE_URL"
# `transcache run` prints this and its URL as its first line once it accepts connections.
LISTENING_PREFIX = "transcache listening on "
# A running proxy's live counters (JSON); asking for them flushes its counts to the store,
# which is how `cache stats` and `status` read exact counts while a proxy runs.
STATS_PAGE = "/stats.json"
# A tag goes into the proxy URL's user name as is: URL-unreserved characters only.
TAG_PATTERN = re.compile(r"[A-Za-z0-9._~-]+")
# Variables a `transcache run` child must not inherit: proxy variables would make its own
# clients' settings look like its configuration, and an SSL_CERT_* override would replace the
# system roots it verifies origins against (it adds --upstream-ca to those, nothing else).
SERVER_DROPPED_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def proxy_variable_names() -> list[str]:
    """HTTP_PROXY, HTTPS_PROXY and ALL_PROXY, in both cases."""
    return [case(name) for name in PROXY_VARIABLES for case in (str.upper, str.lower)]


def proxy_environment(proxy_url: str) -> dict[str, str]:
    """The proxy variables, both cases, with loopback exempt, and the marker saying that
    they point at a transcache."""
    env = dict.fromkeys(proxy_variable_names(), proxy_url)
    env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
    env[OWN_URL_VARIABLE] = proxy_url
    return env


def ca_environment(bundle: Path, node_ca: Path) -> dict[str, str]:
    """The variables that make pip, uv, git, curl, cargo and npm trust `bundle`; Node adds
    `node_ca` to its own roots: our CA, or (install) the user's own extra certificates plus
    ours, so a NODE_EXTRA_CA_CERTS they had keeps working."""
    return {**dict.fromkeys(BUNDLE_VARIABLES, str(bundle)), NODE_CA_VARIABLE: str(node_ca)}


def client_environment(proxy_url: str, bundle: Path, node_ca: Path) -> dict[str, str]:
    """Variables that send pip, uv, git, curl, cargo and npm through the proxy and make them
    trust it."""
    return {**proxy_environment(proxy_url), **ca_environment(bundle, node_ca)}


def tagged_url(url: str, tag: str) -> str:
    """The proxy URL with `tag` as its user name and an empty password (``TAG:@``): pip's
    requests drops a user name that has no password at all."""
    if TAG_PATTERN.fullmatch(tag) is None:
        raise ValueError(f"a tag is letters, digits and ._~- only, got {tag!r}")
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{tag}:@{rest}"


def listening_line(url: str) -> str:
    return LISTENING_PREFIX + url


def listening_url(line: str) -> str | None:
    """The proxy URL from `transcache run`'s first line, or None if the line is another."""
    if not line.startswith(LISTENING_PREFIX):
        return None
    return line.strip().removeprefix(LISTENING_PREFIX)


def run_command(
    ca_dir: Path,
    cache_dir: Path,
    *,
    upstream_ca: Iterable[Path] = (),
    resolve: Mapping[tuple[str, int], str] | None = None,
    access_log: Path | None = None,
    args: Iterable[str] = (),
) -> list[str]:
    """`transcache run` with this interpreter, on a free loopback port (its first line says
    which, see `listening_url`); `args` are more `transcache run` flags, after these."""
    command = [sys.executable, "-m", "transcache", "run", "--listen", "127.0.0.1:0"]
    command += ["--ca-dir", str(ca_dir), "--cache-dir", str(cache_dir)]
    for path in upstream_ca:
        command += ["--upstream-ca", str(path)]
    for (host, port), address in (resolve or {}).items():
        command += ["--resolve", f"{host}:{port}:{address}"]
    if access_log is not None:
        command += ["--access-log", str(access_log)]
    return [*command, *args]


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without what a `transcache run` child must not inherit (see above)."""
    return {
        name: value
        for name, value in environ.items()
        if not name.lower().endswith("_proxy") and name not in SERVER_DROPPED_VARIABLES
    }
