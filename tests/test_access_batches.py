"""The access log is written in batches, and loses no line to that: every request has its
line in the file after a reload (SIGHUP, the file rotated) and after a clean stop, at once."""

from __future__ import annotations

from pathlib import Path

from .clients import curl
from .conftest import StartProxy
from .origin import Origin, client_env
from .test_reload import reload

REQUESTS = 40


def _fetch_all(env: dict[str, str], urls: list[str], config: Path) -> None:
    """GET every URL over one connection (one curl process)."""
    config.write_text("".join(f'url = "{url}"\noutput = "/dev/null"\n' for url in urls))
    curl(env, "--fail", "--config", str(config))


def test_every_access_line_survives_a_reload_and_a_clean_stop(
    origin: Origin, start_proxy: StartProxy, home: Path, tmp_path: Path
) -> None:
    access_log = tmp_path / "access.log"
    proxy = start_proxy(origin, args=["--access-log", str(access_log)])
    env = client_env(home, proxy.env())
    before = [origin.url("files.test", f"/bytes/{n}?before") for n in range(1, REQUESTS)]
    after = [origin.url("files.test", f"/bytes/{n}?after") for n in range(1, REQUESTS)]
    _fetch_all(env, before, tmp_path / "before.curl")
    rotated = access_log.rename(tmp_path / "access.log.1")
    reload(proxy, 1)  # the lines waiting to be written go to the file that was moved
    _fetch_all(env, after, tmp_path / "after.curl")
    assert proxy.stop() == 0

    old, new = rotated.read_text(), access_log.read_text()
    for url in before:
        assert old.count(f" {url} ") == 1, url
    for url in after:
        assert new.count(f" {url} ") == 1, url
    assert "?before" not in new
