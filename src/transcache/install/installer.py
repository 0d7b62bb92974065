"""`transcache install` and `uninstall`: the plan for this machine, assembled from the
environment, service and trust-store modules, then applied or undone (plan.py, apply.py).

What the machine offers is detected once into a `Machine` (data, not scattered checks), so a
test can describe a machine it is not running on: macOS, a running user manager, a sandboxed
system trust store.

An install leaves everything or nothing. `prepare` checks every input the plan writes into a
file (inputs.py) before anything is written, then creates the CA and builds the plan; `install`
applies it. When either fails, what they did is undone: the plan's changes (apply.py), the
manifest, a CA created by this install and the directories it created. A CA that existed
before stays. The directories an install creates are recorded in the manifest, so uninstall
removes them again once they are empty.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import _paths
from .._bundle import write_bundle
from .._ca import CertificateAuthority
from . import (
    apt,
    environment,
    launchd,
    node,
    parent,
    systemd,
    trust_darwin,
    trust_java,
    trust_linux,
    trust_nss,
)
from .apply import Outcome, apply, remove_empty_dirs, undo
from .errors import InstallError
from .inputs import Input, Kind, check
from .manifest import DirEntry, Manifest
from .plan import Step, describe, missing_dirs
from .runner import Runner
from .settings import Settings, manifest_path
from .trust import TrustedCA, sudo


@dataclass(frozen=True)
class Machine:
    platform: str
    home: Path
    user: str
    uid: int
    user_manager_running: bool
    zsh_installed: bool
    sudo: tuple[str, ...]
    system_store: trust_linux.LinuxStore | trust_darwin.Keychain | None
    nss_databases: tuple[trust_nss.NSSDatabase, ...] = ()
    java: trust_java.JavaStore | None = None
    # npm's global and built-in configuration files; apt's configuration directory, if any.
    global_npmrc: tuple[Path, ...] = node.GLOBAL_NPMRC
    apt_dir: Path | None = None
    # The interpreter the service runs (`python -m transcache run`).
    python: str = sys.executable

    @classmethod
    def detect(cls) -> Machine:
        home = Path.home()
        darwin = sys.platform == "darwin"
        return cls(
            platform=sys.platform,
            home=home,
            user=getpass.getuser(),
            uid=os.getuid(),
            user_manager_running=not darwin and systemd.manager_running(),
            zsh_installed=shutil.which("zsh") is not None,
            sudo=sudo(),
            system_store=trust_darwin.Keychain() if darwin else trust_linux.detect(),
            nss_databases=tuple(trust_nss.find_databases(home)),
            java=trust_java.detect(),
            apt_dir=apt.detect(),
        )

    @property
    def darwin(self) -> bool:
        return self.platform == "darwin"


@dataclass(frozen=True)
class CAFootprint:
    """What the CA directory held before this install created the CA in it, so a failed
    install can remove exactly what it added (a CA that existed before stays)."""

    directory: Path
    names: frozenset[str]

    @classmethod
    def take(cls, directory: Path) -> CAFootprint:
        try:
            return cls(directory, frozenset(os.listdir(directory)))
        except FileNotFoundError:
            return cls(directory, frozenset())

    def remove_added(self) -> None:
        try:
            added = set(os.listdir(self.directory)) - self.names
        except FileNotFoundError:
            return
        for name in added:
            path = self.directory / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


@dataclass
class Plan:
    steps: list[Step]
    notes: list[str] = field(default_factory=list)
    # Directories `prepare` creates outside the steps (the CA's, the manifest's), outermost
    # first, and what the CA directory held before: recorded, or undone on failure.
    created_dirs: tuple[Path, ...] = ()
    ca_footprint: CAFootprint | None = None


def plan_inputs(settings: Settings, machine: Machine) -> list[Input]:
    """Every value a plan writes into a unit, plist or shell file, named by where it comes
    from; everything else written is a constant or derived from these."""
    inputs = [
        Input("--listen", settings.listen_host, Kind.LISTEN_HOST),
        Input("--ca-dir", str(settings.ca_dir)),
        Input("--cache-dir", str(settings.cache_dir)),
        *(Input("--no-proxy", host, Kind.NO_PROXY_HOST) for host in settings.no_proxy),
        *(Input("--upstream-proxy-bypass", h) for h in settings.upstream_proxy_bypass),
        Input("the Python interpreter", machine.python, Kind.EXECUTABLE),
        # env.sh is sourced from the startup files by its path.
        Input("the data directory", str(_paths.data_dir())),
    ]
    if machine.darwin:
        inputs.append(Input("the log directory", str(_paths.macos_log_dir())))
    return inputs


def prepare_ca(settings: Settings) -> TrustedCA:
    """Create (or reuse) the CA and write the bundle the variables point at."""
    ca = CertificateAuthority.load_or_create(settings.ca_dir)
    write_bundle(settings.bundle_path, ca.cert_pem)
    return TrustedCA.from_file(ca.cert_path)


def trust_steps(
    settings: Settings, ca: TrustedCA, machine: Machine
) -> tuple[list[Step], list[str]]:
    steps: list[Step] = []
    notes: list[str] = []
    for choice in settings.trust:
        if choice == "system":
            store = machine.system_store
            if isinstance(store, trust_linux.LinuxStore):
                steps.append(store.step(ca, machine.sudo))
            elif isinstance(store, trust_darwin.Keychain):
                steps.append(store.step(ca, machine.sudo))
            else:
                raise InstallError("--trust system: no supported system trust store found here")
        elif choice == "nss":
            if not machine.nss_databases:
                notes.append("--trust nss: no NSS database found (start the browser once)")
            steps.extend(db.step(ca) for db in machine.nss_databases)
        elif choice == "java":
            if machine.java is None:
                raise InstallError("--trust java: keytool not found (set PATH to a JDK's bin)")
            steps.append(machine.java.step(ca, machine.sudo))
        else:
            raise InstallError(f"unknown trust store {choice!r}")
    return steps, notes


def build_plan(settings: Settings, machine: Machine, ca: TrustedCA) -> Plan:
    steps: list[Step] = environment.steps(
        settings, machine.home, linux=not machine.darwin, zsh_installed=machine.zsh_installed
    )
    node_steps, notes = node.steps(settings, machine.home, ca.pem, machine.global_npmrc)
    steps += node_steps
    if settings.apt:
        if machine.apt_dir is None:
            raise InstallError("--apt: apt is not installed here (no apt-get, no /etc/apt)")
        steps += apt.steps(settings, machine.apt_dir, machine.sudo)
    steps += parent.steps(settings)  # before the service that reads it
    if machine.darwin:
        steps += launchd.steps(settings, uid=machine.uid, python=machine.python)
    else:
        steps += systemd.steps(
            settings,
            running=machine.user_manager_running,
            user=machine.user,
            python=machine.python,
        )
        if not machine.user_manager_running:
            notes.append(systemd.start_hint(settings))
    trusts, trust_notes = trust_steps(settings, ca, machine)
    return Plan(steps + trusts, notes + trust_notes)


def prepare(settings: Settings, machine: Machine) -> Plan:
    """Check the inputs, create (or reuse) the CA, and build the plan; a failure after the
    check leaves no CA or directory of ours behind."""
    check(plan_inputs(settings, machine))
    created = tuple(
        dict.fromkeys([*missing_dirs(manifest_path().parent), *missing_dirs(settings.ca_dir)])
    )
    footprint = CAFootprint.take(settings.ca_dir)
    try:
        plan = build_plan(settings, machine, prepare_ca(settings))
    except BaseException:
        _discard(footprint, created)
        raise
    return dataclasses.replace(plan, created_dirs=created, ca_footprint=footprint)


def preview(settings: Settings, machine: Machine) -> Plan:
    """The plan as `--dry-run` shows it, after the same check; nothing is written."""
    check(plan_inputs(settings, machine))
    return build_plan(settings, machine, planned_ca(settings))


def _discard(footprint: CAFootprint | None, created: tuple[Path, ...]) -> None:
    if footprint is not None:
        footprint.remove_added()
    remove_empty_dirs(created)


def install(settings: Settings, plan: Plan, runner: Runner) -> Outcome:
    """Apply `plan`, recording it in the manifest with `settings`. On failure the machine is
    put back as it was before `prepare` (a RolledBackError says what failed)."""
    path = manifest_path()
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        manifest = Manifest.load(path)
    except BaseException:
        _discard(plan.ca_footprint, plan.created_dirs)
        raise
    previous_settings = manifest.settings
    manifest.settings = settings.to_json()
    added = [DirEntry(d) for d in plan.created_dirs if DirEntry(d) not in manifest.entries]
    manifest.entries += added
    try:
        return apply(plan.steps, manifest, runner, path)
    except BaseException:
        # apply put back the entries it found: the earlier installs' and `added`.
        manifest.entries = [e for e in manifest.entries if e not in added]
        manifest.settings = previous_settings
        if existed:
            manifest.save(path)
        else:
            path.unlink(missing_ok=True)
        _discard(plan.ca_footprint, plan.created_dirs)
        raise


def planned_ca(settings: Settings) -> TrustedCA:
    """The CA as a dry run sees it: the existing one, or a stand-in for one to be created."""
    if settings.ca_path.exists():
        return TrustedCA.from_file(settings.ca_path)
    return TrustedCA(settings.ca_path, b"", 0, "")


def with_user_node_ca(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """`settings` with the user's own NODE_EXTRA_CA_CERTS (see node.py)."""
    found = node.user_node_ca(environ, settings, installed_settings())
    return dataclasses.replace(settings, node_extra_ca_certs=found)


def installed_settings() -> Settings | None:
    """The settings of the current install, or None when transcache is not installed."""
    manifest = Manifest.load(manifest_path())
    return Settings.from_json(manifest.settings) if manifest.entries else None


def uninstall_preview(*, purge: bool) -> list[str]:
    """What `uninstall` would do, as `uninstall --dry-run` prints it: the undo of every
    recorded entry is the plan of an install that wants nothing."""
    manifest = Manifest.load(manifest_path())
    lines = describe([], manifest)
    if purge:
        settings = Settings.from_json(manifest.settings)
        lines += [f"remove {d}" for d in (settings.ca_dir, settings.cache_dir) if d.exists()]
    created = sorted({e.path for e in manifest.entries if isinstance(e, DirEntry)}, reverse=True)
    lines += [f"remove directory {d} once empty" for d in created]
    return lines


def uninstall(runner: Runner, *, purge: bool) -> Outcome:
    path = manifest_path()
    manifest = Manifest.load(path)
    outcome = undo(manifest, runner)
    path.unlink(missing_ok=True)
    if purge:
        settings = Settings.from_json(manifest.settings)
        for directory in (settings.ca_dir, settings.cache_dir):
            if directory.exists():
                shutil.rmtree(directory)
                outcome.changed.append(f"removed {directory}")
    # Again now that the manifest (and with --purge the CA) is gone from them.
    created = [e.path for e in manifest.entries if isinstance(e, DirEntry)]
    outcome.changed.extend(f"removed {d}" for d in remove_empty_dirs(created))
    return outcome
