"""The service's parent proxy: which one `install` records, and the 0600 file it goes in.

A machine that reaches the internet only through a proxy (HTTPS_PROXY set where `install`
runs) keeps it: the service goes through it, while the shells' variables point at the
service. Chosen in this order: --upstream-proxy (a URL or `none`) or --upstream-proxy-file,
the environment's https_proxy, then http_proxy (unless they point at a transcache: a shell
set up by an earlier install), then what the earlier install recorded. The bypass list
likewise: --upstream-proxy-bypass, the environment's NO_PROXY (unless it is the one an
earlier install wrote), the earlier install's. Uninstall removes the file and our variables,
and the machine's own settings (wherever they are set) apply again.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .._config import read_parent_file
from .._parent import (
    NO_PARENT,
    ParentProxy,
    environment_bypass,
    environment_parents,
    parse_bypass,
    parse_parent,
    points_at,
)
from .plan import Step, WriteFile
from .settings import Settings, parent_file_path

PRIVATE_FILE_MODE = 0o600


def _not_own(address: object) -> bool:
    # The service listens on loopback (inputs.py): its own address is a loopback one.
    return False


def chosen_parent(
    given: str | None,
    given_file: Path | None,
    environ: Mapping[str, str],
    settings: Settings,
    previous: Settings | None,
) -> ParentProxy | None:
    """The parent the service is to use (see the module comment); `settings` are the ones
    being installed, `previous` the earlier install's."""
    if given is not None:
        return None if given.strip().lower() == NO_PARENT else parse_parent(given)
    if given_file is not None:
        return read_parent_file(given_file)
    listening = [(settings.listen_host, settings.listen_port)]
    parents = environment_parents(environ)
    for scheme in ("https", "http"):
        parent = parents.get(scheme)
        if parent is not None and not points_at(parent, listening, _not_own):
            return parent
    if previous is not None and previous.upstream_proxy is not None:
        path = parent_file_path()
        return read_parent_file(path) if path.exists() else previous.upstream_proxy
    return None


def chosen_bypass(
    given: str | None, environ: Mapping[str, str], settings: Settings, previous: Settings | None
) -> tuple[str, ...]:
    if given is not None:
        return parse_bypass(given)
    ours = parse_bypass(settings.environment()["NO_PROXY"])
    bypass = environment_bypass(environ)
    if bypass is not None and bypass != ours:
        return bypass
    return previous.upstream_proxy_bypass if previous is not None else ()


def steps(settings: Settings) -> list[Step]:
    """The parent's URL, credentials included, in a file only the user can read."""
    if settings.upstream_proxy is None:
        return []
    content = (settings.upstream_proxy.url + "\n").encode()
    return [WriteFile(parent_file_path(), content, PRIVATE_FILE_MODE, secret=True)]
