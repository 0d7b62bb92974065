"""`--trust system|nss|java`: our CA goes into a trust store and uninstall takes exactly it
out again. The Debian store is a sandboxed copy driven by the real update-ca-certificates
(its directories redirected by its own options); NSS is a temporary database driven by the
real certutil; the stores this machine cannot host are checked through recorded commands."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from transcache.install.apply import undo
from transcache.install.installer import build_plan, install, prepare_ca
from transcache.install.manifest import Manifest
from transcache.install.plan import needs_root
from transcache.install.runner import RecordingRunner, SubprocessRunner
from transcache.install.settings import Settings, manifest_path
from transcache.install.trust import TrustedCA
from transcache.install.trust_darwin import Keychain
from transcache.install.trust_java import JavaStore
from transcache.install.trust_linux import LinuxStore
from transcache.install.trust_nss import NSSDatabase, find_databases

from .installhome import Home, fake_machine, make_home

DEBIAN_CERTS = Path("/usr/share/ca-certificates")
DEBIAN_CONF = Path("/etc/ca-certificates.conf")
SANDBOX_ROOTS = 3  # system roots copied into the sandbox: enough to see a real bundle


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    home = make_home(tmp_path)
    home.patch(monkeypatch)
    return home


def debian_sandbox(root: Path) -> tuple[LinuxStore, Path]:
    """A copy of the Debian store in `root`; (the store, the bundle it builds)."""
    certs, local, etc, hooks = (root / n for n in ("certs", "local", "etc-ssl-certs", "hooks"))
    for directory in (certs, local, etc, hooks):
        directory.mkdir(parents=True)
    listed = [
        line
        for line in DEBIAN_CONF.read_text().splitlines()
        if line and not line.startswith(("#", "!"))
    ][:SANDBOX_ROOTS]
    for name in listed:
        (certs / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEBIAN_CERTS / name, certs / name)
    conf = root / "ca-certificates.conf"
    conf.write_text("".join(f"{name}\n" for name in listed))
    options = (
        "--certsconf",
        str(conf),
        "--certsdir",
        str(certs),
        "--localcertsdir",
        str(local),
        "--etccertsdir",
        str(etc),
        "--hooksdir",
        str(hooks),
    )
    update = ("update-ca-certificates", *options)
    store = LinuxStore("Debian/Ubuntu", local, ".crt", update, (*update, "--fresh"))
    subprocess.run(update, check=True, capture_output=True)
    return store, etc / "ca-certificates.crt"


def dangling_links(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.is_symlink() and not p.exists()]


def test_trust_system_adds_the_ca_to_a_debian_store_and_uninstall_removes_it(
    home: Home, tmp_path: Path
) -> None:
    store, bundle = debian_sandbox(tmp_path / "store")
    roots_before = bundle.read_bytes()
    settings = Settings(trust=("system",))
    ca = prepare_ca(settings)
    plan = build_plan(settings, fake_machine(home, system_store=store), ca)
    install(settings, plan, SubprocessRunner())
    assert ca.pem.strip() in bundle.read_bytes()
    assert store.check(ca)
    etc = bundle.parent
    assert any(p.is_symlink() and p.resolve() == store.anchor(ca) for p in etc.iterdir())

    manifest = Manifest.load(manifest_path())
    assert manifest.stores == ["system (Debian/Ubuntu)"]
    undo(manifest, SubprocessRunner())
    assert ca.pem.strip() not in bundle.read_bytes()
    assert bundle.read_bytes() == roots_before
    assert not store.anchor(ca).exists()
    assert dangling_links(etc) == []


def test_system_trust_commands_go_through_sudo_and_are_listed_first(home: Home) -> None:
    store = LinuxStore(
        "Fedora/RHEL",
        Path("/etc/pki/ca-trust/source/anchors"),
        ".pem",
        ("update-ca-trust", "extract"),
        ("update-ca-trust", "extract"),
    )
    settings = Settings(trust=("system",))
    ca = prepare_ca(settings)
    plan = build_plan(settings, fake_machine(home, system_store=store, sudo=("sudo",)), ca)
    anchor = f"/etc/pki/ca-trust/source/anchors/{ca.name}.pem"
    assert needs_root(plan.steps) == [
        ("sudo", "install", "-D", "-m", "0644", str(ca.path), anchor),
        ("sudo", "update-ca-trust", "extract"),
    ]
    runner = RecordingRunner()
    install(settings, plan, runner)
    assert runner.calls[-2:] == needs_root(plan.steps)
    runner.calls.clear()
    undo(Manifest.load(manifest_path()), runner)
    assert runner.calls[:2] == [
        ("sudo", "rm", "-f", anchor),
        ("sudo", "update-ca-trust", "extract"),
    ]


def test_trust_nss_adds_and_removes_the_ca_in_a_temporary_database(home: Home) -> None:
    nssdb = home.path / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(
        ["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"],
        check=True,
        capture_output=True,
    )
    databases = find_databases(home.path)
    assert databases == [NSSDatabase(nssdb)]
    settings = Settings(trust=("nss",))
    ca = prepare_ca(settings)
    runner = SubprocessRunner()
    with_nss = fake_machine(home, nss_databases=tuple(databases))
    install(settings, build_plan(settings, with_nss, ca), runner)
    assert databases[0].check(ca, runner)
    listed = subprocess.run(
        ["certutil", "-d", f"sql:{nssdb}", "-L"], check=True, capture_output=True, text=True
    )
    line = next(line for line in listed.stdout.splitlines() if line.startswith(ca.name))
    assert line.split()[-1] == "C,,"
    # Installing again runs nothing: the manifest says it is done.
    manifest = Manifest.load(manifest_path())
    recorder = RecordingRunner()
    install(settings, build_plan(settings, with_nss, ca), recorder)
    assert recorder.calls == []
    undo(manifest, runner)
    assert not databases[0].check(ca, runner)


def test_java_and_macos_keychain_commands_are_exact_and_reversed(home: Home) -> None:
    settings = Settings(trust=("system", "java"))
    ca = prepare_ca(settings)
    java = JavaStore("/opt/jdk/bin/keytool")
    darwin = fake_machine(
        home, platform="darwin", uid=501, sudo=("sudo",), system_store=Keychain(), java=java
    )
    plan = build_plan(settings, darwin, ca)
    runner = RecordingRunner()
    install(settings, plan, runner)
    keychain = "/Library/Keychains/System.keychain"
    common = ("-cacerts", "-storepass", "changeit", "-noprompt")
    assert runner.calls[-2:] == [
        (
            "sudo",
            "security",
            "add-trusted-cert",
            "-d",
            "-r",
            "trustRoot",
            "-k",
            keychain,
            str(ca.path),
        ),
        (
            "sudo",
            "/opt/jdk/bin/keytool",
            "-importcert",
            "-alias",
            ca.name,
            "-file",
            str(ca.path),
            *common,
        ),
    ]
    runner.calls.clear()
    undo(Manifest.load(manifest_path()), runner)
    assert runner.calls[:3] == [
        ("sudo", "/opt/jdk/bin/keytool", "-delete", "-alias", ca.name, *common),
        ("sudo", "security", "remove-trusted-cert", "-d", str(ca.path)),
        ("sudo", "security", "delete-certificate", "-Z", ca.sha1, keychain),
    ]


def test_trust_names_carry_the_ca_serial(home: Home) -> None:
    ca = prepare_ca(Settings())
    assert ca.name == f"transcache-{ca.serial:x}"[: len("transcache-") + 16]
    assert TrustedCA.from_file(ca.path) == ca
    assert (
        os.path.basename(LinuxStore("x", Path("/a"), ".crt", (), ()).anchor(ca)) == f"{ca.name}.crt"
    )
