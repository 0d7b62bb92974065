"""`transcache status`: what is installed and whether it works, gathered without changing
anything: the service files and their enablement, the port answering /healthz, the CA's
expiry, the bundle's age, the trust stores recorded in the manifest that still hold the CA,
which variables the current environment lacks or has wrong, and, while installed, where the
logs are and how to start the service."""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography import x509

from . import launchd, systemd
from .health import answers, leaf_rejections, live_stats
from .manifest import Manifest
from .settings import Settings, manifest_path


@dataclass
class Status:
    installed: bool
    service_file: bool
    enabled: bool
    url: str
    answering: bool
    ca_path: str
    ca_expires: str | None
    bundle_path: str
    bundle_age_seconds: float | None
    trust_stores: list[str] = field(default_factory=list)
    missing_variables: list[str] = field(default_factory=list)
    wrong_variables: list[str] = field(default_factory=list)
    # Where the service logs and the command that starts it; "" when nothing is installed.
    logs: str = ""
    start: str = ""
    # The service's parent proxy, without credentials, and the hosts it reaches directly.
    upstream_proxy: str | None = None
    upstream_proxy_bypass: list[str] = field(default_factory=list)
    # host -> {"count": N, "clients": [...]}: clients that refused the proxy's certificate.
    tls_rejections: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The running proxy's cache stats, live (what `cache stats --json` prints); {} if down.
    cache: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def down(self) -> bool:
        """Installed, but nothing answers where the service should listen."""
        return self.installed and not self.answering


def collect(environ: Mapping[str, str], now: dt.datetime | None = None) -> Status:
    now = now or dt.datetime.now(dt.UTC)
    manifest = Manifest.load(manifest_path())
    settings = Settings.from_json(manifest.settings)
    darwin = sys.platform == "darwin"
    service_file, enabled = launchd.installed() if darwin else systemd.installed()
    try:
        certificate = x509.load_pem_x509_certificate(settings.ca_path.read_bytes())
        expires: str | None = certificate.not_valid_after_utc.isoformat()
    except (OSError, ValueError):
        expires = None
    try:
        bundle_mtime = settings.bundle_path.stat().st_mtime
        age: float | None = now.timestamp() - bundle_mtime
    except OSError:
        age = None
    expected = settings.environment()
    answering = answers(settings.url)
    installed = bool(manifest.entries)
    if not installed:
        logs = start = ""
    elif darwin:
        logs, start = launchd.log_hint(), launchd.start_command(os.getuid())
    else:
        logs, start = systemd.log_hint(), systemd.start_command(settings)
    return Status(
        installed=installed,
        service_file=service_file,
        enabled=enabled,
        url=settings.url,
        answering=answering,
        ca_path=str(settings.ca_path),
        ca_expires=expires,
        bundle_path=str(settings.bundle_path),
        bundle_age_seconds=age,
        trust_stores=manifest.stores,
        missing_variables=[name for name in expected if name not in environ],
        wrong_variables=[
            name for name, value in expected.items() if name in environ and environ[name] != value
        ],
        logs=logs,
        start=start,
        tls_rejections=leaf_rejections(settings.url) if answering else {},
        cache=live_stats(settings.url) if answering else {},
        upstream_proxy=None if settings.upstream_proxy is None else str(settings.upstream_proxy),
        upstream_proxy_bypass=list(settings.upstream_proxy_bypass),
    )
