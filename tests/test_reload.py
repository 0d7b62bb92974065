"""SIGHUP to a real `transcache run`: the config file is read again (a changed freshness rule
takes effect, a broken file leaves the running settings alone) and the access log file is
reopened where logrotate expects it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from .conftest import StartProxy
from .origin import Origin, client_env
from .proxyproc import ProxyProcess
from .test_cache import fetch

NEVER_CACHE_FILES = '[[rule]]\nurl = "*.whl"\nnever = true\n'
RELOADED = "SIGHUP: settings reloaded"
WAIT = 10.0


def reload(proxy: ProxyProcess, count: int) -> None:
    """SIGHUP, then wait for the proxy's `count`-th report of a reload."""
    proxy.process.send_signal(signal.SIGHUP)
    assert len(proxy.log_lines(RELOADED, count)) == count, proxy.log


def lines_with(path: Path, needle: str) -> list[str]:
    """The lines of `path` holding `needle`, once there is one: the proxy writes an access line
    just after the response's last byte, so a client can be faster."""
    deadline = time.monotonic() + WAIT
    while True:
        lines = [line for line in path.read_text().splitlines() if needle in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def proxy_never_caching(
    origin: Origin, start_proxy: StartProxy, config: Path, path: str
) -> tuple[ProxyProcess, str]:
    """A proxy whose config file says never to cache wheels, and the URL of a wheel at `path`."""
    config.write_text(NEVER_CACHE_FILES)
    origin.add_file(path, b"wheel")
    return start_proxy(origin, args=["--config", str(config)]), origin.url("files.test", path)


def test_sighup_applies_a_changed_rule_from_the_config_file(
    origin: Origin, start_proxy: StartProxy, home: Path, tmp_path: Path
) -> None:
    config = tmp_path / "transcache.toml"
    proxy, url = proxy_never_caching(origin, start_proxy, config, "/a.whl")
    env = client_env(home, proxy.env())
    fetch(env, url)
    fetch(env, url)
    assert len(origin.requests_to("/a.whl")) == 2  # never cached

    config.write_text("")
    reload(proxy, 1)
    fetch(env, url)
    _, headers, _ = fetch(env, url)
    assert headers["cache-status"] == "transcache; hit"
    assert len(origin.requests_to("/a.whl")) == 3


def test_sighup_with_a_broken_config_file_keeps_the_running_settings(
    origin: Origin, start_proxy: StartProxy, home: Path, tmp_path: Path
) -> None:
    config = tmp_path / "transcache.toml"
    proxy, url = proxy_never_caching(origin, start_proxy, config, "/b.whl")
    config.write_text("[[rule]\n")
    proxy.process.send_signal(signal.SIGHUP)
    assert proxy.log_lines("SIGHUP: keeping the running settings"), proxy.log
    env = client_env(home, proxy.env())
    fetch(env, url)
    fetch(env, url)
    assert len(origin.requests_to("/b.whl")) == 2  # the rule still holds


def test_sighup_names_the_settings_that_need_a_restart(
    origin: Origin, start_proxy: StartProxy, tmp_path: Path
) -> None:
    config = tmp_path / "transcache.toml"
    proxy = start_proxy(origin, args=["--config", str(config)])
    config.write_text(f'upstream_ca = ["{tmp_path / "other.pem"}"]\n')
    reload(proxy, 1)
    assert proxy.log_lines("a restart is needed to change upstream_ca"), proxy.log


def test_sighup_reopens_a_rotated_access_log(
    origin: Origin, start_proxy: StartProxy, home: Path, tmp_path: Path
) -> None:
    access_log = tmp_path / "access.log"
    proxy = start_proxy(origin, args=["--access-log", str(access_log)])
    env = client_env(home, proxy.env())
    before, after = origin.url("files.test", "/bytes/10"), origin.url("files.test", "/bytes/20")
    fetch(env, before)
    assert lines_with(access_log, before)
    rotated = access_log.rename(tmp_path / "access.log.1")

    reload(proxy, 1)
    fetch(env, after)
    assert access_log.exists()
    assert lines_with(access_log, after)
    assert after not in rotated.read_text()
