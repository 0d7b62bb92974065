"""The parent proxy settings, pure: URLs, the NO_PROXY-style bypass list, the environment,
and a proxy recognising itself; and how `build_config` layers them."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from transcache._config import ConfigError, build_config
from transcache._launch import client_environment
from transcache._parent import (
    ParentProxy,
    ParentURLError,
    bypassed,
    environment_parents,
    parse_bypass,
    parse_parent,
    points_at,
    without_self,
)
from transcache._protocol import Origin
from transcache._reach import IPAddress

CORP = "http://corp.example.test:3128"


def never_own(address: IPAddress) -> bool:
    return False


def test_a_parent_url_keeps_its_credentials_out_of_str_and_repr() -> None:
    parent = parse_parent("http://al%40ice:p%3Ass@Corp.Example.Test:8080")
    assert (parent.host, parent.port, parent.credentials) == (
        "corp.example.test",
        8080,
        "al@ice:p:ss",
    )
    assert str(parent) == "http://corp.example.test:8080"
    assert "p:ss" not in repr(parent) and "p%3Ass" not in repr(parent)
    assert parent.headers == [(b"Proxy-Authorization", b"Basic YWxAaWNlOnA6c3M=")]
    assert parse_parent(parent.url) == parent


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("corp.test:8080", "corp.test", 8080),
        ("http://[::1]:3128/", "::1", 3128),
        ("http://c.test", "c.test", 3128),
    ],
)
def test_parent_urls_take_the_forms_curl_takes(text: str, host: str, port: int) -> None:
    parent = parse_parent(text)
    assert (parent.host, parent.port, parent.credentials) == (host, port, None)


@pytest.mark.parametrize(
    "text", ["https://corp.test:443", "socks5://corp.test:1080", "http://corp.test/x", "http://:80"]
)
def test_unusable_parent_urls_are_refused(text: str) -> None:
    with pytest.raises(ParentURLError):
        parse_parent(text)


@pytest.mark.parametrize(
    ("patterns", "host", "port", "expected"),
    [
        ("internal.test", "internal.test", 443, True),
        ("internal.test", "pkg.internal.test", 443, True),
        (".internal.test", "internal.test", 443, True),
        ("*.internal.test", "a.b.internal.test", 443, True),
        ("internal.test", "notinternal.test", 443, False),
        ("10.0.0.0/8, localhost", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.1.2.3", 443, False),
        ("internal.test:8443", "internal.test", 443, False),
        ("internal.test:8443", "internal.test", 8443, True),
        ("[::1]:443", "::1", 443, True),
        ("*", "anything.test", 80, True),
        ("", "anything.test", 80, False),
    ],
)
def test_bypass_uses_no_proxy_syntax(patterns: str, host: str, port: int, expected: bool) -> None:
    assert bypassed(parse_bypass(patterns), host, port) is expected


def test_the_environment_gives_each_scheme_its_parent() -> None:
    environ = {
        "https_proxy": CORP,
        "HTTPS_PROXY": "http://ignored.test:1",
        "HTTP_PROXY": "other.test:8080",
    }
    parents = environment_parents(environ)
    assert str(parents["https"]) == CORP and parents["https"].source == "https_proxy"
    assert str(parents["http"]) == "http://other.test:8080"


def test_variables_pointing_at_a_transcache_are_not_a_parent() -> None:
    ours = client_environment("http://127.0.0.1:8797", Path("b.pem"), Path("ca.pem"))
    assert environment_parents(ours) == {}
    assert environment_parents({**ours, "HTTPS_PROXY": "http://t1:@127.0.0.1:8797"}) == {}
    assert set(environment_parents({**ours, "https_proxy": CORP, "HTTPS_PROXY": CORP})) == {"https"}


@pytest.mark.parametrize(
    ("parent", "listening", "expected"),
    [
        ("http://127.0.0.1:8797", [("127.0.0.1", 8797)], True),
        ("http://localhost:8797", [("127.0.0.1", 8797)], True),
        ("http://localhost:8797", [("0.0.0.0", 8797)], True),
        ("http://[::1]:8797", [("::", 8797)], True),
        ("http://127.0.0.1:3128", [("127.0.0.1", 8797)], False),
        ("http://10.0.0.5:8797", [("0.0.0.0", 8797)], True),  # own address, wildcard listener
        ("http://10.0.0.6:8797", [("0.0.0.0", 8797)], False),
        ("http://10.0.0.5:8797", [("127.0.0.1", 8797)], False),
    ],
)
def test_a_proxy_recognises_its_own_address(
    parent: str, listening: list[tuple[str, int]], expected: bool
) -> None:
    def own(address: IPAddress) -> bool:
        return address == ipaddress.ip_address("10.0.0.5")

    assert points_at(parse_parent(parent), listening, own) is expected


def test_itself_from_the_environment_is_dropped_and_configured_is_an_error() -> None:
    listening = [("127.0.0.1", 8797)]
    from_env = ParentProxy("127.0.0.1", 8797, source="HTTPS_PROXY")
    assert without_self({"https": from_env}, listening, never_own) == {}
    with pytest.raises(ParentURLError, match="send its traffic to itself"):
        without_self({"https": ParentProxy("127.0.0.1", 8797)}, listening, never_own)


def test_flags_override_the_environment_which_overrides_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        'upstream_proxy = "http://file.test:3128"\nupstream_proxy_bypass = "a.test"\n'
    )
    origin = Origin("https", "pkg.test", 443)
    from_file = build_config({}, config_file, {})
    assert str(from_file.parent_for(origin)) == "http://file.test:3128"
    assert from_file.parent_for(Origin("https", "a.test", 443)) is None
    environ = {"HTTPS_PROXY": CORP, "NO_PROXY": "pkg.test"}
    from_env = build_config({}, config_file, environ)
    assert from_env.parent_for(origin) is None  # NO_PROXY names it
    assert str(from_env.parent_for(Origin("https", "b.test", 443))) == CORP
    assert from_env.parent_for(Origin("http", "b.test", 80)) is None  # no http_proxy
    flagged = build_config(
        {"upstream_proxy": "flag.test:1", "upstream_proxy_bypass": ""}, config_file, environ
    )
    assert str(flagged.parent_for(origin)) == "http://flag.test:1"
    assert build_config({"upstream_proxy": "none"}, config_file, environ).upstream_proxies == {}


def test_a_parent_file_with_credentials_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "parent"
    path.write_text("http://user:secret@corp.test:3128\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        build_config({"upstream_proxy_file": path})
    path.chmod(0o600)
    parent = build_config({"upstream_proxy_file": path}).upstream_proxies["https"]
    assert parent.credentials == "user:secret" and parent.source == str(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
