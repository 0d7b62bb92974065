"""The CA bundles clients are pointed at. Each is a base set of certificates plus our CA:
the system roots for the bundle most variables name (clients that replace their trust store
with it still reach passthrough hosts, which show the origin's own certificate), or the
user's own certificates where a client already had some (NODE_EXTRA_CA_CERTS, npm's
`cafile`), so pointing that client at us keeps what it trusted."""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import tempfile
from pathlib import Path

# Where Debian, Fedora, Arch/SUSE and macOS (Homebrew) keep the system bundle.
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
)
# In the CA dir, next to the main bundle (_paths.BUNDLE_NAME): the user's own certificates
# plus ours, for Node's NODE_EXTRA_CA_CERTS and for npm's `cafile`.
NODE_BUNDLE_NAME = "node-bundle.pem"
NPM_BUNDLE_NAME = "npm-bundle.pem"
# The same for a proxy started by hand (run, exec, the API) from a shell whose
# NODE_EXTRA_CA_CERTS names the user's own file: named by its content, so that proxies
# started together write the same bytes under the same name.
NODE_EXTRA_PREFIX = "node-extra-"

log = logging.getLogger("transcache")


def system_bundle() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.openssl_cafile, *SYSTEM_BUNDLES):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    return None


def is_system_bundle(path: Path) -> bool:
    """Whether `path` is (a link to) the system bundle, which the main bundle already holds."""
    system = system_bundle()
    return system is not None and path.resolve() == system.resolve()


def combine(base: bytes, ca_pem: bytes) -> bytes:
    """`base` (PEM certificates, possibly none) followed by `ca_pem`."""
    head = base.rstrip(b"\n")
    return (head + b"\n" if head else b"") + ca_pem


def write_bundle(path: Path, ca_pem: bytes) -> Path:
    """Write system roots + `ca_pem` to `path` atomically (readers never see half a file)."""
    system = system_bundle()
    return _write(path, combine(system.read_bytes() if system else b"", ca_pem))


def node_ca_for(ca_pem: bytes, ca_path: Path, bundle: Path, theirs: str | None) -> Path:
    """What NODE_EXTRA_CA_CERTS should name for clients of the proxy whose CA is at `ca_path`
    (`bundle` beside it), given the variable's value `theirs`: our CA alone; the bundle, for
    the system bundle; a file of ours already (a shell set up by transcache) as it is; else
    their certificates plus ours. Node adds the file to its roots, so keeping theirs keeps
    what it reached before: passthrough hosts, hosts it reaches directly."""
    if not theirs:
        return ca_path
    path = Path(theirs)
    if path.parent == ca_path.parent:
        return path
    if is_system_bundle(path):
        return bundle
    try:
        content = combine(path.read_bytes(), ca_pem)
    except OSError as exc:
        log.warning("cannot read NODE_EXTRA_CA_CERTS=%s (%s): Node gets our CA only", path, exc)
        return ca_path
    name = f"{NODE_EXTRA_PREFIX}{hashlib.sha256(content).hexdigest()[:16]}.pem"
    return _write(ca_path.parent / name, content)


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bundle-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
