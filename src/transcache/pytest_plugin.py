"""pytest plugin (entry point `pytest11`): run a test session through one transcache proxy.

Off unless asked for. `pytest --transcache` starts a proxy (`Proxy`, in a background thread)
when the session starts and puts its variables in `os.environ`, so every subprocess a test
starts (pip, uv, git, curl, cargo, ...) goes through it; they are restored when pytest ends.

Per-test accounting: while a test runs (setup, call and teardown), the proxy variables carry
the test's tag as the user name in the proxy URL (``http://TAG:@127.0.0.1:PORT``). Clients
send it as Proxy-Authorization and the proxy counts the traffic under that tag. A tag is a
hash of the node id (node ids hold characters a URL cannot); the plugin keeps the map back.
The terminal summary lists the tests that went upstream, with requests, bytes and time, and
with `--transcache-offline` every miss with its test. Offline, a miss makes the session fail
even when every test passed: a hermetic run that was not hermetic must not look green.

The proxy takes `transcache run` flags: `--transcache-arg=--resolve=HOST:PORT:ADDR` (repeatable)
or the `transcache_args` ini option; `--transcache-dir` and `--transcache-offline` are
shortcuts for `--cache-dir` and `--offline`. Without `--transcache` the fixtures still work:
`transcache_proxy` starts the proxy on first use, `os.environ` is left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ._config import Config, ConfigError
from ._launch import proxy_variable_names, tagged_url

if TYPE_CHECKING:  # the proxy, and trio with it, load when a session first needs one
    from ._stats import Counters, ProxyStats
    from .api import Proxy

PLUGIN_NAME = "transcache-session"
TAG_PREFIX = "t"
TAG_HASH_CHARS = 16
# Ahead of the user's flags, which may override it: a free port, not the service's.
LISTEN_ANYWHERE = ("--listen", "127.0.0.1:0")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("transcache", "route the session through a transcache proxy")
    group.addoption(
        "--transcache",
        action="store_true",
        default=False,
        help="run every test's subprocesses through one transcache proxy (os.environ)",
    )
    group.addoption(
        "--transcache-dir",
        type=Path,
        metavar="DIR",
        help="the proxy's cache directory (default: the user cache dir, as `transcache run`)",
    )
    group.addoption(
        "--transcache-offline",
        action="store_true",
        default=False,
        help="answer only from the cache; report every miss with its test and fail the run",
    )
    group.addoption(
        "--transcache-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="a `transcache run` flag for the proxy, e.g. --transcache-arg=--resolve=H:P:A; "
        "repeatable",
    )
    parser.addini(
        "transcache_args",
        type="args",
        default=[],
        help="`transcache run` flags for the proxy (before any --transcache-arg)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SessionProxy(config), PLUGIN_NAME)


def proxy_config(config: pytest.Config) -> Config:
    """The proxy's Config from the ini option and the command line, as `transcache run`
    would build it from the same flags."""
    from .cli.run import config_from_flags  # the run flags' one definition

    flags = [*LISTEN_ANYWHERE, *config.getini("transcache_args")]
    flags += config.getoption("transcache_arg")
    if config.getoption("transcache_dir") is not None:
        flags += ["--cache-dir", str(config.getoption("transcache_dir"))]
    if config.getoption("transcache_offline"):
        flags.append("--offline")
    try:
        return config_from_flags(flags)
    except SystemExit as exc:  # argparse has printed what is wrong
        raise pytest.UsageError(f"bad transcache flags: {flags}") from exc
    except ConfigError as exc:
        raise pytest.UsageError(f"transcache: {exc}") from exc


def tag_for(nodeid: str) -> str:
    """A URL-safe tag naming a test."""
    return TAG_PREFIX + hashlib.sha256(nodeid.encode()).hexdigest()[:TAG_HASH_CHARS]


class SessionProxy:
    """The session's proxy, started when the session starts (`--transcache`) or on first use
    by a fixture, stopped when pytest ends; the tag -> node id map for the summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.route = bool(config.getoption("transcache"))
        self.offline = bool(config.getoption("transcache_offline"))
        self.proxy: Proxy | None = None
        self.stats: ProxyStats | None = None
        self.tests: dict[str, str] = {}
        self._saved_env: dict[str, str | None] = {}

    def start(self) -> Proxy:
        if self.proxy is None:
            from .api import Proxy

            self.proxy = Proxy(proxy_config(self.config)).start()
            self.stats = self.proxy.stats()
        return self.proxy

    def tag(self, nodeid: str) -> str:
        tag = tag_for(nodeid)
        self.tests[tag] = nodeid
        return tag

    # -- hooks -------------------------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.route:
            self._set_environ(self.start().env)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        if not self.route or self.proxy is None:
            return (yield)
        with _proxy_variables(tagged_url(self.proxy.url, self.tag(item.nodeid))):
            return (yield)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.offline and self.stats is not None and self.stats.total.offline_misses:
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.stats is None or self.proxy is None:
            return
        terminalreporter.section("transcache", sep="-")
        for line in self.summary_lines(self.stats, self.proxy.url):
            terminalreporter.write_line(line)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        _restore(self._saved_env)
        self._saved_env.clear()
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None

    # -- helpers -----------------------------------------------------------------------------

    def _set_environ(self, env: dict[str, str]) -> None:
        for name, value in env.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def summary_lines(self, stats: ProxyStats, url: str) -> list[str]:
        from .cli._human import plural, size

        total = stats.total
        misses = len(total.offline_misses)
        lines = [
            f"transcache: {plural(total.requests, 'request')} through {url}: {total.hits} from "
            f"the cache, {total.upstream_requests} upstream ({size(total.upstream_bytes)}, "
            f"{total.upstream_seconds:.2f}s)"
            + (f", {plural(misses, 'offline miss', 'offline misses')}" if misses else ""),
        ]
        upstream = [(nodeid, c) for nodeid, c in self._by_test(stats) if c.upstream_requests]
        if upstream:
            lines.append("tests that went upstream:")
            lines += [
                f"  {nodeid}: {plural(c.upstream_requests, 'request')}, {size(c.upstream_bytes)}, "
                f"{c.upstream_seconds:.2f}s"
                for nodeid, c in upstream
            ]
        elif total.requests:
            lines.append("no test went upstream")
        if total.offline_misses:
            lines.append("offline misses (not in the cache; the client got a 504):")
            attributed = 0
            for nodeid, counters in self._by_test(stats):
                lines += [f"  {nodeid}: {missed}" for missed in counters.offline_misses]
                attributed += len(counters.offline_misses)
            if attributed < len(total.offline_misses):
                lines.append(f"  {len(total.offline_misses) - attributed} outside any test")
        return lines

    def _by_test(self, stats: ProxyStats) -> Iterator[tuple[str, Counters]]:
        # A snapshot: a straggling client may still add a tag from the proxy's thread.
        for tag, counters in list(stats.by_tag.items()):
            yield self.tests.get(tag, f"(tag {tag})"), counters


@contextlib.contextmanager
def _proxy_variables(url: str) -> Iterator[None]:
    """Point the proxy variables in os.environ at `url` for the block, then restore them."""
    names = proxy_variable_names()
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, url))
    try:
        yield
    finally:
        _restore(saved)


def _restore(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _plugin(config: pytest.Config) -> SessionProxy:
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    assert isinstance(plugin, SessionProxy)
    return plugin


@pytest.fixture(scope="session")
def transcache_proxy(pytestconfig: pytest.Config) -> Proxy:
    """The session's proxy (`transcache.Proxy`): `url`, `env`, `env_for(tag)`, `ca_path`,
    `stats()`. Started on first use when the session does not run with --transcache."""
    return _plugin(pytestconfig).start()


@pytest.fixture
def transcache_env(request: pytest.FixtureRequest, transcache_proxy: Proxy) -> dict[str, str]:
    """os.environ plus the proxy variables, tagged with this test: `subprocess.run(...,
    env=transcache_env)` sends a subprocess through the proxy, counted for this test."""
    tag = _plugin(request.config).tag(request.node.nodeid)
    return {**os.environ, **transcache_proxy.env_for(tag)}
