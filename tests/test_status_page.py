"""The status page at GET /, rendered by a real browser: Debian's headless Chromium driven by
selenium through Debian's chromedriver, given by path, so Selenium Manager never runs (and
never downloads a driver or a browser). Chromium runs with background networking, component
updates and sync off, in a throwaway profile; the page needs nothing but the proxy."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from tests.origin import Origin
from transcache import Proxy

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WHEEL = "/packages/ab/cd/0123456789abcdef0123/demo-1.0-py3-none-any.whl"
TARBALL = "/demo/-/demo-2.1.0.tgz"
# The docs' screenshot (docs/usage.md); rewritten by a run with TRANSCACHE_SCREENSHOT=1.
SCREENSHOT = Path(__file__).parent.parent / "docs" / "status-page.png"

pytestmark = [
    pytest.mark.slow,  # a real browser
    pytest.mark.skipif(
        shutil.which(CHROMEDRIVER) is None, reason="needs Debian's chromium-driver (./dev test)"
    ),
]


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    # A driver given by path needs no Selenium Manager; this makes any attempt to use it
    # fail instead of downloading (and keeps its statistics reporting off).
    monkeypatch.setenv("SE_MANAGER_PATH", str(tmp_path / "no-selenium-manager"))
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1100,1400",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = WebDriver(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_entries(url: str, count: int, timeout: float = 10.0) -> None:
    """Until the proxy at `url` says it stores `count` entries."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(url + "/stats.json", timeout=timeout) as answer:
            if json.loads(answer.read())["entries"] >= count or time.monotonic() > deadline:
                return
        time.sleep(0.02)


def test_status_page_shows_a_known_sequence_of_requests(
    browser: WebDriver, tmp_path: Path, plain_origin: Origin
) -> None:
    plain_origin.add_file(WHEEL, b"w" * 300_000, headers={"Cache-Control": "max-age=3600"})
    plain_origin.add_file(TARBALL, b"t" * 5000, headers={"Cache-Control": "max-age=3600"})
    resolve = {("files.test", plain_origin.port): "127.0.0.1"}
    with Proxy(
        ca_dir=tmp_path / "ca",
        cache_dir=tmp_path / "cache",
        resolve=resolve,
        passthrough=["*.internal.test"],
    ) as proxy:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy.url}))
        wheel = plain_origin.url("files.test", WHEEL)
        for url in (wheel, wheel, wheel, plain_origin.url("files.test", TARBALL)):
            with opener.open(url, timeout=30) as response:
                response.read()
        with pytest.raises(urllib.error.HTTPError):
            opener.open(plain_origin.url("files.test", "/missing"), timeout=30)
        wait_for_entries(proxy.url, 3)  # clients have their bytes before the publish ends
        driver = browser
        driver.get(proxy.url + "/")
        page = driver.find_element(By.TAG_NAME, "body").text
        if os.environ.get("TRANSCACHE_SCREENSHOT") == "1":
            driver.save_screenshot(str(SCREENSHOT))
        # selenium leaves get_log untyped.
        console = driver.get_log("browser")  # type: ignore[no-untyped-call]

    def row(table: str, name: str) -> list[str]:
        element = driver.find_element(By.ID, table)
        for line in element.text.splitlines():
            if line.startswith(name + " "):
                return [str(cell) for cell in line.split()]
        raise AssertionError(f"no {name!r} row in {element.text!r}")

    assert page.startswith("transcache ")
    assert "requests 5" in page
    assert "hit ratio (requests) 40.0%" in page  # 2 hits of 5
    # pypi: 3 requests, 2 hits; npm: 1 request, a miss; the 404 was passed on from the origin.
    assert row("ecosystems", "pypi")[1:4] == ["3", "2", "66.7%"]
    assert row("ecosystems", "npm")[1:4] == ["1", "0", "0.0%"]
    assert row("hosts", "files.test")[1:3] == ["5", "2"]
    assert "entries 3" in page  # the 404 is stored too
    misses = driver.find_element(By.ID, "misses").text
    assert wheel in misses and "/demo/-/demo-2.1.0.tgz" in misses
    assert "*.internal.test" in driver.find_element(By.ID, "passthrough").text
    assert console == []
