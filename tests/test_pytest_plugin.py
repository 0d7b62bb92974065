"""The pytest plugin, driving inner pytest runs (pytester, in subprocesses) whose tests run
`pip download` from the local index: `--transcache` routes them through one proxy, the summary
names the tests that went upstream, an offline run passes from the cache, and an offline miss
is reported with its test's node id and fails the run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .origin import Origin
from .packages import make_index

pytest_plugins = ["pytester"]

INNER_RUN_TIMEOUT = 300.0

PIP_HELPER = """
import os
import subprocess
import sys

INDEX = {index!r}


def pip_download(dest, *projects, env=None):
    return subprocess.run(
        [
            sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check",
            "--no-cache-dir", "download", "--dest", str(dest), "--index-url", INDEX, *projects,
        ],
        capture_output=True, text=True, timeout=300, env=env,
    )
"""

SUITE = """
from piphelper import pip_download


def test_downloads_alpha(tmp_path):
    result = pip_download(tmp_path, "alpha")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "alpha-1.0-py3-none-any.whl", "beta-1.0-py3-none-any.whl"
    ]


def test_needs_no_network():
    assert True
"""

GAPS = """
from piphelper import pip_download


def test_gamma_is_not_cached(tmp_path):
    result = pip_download(tmp_path, "gamma")
    assert result.returncode != 0  # the proxy answered 504: not in the cache
"""

FIXTURES = """
import os

from piphelper import pip_download


def test_fixtures_route_one_subprocess(tmp_path, transcache_proxy, transcache_env):
    assert "HTTPS_PROXY" not in os.environ or os.environ["HTTPS_PROXY"] != transcache_proxy.url
    assert transcache_env["SSL_CERT_FILE"].endswith("bundle.pem")
    result = pip_download(tmp_path, "delta", env=transcache_env)
    assert result.returncode == 0, result.stderr
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, origin: Origin, origin_ca_pem: Path) -> pytest.Pytester:
    """An inner project: the pip helper, three test files, and an ini that tells the proxy
    how to reach the origin (`transcache_args`: `transcache run` flags)."""
    make_index(origin, pytester.path / "dists")
    pytester.makepyfile(piphelper=PIP_HELPER.format(index=origin.url("index.test", "/simple/")))
    pytester.makepyfile(test_suite=SUITE, test_gaps=GAPS, test_fixtures=FIXTURES)
    pytester.makeini(
        "[pytest]\n"
        f"transcache_args = --resolve=index.test:{origin.port}:127.0.0.1"
        f" --upstream-ca={origin_ca_pem}\n"
    )
    return pytester


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        f"--transcache-arg=--ca-dir={pytester.path / 'ca'}",
        f"--transcache-dir={pytester.path / 'cache'}",
        *args,
        timeout=INNER_RUN_TIMEOUT,
    )


def summary(result: pytest.RunResult) -> str:
    """The plugin's part of the terminal summary."""
    text = result.stdout.str()
    start = text.index("transcache: ")
    return text[start:]


def test_session_passes_cold_then_offline_and_names_the_test_that_went_upstream(
    inner: pytest.Pytester, origin: Origin
) -> None:
    cold = run_inner(inner, "--transcache", "test_suite.py")
    cold.assert_outcomes(passed=2)
    assert cold.ret == 0
    report = summary(cold)
    upstream = re.search(
        r"tests that went upstream:\n  test_suite.py::test_downloads_alpha: (\d+) requests, "
        r"[\d.]+ (bytes?|KiB|MiB), [\d.]+s\n",
        report,
    )
    assert upstream is not None, report
    assert int(upstream[1]) >= 4  # two index pages and two wheels, at least
    assert "test_needs_no_network" not in report
    assert origin.requests

    requests_before = len(origin.requests)
    offline = run_inner(inner, "--transcache", "--transcache-offline", "test_suite.py")
    offline.assert_outcomes(passed=2)
    assert offline.ret == 0
    assert "no test went upstream" in summary(offline)
    assert "offline misses" not in summary(offline)
    assert origin.requests[requests_before:] == []


def test_offline_miss_is_reported_with_its_test_and_fails_the_run(
    inner: pytest.Pytester, origin: Origin
) -> None:
    run_inner(inner, "--transcache", "test_suite.py").assert_outcomes(passed=2)
    offline = run_inner(inner, "--transcache", "--transcache-offline")
    offline.assert_outcomes(passed=3, failed=1)  # the fixture test needs delta: not cached
    report = summary(offline)
    gamma = origin.url("index.test", "/simple/gamma/")
    delta = origin.url("index.test", "/simple/delta/")
    assert f"  test_gaps.py::test_gamma_is_not_cached: {gamma}\n" in report, report
    assert f"  test_fixtures.py::test_fixtures_route_one_subprocess: {delta}\n" in report
    assert "test_suite.py" not in report.partition("offline misses")[2]


def test_a_miss_fails_an_offline_run_even_when_every_test_passes(inner: pytest.Pytester) -> None:
    offline = run_inner(inner, "--transcache", "--transcache-offline", "test_gaps.py")
    offline.assert_outcomes(passed=1)
    assert offline.ret == pytest.ExitCode.TESTS_FAILED
    assert ", 1 offline miss\n" in summary(offline)


def test_without_the_flag_only_the_fixtures_use_a_proxy(inner: pytest.Pytester) -> None:
    result = run_inner(inner, "test_fixtures.py")
    result.assert_outcomes(passed=1)
    report = summary(result)
    assert "test_fixtures.py::test_fixtures_route_one_subprocess: " in report


def test_without_the_flag_nothing_changes(inner: pytest.Pytester) -> None:
    result = run_inner(inner, "test_suite.py::test_needs_no_network")
    result.assert_outcomes(passed=1)
    assert "transcache: " not in result.stdout.str()


def test_bad_transcache_flags_are_usage_errors(inner: pytest.Pytester) -> None:
    result = run_inner(inner, "--transcache", "--transcache-arg=--resolve=nonsense")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "bad transcache flags" in result.stderr.str()
