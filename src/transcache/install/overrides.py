"""Client settings that win over the proxy variables and so send a client past the proxy, or
make it trust a CA file without ours: what `transcache doctor` reports besides its fetches.

Detection is data: each row of OVERRIDES names a client, where its setting lives (a
`Source`), the key (a case-insensitive pattern), whether it concerns the proxy or the CA,
the variable that wins over it when set (then it is harmless in this shell), and the fix.
`read` collects each source's settings (files, `git config`, `apt-config dump`, the
variables that act as settings), in the order the client applies them; `find` is pure: a
proxy setting is a problem unless it names our proxy, a CA setting unless its file holds our
CA (unknown CA: not judged).
"""

from __future__ import annotations

import configparser
import enum
import os
import re
import subprocess
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import node

COMMAND_TIMEOUT = 30.0
GIT_COMMAND = ("git", "config", "--show-origin", "-z", "--get-regexp", r"^http\.")
APT_COMMAND = ("apt-config", "dump")
# `Key "value";` lines of `apt-config dump`.
APT_LINE = re.compile(r'^(\S+) "(.*)";$')
GLOBAL_PIP_CONF = (Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf"))
CARGO_FILES = ("config", "config.toml")
# Variables that act as settings, by the key they set (npm's: see _npm_variables).
PIP_VARIABLES = {"PIP_PROXY": "proxy", "PIP_CERT": "cert"}
CARGO_VARIABLES = {"CARGO_HTTP_PROXY": "http.proxy"}
NPM_VARIABLE_KEYS = ("proxy", "https-proxy", "cafile")
DEFAULT_PORTS = {"http": 80, "https": 443}
# apt's value for "no proxy for this host".
APT_DIRECT = "DIRECT"


class Source(enum.Enum):
    GIT = "git config"
    NPMRC = "npmrc"
    PIP_CONF = "pip.conf"
    CARGO = "cargo config"
    APT = "apt-config dump"


class Concern(enum.Enum):
    PROXY = "sends it past the proxy"
    CA = "makes it trust a CA file without the transcache CA"


@dataclass(frozen=True)
class Override:
    client: str
    source: Source
    key: str
    concern: Concern
    # Placeholders: {origin}, {key}, {bundle}.
    fix: str
    # A variable that wins over the setting when set (transcache sets it).
    overridden_by: str | None = None

    def matches(self, source: Source, key: str) -> bool:
        return source is self.source and re.fullmatch(self.key, key, re.IGNORECASE) is not None


_GIT_UNSET = "run `git config --file {origin} --unset {key}`"
_DELETE_LINE = "delete `{key}` from {origin}"
OVERRIDES = (
    Override("git", Source.GIT, r"http\.(.+\.)?proxy", Concern.PROXY, _GIT_UNSET),
    Override(
        "git",
        Source.GIT,
        r"http\.(.+\.)?sslcainfo",
        Concern.CA,
        _GIT_UNSET + ", or set it to {bundle}",
        "GIT_SSL_CAINFO",
    ),
    Override("npm", Source.NPMRC, r"(https-)?proxy", Concern.PROXY, _DELETE_LINE),
    Override(
        "npm",
        Source.NPMRC,
        "cafile",
        Concern.CA,
        "run `transcache install` (it sets npm's user-level cafile), or "
        "`npm config set cafile {bundle}`",
    ),
    Override("pip", Source.PIP_CONF, "proxy", Concern.PROXY, _DELETE_LINE),
    # pip hands its `cert` to requests, which prefers REQUESTS_CA_BUNDLE.
    Override(
        "pip",
        Source.PIP_CONF,
        "cert",
        Concern.CA,
        _DELETE_LINE + ", or set it to {bundle}",
        "REQUESTS_CA_BUNDLE",
    ),
    Override(
        "cargo",
        Source.CARGO,
        r"http\.proxy",
        Concern.PROXY,
        "delete `proxy` from the [http] table of {origin}",
    ),
    Override(
        "cargo",
        Source.CARGO,
        r"http\.cainfo",
        Concern.CA,
        "delete `cainfo` from the [http] table of {origin}, or set it to {bundle}",
        "CARGO_HTTP_CAINFO",
    ),
    Override(
        "apt",
        Source.APT,
        r"Acquire::https?::Proxy(::.+)?",
        Concern.PROXY,
        "delete it from the file that sets it (`grep -rn {key} /etc/apt`), then "
        "`transcache install --apt`",
    ),
    Override(
        "apt",
        Source.APT,
        r"Acquire::https::CAInfo",
        Concern.CA,
        "delete it from the file that sets it (`grep -rn {key} /etc/apt`), then "
        "`transcache install --apt`",
    ),
)


@dataclass(frozen=True)
class Setting:
    key: str
    value: str
    origin: str


@dataclass(frozen=True)
class Conflict:
    client: str
    message: str


# -- pure: what the settings mean -------------------------------------------------------------


def _address(url: str) -> tuple[str, int | None] | None:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        return (parts.hostname or "").lower(), parts.port or (
            443 if parts.scheme == "https" else 80
        )
    except ValueError:
        return None


def names_proxy(value: str, proxy_url: str) -> bool:
    """Whether a proxy setting's value is our proxy (user names and paths aside)."""
    return value != APT_DIRECT and _address(value) == _address(proxy_url)


def holds_ca(path: str, ca_pem: bytes) -> bool:
    try:
        return ca_pem.strip() in Path(path).expanduser().read_bytes()
    except OSError:
        return False


def find(
    settings: Mapping[Source, Sequence[Setting]],
    env: Mapping[str, str],
    proxy_url: str,
    ca_pem: bytes | None,
    bundle: str,
) -> list[Conflict]:
    """A conflict per setting that wins over the variables and bypasses the proxy or its CA;
    for a key set more than once, only the value the client uses (the last)."""
    found: dict[tuple[str, str], Conflict] = {}
    for source, items in settings.items():
        for item in items:
            row = next((r for r in OVERRIDES if r.matches(source, item.key)), None)
            if row is None or (row.overridden_by and env.get(row.overridden_by)):
                continue
            key = (row.client, item.key.lower())
            found.pop(key, None)
            if row.concern is Concern.PROXY and names_proxy(item.value, proxy_url):
                continue
            if row.concern is Concern.CA and (ca_pem is None or holds_ca(item.value, ca_pem)):
                continue
            fix = row.fix.format(origin=item.origin, key=item.key, bundle=bundle)
            message = (
                f"{item.origin} sets {item.key}={item.value}, which {row.concern.value}: {fix}"
            )
            found[key] = Conflict(row.client, message)
    return list(found.values())


def parse_git(output: str) -> list[Setting]:
    """`git config --show-origin -z --get-regexp` output: origin NUL key LF value NUL."""
    fields = output.split("\0")
    settings = []
    for origin, entry in zip(fields[::2], fields[1::2], strict=False):
        key, _, value = entry.partition("\n")
        settings.append(Setting(key, value, origin.removeprefix("file:")))
    return settings


def parse_apt(output: str) -> list[Setting]:
    return [
        Setting(match[1], match[2], "apt's configuration")
        for line in output.splitlines()
        if (match := APT_LINE.match(line.strip()))
    ]


def parse_pip_conf(text: str, origin: str) -> list[Setting]:
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(text)
    except configparser.Error:
        return []  # pip refuses the file too, and says so
    return [
        Setting(key, value, origin)
        for section in parser.sections()
        for key, value in parser.items(section)
    ]


def parse_cargo(text: str, origin: str) -> list[Setting]:
    try:
        http = tomllib.loads(text).get("http", {})
    except tomllib.TOMLDecodeError:
        return []
    if not isinstance(http, dict):
        return []
    return [Setting(f"http.{key}", str(value), origin) for key, value in http.items()]


def variable_settings(env: Mapping[str, str], names: Mapping[str, str]) -> list[Setting]:
    """Variables that act as a client's settings: `names` maps each to the key it sets."""
    return [
        Setting(key, env[name], f"the {name} variable")
        for name, key in names.items()
        if env.get(name)
    ]


def _npm_variables(keys: Iterable[str]) -> dict[str, str]:
    """npm reads npm_config_KEY in either case, with `_` for the `-` of a key."""
    names = {}
    for key in keys:
        name = "npm_config_" + key.replace("-", "_")
        names[name] = names[name.upper()] = key
    return names


# -- reading them -----------------------------------------------------------------------------


def command_output(
    argv: Sequence[str], env: Mapping[str, str], timeout: float = COMMAND_TIMEOUT
) -> str:
    """What a command that reads configuration prints ("" when it cannot run)."""
    try:
        result = subprocess.run(
            list(argv),
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""  # not installed, or stuck: nothing it could tell us
    return result.stdout


def _text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _pip_files(env: Mapping[str, str], home: Path, system: Iterable[Path]) -> list[Path]:
    """pip's configuration files in the order it loads them (the later wins)."""
    configured = env.get("PIP_CONFIG_FILE")
    if configured == os.devnull:
        return []  # pip's way to load none
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    files = [*system, home / ".pip" / "pip.conf", config_home / "pip" / "pip.conf"]
    if env.get("VIRTUAL_ENV"):
        files.append(Path(env["VIRTUAL_ENV"]) / "pip.conf")
    return files + ([Path(configured)] if configured else [])


@dataclass(frozen=True)
class SystemFiles:
    """The machine-wide configuration files read besides the user's (tests pass none)."""

    npmrc: tuple[Path, ...] = node.GLOBAL_NPMRC
    pip_conf: tuple[Path, ...] = GLOBAL_PIP_CONF


def read(
    env: Mapping[str, str], home: Path, system: SystemFiles = SystemFiles()
) -> dict[Source, list[Setting]]:
    npm = node.npm_settings(home, system.npmrc)
    pip = [
        setting
        for path in _pip_files(env, home, system.pip_conf)
        if (text := _text(path)) is not None
        for setting in parse_pip_conf(text, str(path))
    ]
    cargo_home = Path(env.get("CARGO_HOME") or home / ".cargo")
    cargo = [
        setting
        for name in CARGO_FILES
        if (text := _text(cargo_home / name)) is not None
        for setting in parse_cargo(text, str(cargo_home / name))
    ]
    return {
        Source.GIT: parse_git(command_output(GIT_COMMAND, env)),
        Source.NPMRC: [
            *(Setting(key, s.value, str(s.origin)) for key, s in npm.items()),
            *variable_settings(env, _npm_variables(NPM_VARIABLE_KEYS)),
        ],
        Source.PIP_CONF: [
            *pip,
            *variable_settings(env, {"PIP_PROXY": "proxy", "PIP_CERT": "cert"}),
        ],
        Source.CARGO: [*cargo, *variable_settings(env, CARGO_VARIABLES)],
        Source.APT: parse_apt(command_output(APT_COMMAND, env)),
    }
