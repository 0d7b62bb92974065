"""The only place that knows platform directories."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "transcache"
# In the CA dir: the system roots plus our CA, for clients that read one bundle file.
BUNDLE_NAME = "bundle.pem"


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    """The user data dir: the CA, and what `transcache install` generates and records."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_ca_dir() -> Path:
    # The CA lives apart from the cache: clearing the cache never touches it.
    return data_dir() / "ca"


def xdg_config_home() -> Path:
    """Where systemd user units, environment.d and fish's conf.d live (XDG, on macOS too)."""
    configured = os.environ.get("XDG_CONFIG_HOME")
    return Path(configured) if configured else Path.home() / ".config"


def launch_agents_dir() -> Path:
    return Path.home() / "Library" / "LaunchAgents"


def macos_log_dir() -> Path:
    return Path.home() / "Library" / "Logs" / APP_NAME


def default_config_file() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / "config.toml"
