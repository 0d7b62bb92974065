"""The CA bundles clients are pointed at. Each is a base set of certificates plus our CA:
the system roots for the bundle most variables name (clients that replace their trust store
with it still reach passthrough hosts, which show the origin's own certificate), or the
user's own certificates where a client already had some (NODE_EXTRA_CA_CERTS, npm's
`cafile`), so pointing that client at us keeps what it trusted."""

from __future__ import annotations

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
    content = combine(system.read_bytes() if system else b"", ca_pem)
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
