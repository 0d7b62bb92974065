"""What a client process needs to go through a proxy: the proxy variables, and CA variables
pointing at a bundle of the system roots plus our CA (clients that replace their trust store
with the bundle still reach passthrough hosts, which show the origin's own certificate)."""

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
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
BUNDLE_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "CARGO_HTTP_CAINFO",
)
NO_PROXY = "localhost,127.0.0.1,::1"


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


def client_environment(proxy_url: str, bundle: Path, ca_cert: Path) -> dict[str, str]:
    """Variables (both cases of the proxy ones) that send pip, uv, git, curl, cargo and npm
    through the proxy and make them trust it."""
    env: dict[str, str] = {}
    for name in PROXY_VARIABLES:
        env[name] = env[name.lower()] = proxy_url
    env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
    for name in BUNDLE_VARIABLES:
        env[name] = str(bundle)
    env["NODE_EXTRA_CA_CERTS"] = str(ca_cert)
    return env
