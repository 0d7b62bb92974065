"""What an install is configured with, kept in the manifest so `env`, `status`, `exec` and a
later `install` agree on the address and the CA without being told again.

The parent proxy's credentials never enter the manifest: it records the parent's URL
without them, and the service reads the whole URL from a 0600 file (`parent_file_path`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import _paths
from .._bundle import NODE_BUNDLE_NAME, NPM_BUNDLE_NAME, is_system_bundle
from .._config import DEFAULT_PORT
from .._launch import NO_PROXY, client_environment
from .._parent import NO_PARENT, ParentProxy, parse_parent
from .._paths import BUNDLE_NAME

MANIFEST_NAME = "install.json"
# What `install --trust` may add our CA to, besides the user's own stores.
TRUST_CHOICES = ("system", "nss", "java")
ENV_SH_NAME = "env.sh"
PARENT_FILE_NAME = "upstream-proxy"


def manifest_path() -> Path:
    return _paths.data_dir() / MANIFEST_NAME


def parent_file_path() -> Path:
    """The 0600 file holding the parent proxy's URL, credentials included."""
    return _paths.data_dir() / PARENT_FILE_NAME


@dataclass(frozen=True)
class Settings:
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    ca_dir: Path = field(default_factory=_paths.default_ca_dir)
    cache_dir: Path = field(default_factory=_paths.default_cache_dir)
    # Hosts added to NO_PROXY after localhost,127.0.0.1,::1.
    no_proxy: tuple[str, ...] = ()
    socket_activation: bool = False
    at_boot: bool = False
    trust: tuple[str, ...] = ()
    # The user's own NODE_EXTRA_CA_CERTS when they installed: Node gets it plus our CA.
    node_extra_ca_certs: Path | None = None
    # Write an apt.conf.d snippet (apt under sudo sees none of the variables).
    apt: bool = False
    # The service's parent proxy (with its credentials only when `install` was given them:
    # the manifest keeps none) and the hosts it reaches directly.
    upstream_proxy: ParentProxy | None = None
    upstream_proxy_bypass: tuple[str, ...] = ()
    # `transcache run` flags of the shared tier (--shared-cache s3://..., its keys' paths);
    # its credentials stay in the AWS files, never here.
    shared_cache: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"http://{host}:{self.listen_port}"

    @property
    def ca_path(self) -> Path:
        return self.ca_dir / "ca.pem"

    @property
    def bundle_path(self) -> Path:
        return self.ca_dir / BUNDLE_NAME

    @property
    def node_bundle_path(self) -> Path:
        return self.ca_dir / NODE_BUNDLE_NAME

    @property
    def npm_bundle_path(self) -> Path:
        return self.ca_dir / NPM_BUNDLE_NAME

    @property
    def node_ca_path(self) -> Path:
        """What NODE_EXTRA_CA_CERTS names: our CA, or the user's certificates plus ours (the
        main bundle when theirs is the system bundle, which it holds and keeps current)."""
        if self.node_extra_ca_certs is None:
            return self.ca_path
        if is_system_bundle(self.node_extra_ca_certs):
            return self.bundle_path
        return self.node_bundle_path

    def environment(self) -> dict[str, str]:
        """The variables clients get: `client_environment` plus the NO_PROXY extras."""
        env = client_environment(self.url, self.bundle_path, self.node_ca_path)
        if self.no_proxy:
            env["NO_PROXY"] = env["no_proxy"] = ",".join((NO_PROXY, *self.no_proxy))
        return env

    def run_arguments(self) -> list[str]:
        """`transcache run` arguments that serve these settings. The parent proxy is always
        explicit (its file, or none), so the service never takes one from its environment."""
        arguments = [
            "run",
            "--listen",
            f"{self.listen_host}:{self.listen_port}",
            "--ca-dir",
            str(self.ca_dir),
            "--cache-dir",
            str(self.cache_dir),
        ]
        arguments += self.shared_cache
        if self.upstream_proxy is None:
            return [*arguments, "--upstream-proxy", NO_PARENT]
        arguments += ["--upstream-proxy-file", str(parent_file_path())]
        if self.upstream_proxy_bypass:
            arguments += ["--upstream-proxy-bypass", ",".join(self.upstream_proxy_bypass)]
        return arguments

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ca_dir"], data["cache_dir"] = str(self.ca_dir), str(self.cache_dir)
        data["no_proxy"], data["trust"] = list(self.no_proxy), list(self.trust)
        data["shared_cache"] = list(self.shared_cache)
        if self.node_extra_ca_certs is not None:
            data["node_extra_ca_certs"] = str(self.node_extra_ca_certs)
        data["upstream_proxy"] = None if self.upstream_proxy is None else str(self.upstream_proxy)
        data["upstream_proxy_bypass"] = list(self.upstream_proxy_bypass)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        if not data:
            return cls()
        return cls(
            listen_host=data["listen_host"],
            listen_port=int(data["listen_port"]),
            ca_dir=Path(data["ca_dir"]),
            cache_dir=Path(data["cache_dir"]),
            no_proxy=tuple(data.get("no_proxy", ())),
            socket_activation=bool(data.get("socket_activation")),
            at_boot=bool(data.get("at_boot")),
            trust=tuple(data.get("trust", ())),
            node_extra_ca_certs=(
                Path(data["node_extra_ca_certs"]) if data.get("node_extra_ca_certs") else None
            ),
            apt=bool(data.get("apt")),
            upstream_proxy=(
                parse_parent(data["upstream_proxy"], str(parent_file_path()))
                if data.get("upstream_proxy")
                else None
            ),
            upstream_proxy_bypass=tuple(data.get("upstream_proxy_bypass", ())),
            shared_cache=tuple(data.get("shared_cache", ())),
        )
