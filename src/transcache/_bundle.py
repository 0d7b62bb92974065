"""The CA bundle clients are pointed at: the system roots plus our CA (clients that replace
their trust store with the bundle still reach passthrough hosts, which show the origin's own
certificate)."""

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


def system_bundle() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.openssl_cafile, *SYSTEM_BUNDLES):
        if candidate and os.path.isfile(candidate):
            return Path(candidate)
    return None


def write_bundle(path: Path, ca_pem: bytes) -> Path:
    """Write system roots + `ca_pem` to `path` atomically (readers never see half a file)."""
    system = system_bundle()
    parts = [system.read_bytes().rstrip(b"\n") + b"\n"] if system else []
    parts.append(ca_pem)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bundle-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(parts))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
