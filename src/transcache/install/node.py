"""Node and npm, whose trust settings name one file each, so pointing them at ours must keep
what the user had.

- NODE_EXTRA_CA_CERTS adds one file's certificates to Node's roots. When the user already
  had one, install writes the node bundle (their certificates, then our CA) and points the
  variable there, or at the main bundle when theirs is the system bundle
  (`Settings.node_ca_path`); the settings record which file was theirs, so an
  install run again from a shell that already has our value still knows.
- npm trusts its `cafile` alone when an npmrc sets one (Debian's /etc/npmrc does), and then
  ignores NODE_EXTRA_CA_CERTS. Install then sets npm's user-level `cafile` in our fenced
  block at the end of ~/.npmrc (the last value wins): the main bundle when their `cafile` is
  the system bundle, which it holds, else the npm bundle, their file plus our CA. Uninstall
  removes the block, leaving ~/.npmrc byte for byte as it was (or gone, if install made it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .._bundle import combine, is_system_bundle
from .._launch import NODE_CA_VARIABLE
from .blocks import find_block, render_block
from .files import decode
from .plan import EditBlock, Step, WriteFile
from .settings import Settings

USER_NPMRC = ".npmrc"
# Global and built-in npmrc files, the user's ~/.npmrc overriding them.
GLOBAL_NPMRC = (
    Path("/etc/npmrc"),
    Path("/usr/etc/npmrc"),
    Path("/usr/local/etc/npmrc"),
    Path("/usr/share/nodejs/npm/npmrc"),
)
NPM_CAFILE = "cafile"
# Inline certificates: npm trusts them alone too, but there is no file to add ours to.
NPM_INLINE_CA = "ca"
NPMRC_COMMENTS = ("#", ";")


@dataclass(frozen=True)
class NpmSetting:
    value: str
    origin: Path


def parse_npmrc(text: str, *, without_ours: bool = False) -> dict[str, str]:
    """The `key = value` lines of an npmrc (ini, no sections in practice), the last value of
    a key winning as in npm; `without_ours`: as if our block were not there."""
    span = find_block(text) if without_ours else None
    if span is not None:
        text = text[: span[0]] + text[span[1] :]
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(NPMRC_COMMENTS) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        settings[key.strip().lower()] = value.strip().strip("\"'")
    return settings


def npm_settings(
    home: Path, global_files: Iterable[Path], *, without_ours: bool = False
) -> dict[str, NpmSetting]:
    """npm's settings from its global files and then ~/.npmrc, each key from the file that
    wins it."""
    effective: dict[str, NpmSetting] = {}
    for path in (*reversed(tuple(global_files)), home / USER_NPMRC):
        try:
            content = path.read_bytes()
        except OSError:
            continue  # absent, or not ours to read: npm cannot read it either
        for key, value in parse_npmrc(decode(content), without_ours=without_ours).items():
            effective[key] = NpmSetting(value, path)
    return effective


def user_node_ca(
    environ: Mapping[str, str], settings: Settings, previous: Settings | None
) -> Path | None:
    """The user's own NODE_EXTRA_CA_CERTS: the variable's value, unless it is one of our own
    files (a shell with our variables), then what the previous install recorded."""
    value = environ.get(NODE_CA_VARIABLE)
    if not value:
        return None
    ours = {settings.ca_path, settings.node_bundle_path}
    if previous is not None:
        ours |= {previous.ca_path, previous.node_bundle_path}
    if Path(value) in ours:
        return previous.node_extra_ca_certs if previous is not None else None
    return Path(value)


def _theirs(path: Path, what: str, notes: list[str]) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        notes.append(f"cannot read {what} {path} ({exc.strerror}): it holds only our CA now")
        return b""


def steps(
    settings: Settings, home: Path, ca_pem: bytes, global_npmrc: Iterable[Path]
) -> tuple[list[Step], list[str]]:
    """The node bundle, npm's user-level `cafile` and the files it names; notes for the user."""
    result: list[Step] = []
    notes: list[str] = []
    if settings.node_extra_ca_certs is not None and settings.node_ca_path != settings.bundle_path:
        theirs = _theirs(settings.node_extra_ca_certs, NODE_CA_VARIABLE, notes)
        result.append(WriteFile(settings.node_bundle_path, combine(theirs, ca_pem)))
    npm = npm_settings(home, global_npmrc, without_ours=True)
    cafile = npm.get(NPM_CAFILE)
    if cafile is not None:
        path = Path(cafile.value).expanduser()
        target = settings.bundle_path
        if path not in (settings.bundle_path, settings.npm_bundle_path) and not is_system_bundle(
            path
        ):
            target = settings.npm_bundle_path
            theirs = _theirs(path, f"npm's cafile (set in {cafile.origin})", notes)
            result.append(WriteFile(target, combine(theirs, ca_pem)))
        result.append(
            EditBlock(home / USER_NPMRC, render_block(f"{NPM_CAFILE}={target}"), create=True)
        )
    elif (inline := npm.get(NPM_INLINE_CA)) is not None:
        notes.append(
            f"{inline.origin} sets `ca`, so npm trusts those certificates alone: add the "
            f"transcache CA ({settings.ca_path}) to them, or use `cafile` and install again"
        )
    return result, notes
