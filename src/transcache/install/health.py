"""Is a transcache proxy answering at a URL? One direct GET of /healthz, never through a
proxy (the variables may point at the very proxy we are asking about)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from .._launch import STATS_PAGE

HEALTH_TIMEOUT = 2.0
HEALTH_BODY = b"ok\n"


def fetch(url: str, path: str, timeout: float = HEALTH_TIMEOUT) -> bytes | None:
    """The body of a 200 for GET `url` + `path`, asked directly; None for anything else."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}{path}", timeout=timeout) as response:
            return bytes(response.read()) if response.status == 200 else None
    except (OSError, urllib.error.URLError, ValueError):
        return None


def answers(url: str, timeout: float = HEALTH_TIMEOUT) -> bool:
    return fetch(url, "/healthz", timeout) == HEALTH_BODY


def leaf_rejections(url: str) -> dict[str, dict[str, Any]]:
    """Per host, how often clients rejected the proxy's certificate, and which clients
    (the proxy's /tls-rejections page); {} when it cannot be read."""
    return fetch_json(url, "/tls-rejections")


def live_stats(url: str) -> dict[str, Any]:
    """The cache's counters as the running proxy has them this instant (its stats page);
    {} when it cannot be read."""
    return fetch_json(url, STATS_PAGE)


def fetch_json(url: str, path: str) -> dict[str, Any]:
    """The JSON object at `url` + `path`; {} for anything else."""
    body = fetch(url, path)
    try:
        data = json.loads(body) if body is not None else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
