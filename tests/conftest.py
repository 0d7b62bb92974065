"""Shared fixtures: a test CA for the origins, origins on loopback, and `transcache run`
subprocesses that trust that CA upstream and resolve the origins' `.test` names to 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import trustme

from transcache._parent import BYPASS_VARIABLES, SCHEME_VARIABLES

from .origin import ORIGIN_NAMES, Origin, client_env, issue_origin_cert
from .proxyproc import ProxyProcess

StartProxy = Callable[..., ProxyProcess]

# Embedded proxies take the environment's parent proxy: the machine's must not reach the
# tests (a test that wants a parent names it).
for _name in (*SCHEME_VARIABLES["http"], *SCHEME_VARIABLES["https"], *BYPASS_VARIABLES):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def origin_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def origin_ca_pem(origin_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("origin-ca") / "origin-ca.pem"
    origin_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def origin(origin_ca: trustme.CA) -> Iterator[Origin]:
    """An HTTPS origin answering to files.test, index.test and git.test."""
    with Origin.start(issue_origin_cert(origin_ca)) as server:
        yield server
    assert not server.errors, server.errors


# Names the registry-like origin answers to (tests/registries.py builds its routes).
REGISTRY_NAMES = ("pypi.test", "npm.test", "deb.test", "goproxy.test", "crates.test", "git.test")


@pytest.fixture
def registry(origin_ca: trustme.CA) -> Iterator[Origin]:
    """An HTTPS origin for the registries of tests/registries.py, under REGISTRY_NAMES."""
    with Origin.start(issue_origin_cert(origin_ca, *REGISTRY_NAMES)) as server:
        yield server
    assert not server.errors, server.errors


@pytest.fixture
def plain_origin() -> Iterator[Origin]:
    """A plain-HTTP origin answering to the same names."""
    with Origin.start() as server:
        yield server
    assert not server.errors, server.errors


def resolve_names(*origins: Origin, names: Iterable[str] = ORIGIN_NAMES) -> list[tuple[str, int]]:
    return [(name, o.port) for o in origins for name in names if name != "127.0.0.1"]


@pytest.fixture
def start_proxy(tmp_path: Path, origin_ca_pem: Path) -> Iterator[StartProxy]:
    """Start `transcache run` routing the origins' `names`; extra CLI flags via `args`."""
    started: list[ProxyProcess] = []

    def start(
        *origins: Origin,
        args: Iterable[str] = (),
        name: str = "proxy",
        names: Iterable[str] = ORIGIN_NAMES,
    ) -> ProxyProcess:
        proxy = ProxyProcess.start(
            tmp_path / name,
            upstream_ca=[origin_ca_pem],
            resolve=resolve_names(*origins, names=names),
            args=args,
        )
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        assert proxy.stop() == 0 or proxy.killed, proxy.log
        assert "Traceback" not in proxy.log, proxy.log


@pytest.fixture
def proxy(start_proxy: StartProxy, origin: Origin, plain_origin: Origin) -> ProxyProcess:
    return start_proxy(origin, plain_origin)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def proxied_env(proxy: ProxyProcess, home: Path) -> dict[str, str]:
    """A client environment that goes through `proxy` and trusts its CA (and nothing else)."""
    return client_env(home, proxy.env())
