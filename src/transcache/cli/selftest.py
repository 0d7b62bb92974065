"""`transcache selftest`: is a warm repeat install answered from the cache?

Starts a proxy of its own (a temporary cache and CA, a free loopback port), then runs each
installed client twice, cold and warm, each time with the client's own cache empty and its
user configuration out of the way (a temporary HOME), against the client's default registry
or the one `--registry` names. Between runs it waits for the proxy to finish the client's
connections, so the counts are complete; it then prints, per client, how many of the warm
run's requests the cache answered and how many went upstream. The target is none upstream.

Against real registries this is run by hand; its own test points it at loopback origins
(`--registry`, `--package`, `--resolve`, `--upstream-ca`).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._options import EXIT_FAILURE, add_origin_options

if TYPE_CHECKING:
    from .._stats import Counters
    from ..api import Proxy
    from ._options import Commands


class Client(enum.Enum):
    PIP = "pip"
    UV = "uv"
    NPM = "npm"
    APT = "apt"
    GO = "go"
    CARGO = "cargo"


# What each client installs unless --package says otherwise: small, with a dependency or
# two, so index pages are read as well as files.
DEFAULT_PACKAGES = {
    Client.PIP: "requests",
    Client.UV: "requests",
    Client.NPM: "is-odd",
    Client.APT: "hello",
    Client.GO: "golang.org/x/text@v0.14.0",
    Client.CARGO: "itoa@1",
}
CLIENT_TIMEOUT = 600.0  # one client run, cold: a slow registry, a large package
DRAIN_TIMEOUT = 30.0  # for the proxy to finish a client's connections once it exited
DRAIN_POLL = 0.05
OUTPUT_SHOWN = 2000  # characters of a failing client's output


def add_parsers(commands: Commands) -> None:
    selftest = commands.add_parser(
        "selftest",
        help="run each installed client cold, then warm, through a temporary proxy and "
        "print how much of the warm run the cache answered",
    )
    selftest.add_argument(
        "--client",
        type=Client,
        action="append",
        default=[],
        choices=list(Client),
        metavar="NAME",
        help="run only this client (pip, uv, npm, apt, go, cargo); repeatable "
        "(default: every one installed)",
    )
    selftest.add_argument(
        "--registry",
        type=_client_value,
        action="append",
        default=[],
        metavar="CLIENT=URL",
        help="the registry a client uses instead of its default: an index URL (pip, uv), a "
        "registry URL (npm), a sources.list line (apt), a GOPROXY (go; sets GOSUMDB=off) or "
        "an index URL (cargo: sparse+https://... or a git URL); repeatable",
    )
    selftest.add_argument(
        "--package",
        type=_client_value,
        action="append",
        default=[],
        metavar="CLIENT=SPEC",
        help="what a client installs (go: module@version, cargo: crate@version); repeatable",
    )
    add_origin_options(selftest)
    selftest.set_defaults(handler=_command_selftest)


def _client_value(text: str) -> tuple[Client, str]:
    name, separator, value = text.partition("=")
    if not separator or not value:
        raise argparse.ArgumentTypeError(f"expected CLIENT=VALUE, got {text!r}")
    try:
        return Client(name), value
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"unknown client {name!r}") from exc


@dataclass(frozen=True)
class Workload:
    """One client's job, and where its runs keep their files."""

    client: Client
    package: str
    registry: str | None
    proxy_url: str
    bundle: Path
    ca: Path
    root: Path


@dataclass(frozen=True)
class Invocation:
    """The commands of one run (in order), their environment and working directory."""

    commands: list[list[str]]
    env: dict[str, str]
    cwd: Path


@dataclass(frozen=True)
class Phase:
    requests: int
    hits: int
    upstream: int
    failure: str | None


def _command_selftest(args: argparse.Namespace) -> int:
    from ..api import Proxy

    registries = dict(args.registry)
    packages = dict(args.package)
    chosen = args.client or list(Client)
    with tempfile.TemporaryDirectory(prefix="transcache-selftest-") as tmp:
        proxy = Proxy(
            cache_dir=Path(tmp, "cache"),
            ca_dir=Path(tmp, "ca"),
            upstream_ca=args.upstream_ca,
            resolve=args.resolve,
        )
        print(f"{'client':8} {'cold':>9} {'warm':>9} {'from cache':>11} {'upstream':>9}  hit rate")
        ok = True
        with proxy:
            for client in chosen:
                workload = Workload(
                    client,
                    packages.get(client, DEFAULT_PACKAGES[client]),
                    registries.get(client),
                    proxy.url,
                    proxy.running.bundle_path,
                    proxy.ca_path,
                    Path(tmp, client.value),
                )
                ok = _report(client, _measure(proxy, workload)) and ok
    return 0 if ok else EXIT_FAILURE


def _measure(proxy: Proxy, workload: Workload) -> list[Phase] | None:
    """The cold and the warm run's counts; None when the client is not installed."""
    build = BUILDERS[workload.client]
    phases = []
    for name in ("cold", "warm"):
        invocation = build(dataclasses.replace(workload, root=workload.root / name))
        if invocation is None:
            return None
        before = dataclasses.replace(proxy.stats().total)
        failure = _run(invocation)
        _drain(proxy)
        phases.append(_phase(before, proxy.stats().total, failure))
        if failure is not None:
            break
    return phases


def _phase(before: Counters, after: Counters, failure: str | None) -> Phase:
    return Phase(
        after.requests - before.requests,
        after.hits - before.hits,
        after.upstream_requests - before.upstream_requests,
        failure,
    )


def _run(invocation: Invocation) -> str | None:
    """Run the commands; None when all succeeded, else what the failing one printed."""
    invocation.cwd.mkdir(parents=True, exist_ok=True)
    for command in invocation.commands:
        try:
            result = subprocess.run(
                command,
                env=invocation.env,
                cwd=invocation.cwd,
                capture_output=True,
                text=True,
                timeout=CLIENT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"{command[0]} took longer than {CLIENT_TIMEOUT:g} s"
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()[-OUTPUT_SHOWN:]
            return f"{' '.join(command)} exited {result.returncode}:\n{output}"
    return None


def _drain(proxy: Proxy) -> None:
    """Wait until the proxy has closed the client's connections: each exchange is counted
    as it ends, and a client may exit before the proxy has written its last byte."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    slots = proxy.running.server.slots
    while slots.count and time.monotonic() < deadline:
        time.sleep(DRAIN_POLL)


def _report(client: Client, phases: list[Phase] | None) -> bool:
    """Print the client's line; False when it failed or its warm run went upstream."""
    if phases is None:
        print(f"{client.value:8} not installed")
        return True
    failed = next((phase.failure for phase in phases if phase.failure), None)
    if failed is not None:
        print(f"{client.value:8} failed: {failed}")
        return False
    cold, warm = phases
    rate = f"{100 * warm.hits / warm.requests:.0f}%" if warm.requests else "-"
    print(
        f"{client.value:8} {cold.requests:>9} {warm.requests:>9} {warm.hits:>11} "
        f"{warm.upstream:>9}  {rate}"
    )
    return warm.upstream == 0


# --- the clients -----------------------------------------------------------------------------


def _base_env(workload: Workload) -> dict[str, str]:
    """A client environment of our own: the proxy and its CA, a temporary HOME (so neither
    the user's configuration nor their caches take part), and nothing else inherited but
    PATH and what finds a rustup toolchain."""
    from .._launch import client_environment

    home = workload.root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,
        "UV_NO_CONFIG": "1",
        **client_environment(workload.proxy_url, workload.bundle, workload.ca),
    }
    rustup_home = os.environ.get("RUSTUP_HOME", str(Path.home() / ".rustup"))
    if Path(rustup_home).is_dir():
        env["RUSTUP_HOME"] = rustup_home
    return env


def _pip(workload: Workload) -> Invocation | None:
    if importlib.util.find_spec("pip") is None:
        return None
    index = ["--index-url", workload.registry] if workload.registry else []
    command = [sys.executable, "-m", "pip", "download", "--no-cache-dir", "--dest", "out"]
    return Invocation([[*command, *index, workload.package]], _base_env(workload), workload.root)


def _uv(workload: Workload) -> Invocation | None:
    uv = shutil.which("uv")
    if uv is None and importlib.util.find_spec("uv") is not None:
        import uv as uv_package

        uv = uv_package.find_uv_bin()
    if uv is None:
        return None
    index = ["--index-url", workload.registry] if workload.registry else []
    command = [uv, "pip", "install", "--no-cache", "--python", sys.executable, "--target", "out"]
    return Invocation([[*command, *index, workload.package]], _base_env(workload), workload.root)


def _npm(workload: Workload) -> Invocation | None:
    if shutil.which("npm") is None:
        return None
    workload.root.mkdir(parents=True, exist_ok=True)
    (workload.root / "package.json").write_text('{"name": "selftest", "version": "1.0.0"}\n')
    registry = ["--registry", workload.registry] if workload.registry else []
    command = ["npm", "install", "--cache", str(workload.root / "npm-cache"), *registry]
    quiet = ["--no-audit", "--no-fund", "--no-update-notifier", "--ignore-scripts"]
    # A machine-wide npmrc's `cafile` (some machines set one) replaces NODE_EXTRA_CA_CERTS.
    env = {**_base_env(workload), "npm_config_globalconfig": os.devnull}
    return Invocation([[*command, *quiet, workload.package]], env, workload.root)


def _apt(workload: Workload) -> Invocation | None:
    """apt-get update and download as any user: state, cache and lists of its own; the
    machine's sources and keys unless --registry gives a sources.list line."""
    if shutil.which("apt-get") is None:
        return None
    root = workload.root
    for directory in ("state/lists/partial", "cache/archives/partial", "parts"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "status").touch()
    settings: dict[str, object] = {
        "Dir::State": root / "state",
        "Dir::State::status": root / "status",
        "Dir::Cache": root / "cache",
        "Debug::NoLocking": "true",
        # root's apt downloads as _apt, which could not enter our temporary directory
        "APT::Sandbox::User": pwd.getpwuid(os.getuid()).pw_name,
        "Acquire::Languages": "none",
        "Acquire::http::Proxy": workload.proxy_url,
        "Acquire::https::Proxy": workload.proxy_url,
        "Acquire::https::CaInfo": workload.bundle,
    }
    if workload.registry:
        (root / "sources.list").write_text(workload.registry + "\n")
        settings["Dir::Etc::SourceList"] = root / "sources.list"
        settings["Dir::Etc::SourceParts"] = root / "parts"
    (root / "apt.conf").write_text("".join(f'{k} "{v}";\n' for k, v in settings.items()))
    env = {**_base_env(workload), "APT_CONFIG": str(root / "apt.conf")}
    commands = [["apt-get", "-q", "update"], ["apt-get", "-q", "download", workload.package]]
    return Invocation(commands, env, root)


def _go(workload: Workload) -> Invocation | None:
    if shutil.which("go") is None:
        return None
    env = _base_env(workload)
    env.update(
        GOPATH=str(workload.root / "gopath"),
        GOMODCACHE=str(workload.root / "gomodcache"),
        GOCACHE=str(workload.root / "gocache"),
        GOFLAGS="-mod=mod",
        GOTOOLCHAIN="local",
    )
    if workload.registry:
        # a private module proxy's modules are not in the public checksum database
        env.update(GOPROXY=workload.registry, GOSUMDB="off")
    return Invocation([["go", "mod", "download", workload.package]], env, workload.root)


def _cargo(workload: Workload) -> Invocation | None:
    if shutil.which("cargo") is None:
        return None
    root = workload.root
    cargo_home = root / "cargo-home"
    cargo_home.mkdir(parents=True, exist_ok=True)
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src/lib.rs").write_text("")
    crate, _, version = workload.package.partition("@")
    (root / "Cargo.toml").write_text(
        '[package]\nname = "selftest"\nversion = "0.1.0"\nedition = "2021"\n'
        f'[dependencies]\n{crate} = "{version or "*"}"\n'
    )
    if workload.registry:
        (cargo_home / "config.toml").write_text(
            '[source.crates-io]\nreplace-with = "selftest"\n'
            f'[source.selftest]\nregistry = "{workload.registry}"\n'
            "[net]\ngit-fetch-with-cli = true\n"
        )
    env = {**_base_env(workload), "CARGO_HOME": str(cargo_home), "CARGO_TERM_COLOR": "never"}
    return Invocation([["cargo", "fetch"]], env, root)


BUILDERS: dict[Client, Callable[[Workload], Invocation | None]] = {
    Client.PIP: _pip,
    Client.UV: _uv,
    Client.NPM: _npm,
    Client.APT: _apt,
    Client.GO: _go,
    Client.CARGO: _cargo,
}
