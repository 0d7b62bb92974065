"""`transcache selftest` against loopback origins that behave like the registries: every
installed client runs cold and warm through the selftest's own proxy, and the table says the
warm run was answered from the cache (for a cargo that reads only git indexes, all but its
ref discovery)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from transcache.cli import main

from .conftest import REGISTRY_NAMES
from .origin import Origin
from .registries import (
    DEB_PACKAGE,
    DEB_SUITE,
    add_crates,
    add_debian,
    add_goproxy,
    add_npm,
    add_pypi,
    cargo_reads_sparse,
)

# One line of the table: client, cold and warm requests, warm from cache, warm upstream, rate.
ROW = re.compile(r"^(\w+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+%)$")


def test_selftest_reports_every_warm_run_answered_from_the_cache(
    registry: Origin,
    origin_ca_pem: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def url(host: str, path: str = "") -> str:
        return registry.url(host, path)

    repo = add_debian(registry, tmp_path / "repo")
    options = {
        "pip": (url("pypi.test", "/simple/"), add_pypi(registry, tmp_path / "dists")[0]),
        "uv": (url("pypi.test", "/simple/"), "tcalpha"),
        "npm": (url("npm.test", "/"), add_npm(registry, url("npm.test", "/"))[0]),
        "apt": (
            f"deb [signed-by={repo.keyring}] {url('deb.test', '/debian')} {DEB_SUITE} main",
            DEB_PACKAGE,
        ),
        "go": (url("goproxy.test"), add_goproxy(registry)),
        "cargo": (
            add_crates(registry, url("crates.test"), url("git.test"), tmp_path),
            "tcfoo@1.0.0",
        ),
    }
    argv = ["selftest", "--upstream-ca", str(origin_ca_pem)]
    for name in REGISTRY_NAMES:
        argv += ["--resolve", f"{name}:{registry.port}:127.0.0.1"]
    for client, (registry_url, package) in options.items():
        argv += ["--registry", f"{client}={registry_url}", "--package", f"{client}={package}"]

    status = main(argv)

    output = capsys.readouterr().out
    rows = {m[1]: m.groups()[1:] for m in map(ROW.match, output.splitlines()) if m}
    assert set(rows) == set(options), output
    sparse = cargo_reads_sparse()
    for client, (cold, warm, hits, upstream, rate) in rows.items():
        assert int(cold) > 0 and int(warm) > 0, output
        if client == "cargo" and not sparse:  # git ref discovery (GET info/refs, ls-refs)
            assert (int(upstream), int(hits)) == (2, int(warm) - 2), output
        else:
            assert (upstream, hits, rate) == ("0", warm, "100%"), output
    assert status == (0 if sparse else 1), output


def test_selftest_names_a_client_it_does_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["selftest", "--registry", "bower=https://example.test/"])
    assert "unknown client 'bower'" in capsys.readouterr().err
