"""The only place that knows platform directories."""

from __future__ import annotations

from pathlib import Path

import platformdirs

APP_NAME = "transcache"


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def default_ca_dir() -> Path:
    # The CA lives apart from the cache: clearing the cache never touches it.
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "ca"
