"""`transcache install` and `uninstall`: the plan for this machine, assembled from the
environment, service and trust-store modules, then applied or undone (plan.py).

What the machine offers is detected once into a `Machine` (data, not scattered checks), so a
test can describe a machine it is not running on: macOS, a running user manager, a sandboxed
system trust store.
"""

from __future__ import annotations

import getpass
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .._ca import CertificateAuthority
from .._env import write_bundle
from . import environment, launchd, systemd, trust_darwin, trust_java, trust_linux, trust_nss
from .plan import InstallError, Manifest, Outcome, Step, apply, undo
from .runner import Runner
from .settings import Settings, manifest_path
from .trust import TrustedCA, sudo

TRUST_CHOICES = ("system", "nss", "java")


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
        )

    @property
    def darwin(self) -> bool:
        return self.platform == "darwin"


@dataclass
class Plan:
    steps: list[Step]
    notes: list[str] = field(default_factory=list)


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
    notes = environment.npmrc_warnings(machine.home, settings.bundle_path)
    if machine.darwin:
        steps += launchd.steps(settings, uid=machine.uid)
    else:
        steps += systemd.steps(settings, running=machine.user_manager_running, user=machine.user)
        if not machine.user_manager_running:
            notes.append(systemd.start_hint(settings))
    trusts, trust_notes = trust_steps(settings, ca, machine)
    return Plan(steps + trusts, notes + trust_notes)


def install(settings: Settings, plan: Plan, runner: Runner) -> Outcome:
    """Apply `plan`, recording it in the manifest with `settings`."""
    path = manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(path)
    manifest.settings = settings.to_json()
    return apply(plan.steps, manifest, runner, path)


def planned_ca(settings: Settings) -> TrustedCA:
    """The CA as a dry run sees it: the existing one, or a stand-in for one to be created."""
    if settings.ca_path.exists():
        return TrustedCA.from_file(settings.ca_path)
    return TrustedCA(settings.ca_path, b"", 0, "")


def installed_settings() -> Settings | None:
    """The settings of the current install, or None when transcache is not installed."""
    manifest = Manifest.load(manifest_path())
    return Settings.from_json(manifest.settings) if manifest.entries else None


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
    return outcome
