"""Freshness rules from flags and the config file decide what is stored and for how long."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import StartProxy
from .origin import Origin, client_env
from .test_cache import fetch


def test_never_cache_rule_keeps_matching_urls_out_of_the_store(
    origin: Origin, start_proxy: StartProxy, home: Path
) -> None:
    origin.add_file("/nightly/build.whl", b"nightly")
    proxy = start_proxy(origin, args=["--never-cache", "*/nightly/*"])
    env = client_env(home, proxy.env())
    url = origin.url("files.test", "/nightly/build.whl")
    fetch(env, url)
    _, headers, body = fetch(env, url)
    assert body == b"nightly"
    assert headers["cache-status"] == "transcache; fwd=miss; fwd-status=200; detail=rule"
    assert len(origin.requests_to("/nightly/build.whl")) == 2


def test_immutable_and_min_ttl_rules_skip_revalidation(
    origin: Origin, start_proxy: StartProxy, home: Path
) -> None:
    origin.add_file("/src/pkg-1.0.tar.gz", b"sdist")
    origin.add_file("/simple/pkg/", b"<html></html>", content_type="text/html")
    proxy = start_proxy(origin, args=["--immutable", "*.tar.gz", "--min-ttl", "*/simple/*=600"])
    env = client_env(home, proxy.env())
    for path in ("/src/pkg-1.0.tar.gz", "/simple/pkg/"):
        url = origin.url("files.test", path)
        fetch(env, url)
        _, headers, _ = fetch(env, url)
        assert headers["cache-status"] == "transcache; hit", path
        assert len(origin.requests_to(path)) == 1
    # A client's no-cache still revalidates a min-ttl entry, but never an immutable one.
    fetch(env, origin.url("files.test", "/src/pkg-1.0.tar.gz"), "-H", "Cache-Control: no-cache")
    fetch(env, origin.url("files.test", "/simple/pkg/"), "-H", "Cache-Control: no-cache")
    assert len(origin.requests_to("/src/pkg-1.0.tar.gz")) == 1
    assert len(origin.requests_to("/simple/pkg/")) == 2


def test_config_file_rules_apply_and_flags_come_first(
    origin: Origin, start_proxy: StartProxy, home: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'max_size = "1G"\n\n[[rule]]\nurl = "*/data/*"\nnever = true\n\n'
        '[[rule]]\nurl = "*/keep/*"\nnever = true\n'
    )
    origin.add_file("/data/a", b"a", headers={"Cache-Control": "max-age=600"})
    origin.add_file("/keep/b", b"b", headers={"Cache-Control": "max-age=600"})
    proxy = start_proxy(origin, args=["--config", str(config), "--immutable", "*/keep/*"])
    env = client_env(home, proxy.env())
    for _ in range(2):
        fetch(env, origin.url("files.test", "/data/a"))
        fetch(env, origin.url("files.test", "/keep/b"))
    assert len(origin.requests_to("/data/a")) == 2  # the file's never rule
    assert len(origin.requests_to("/keep/b")) == 1  # the flag's rule wins over the file's


def test_malformed_config_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[[rule]]\nurl = 3\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "transcache",
            "run",
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
            "--ca-dir",
            str(tmp_path / "ca"),
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert str(config) in result.stderr and "url" in result.stderr
    assert "Traceback" not in result.stderr
