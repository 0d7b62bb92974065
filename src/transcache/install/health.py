"""Is a transcache proxy answering at a URL? One direct GET of /healthz, never through a
proxy (the variables may point at the very proxy we are asking about)."""

from __future__ import annotations

import urllib.error
import urllib.request

HEALTH_TIMEOUT = 2.0
HEALTH_BODY = b"ok\n"


def answers(url: str, timeout: float = HEALTH_TIMEOUT) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/healthz", timeout=timeout) as response:
            return bool(response.status == 200 and response.read() == HEALTH_BODY)
    except (OSError, urllib.error.URLError, ValueError):
        return False
