"""What `install` sets for clients whose settings name one file or ignore the variables:
Node keeps a NODE_EXTRA_CA_CERTS the user had (a real node process trusts both CAs), npm's
user-level `cafile` is set in a fenced block that uninstall removes byte for byte, and the
opt-in apt snippet is read by `apt-config` and removed on uninstall."""

from __future__ import annotations

import dataclasses
import http.server
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme

from transcache._bundle import system_bundle
from transcache._ca import CertificateAuthority
from transcache._launch import NODE_CA_VARIABLE
from transcache.install import apt, node, systemd
from transcache.install.blocks import BEGIN_MARKER
from transcache.install.errors import InstallError
from transcache.install.installer import (
    build_plan,
    install,
    prepare_ca,
    uninstall,
    with_user_node_ca,
)
from transcache.install.plan import needs_root
from transcache.install.runner import RecordingRunner, SubprocessRunner
from transcache.install.settings import Settings

from .installhome import Home, fake_machine, make_home

NODE_TIMEOUT = 60.0
# A user's ~/.npmrc with CRLF line ends and no final newline: uninstall must give it back.
USER_NPMRC = b"registry=https://registry.npm.test/\r\nfund=false"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    home = make_home(tmp_path)
    home.patch(monkeypatch)
    return home


@contextmanager
def https_origin(context: ssl.SSLContext) -> Iterator[str]:
    """A loopback HTTPS origin answering 200 "ok" with `context`'s certificate; its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


NODE_GET = """
const https = require("https");
https.get(process.argv[1], (res) => { res.resume(); res.on("end", () => process.exit(0)); })
  .on("error", (err) => { console.error(err.code || err.message); process.exit(1); });
"""


def node_get(url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    node_exe = shutil.which("node")
    assert node_exe is not None, "node is installed by ./dev (Debian's nodejs)"
    return subprocess.run(
        [node_exe, "-e", NODE_GET, url],
        env=env,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
    )


def test_node_keeps_the_users_extra_certificates_and_trusts_ours(
    home: Home, tmp_path: Path
) -> None:
    corporate = trustme.CA()
    corporate_file = tmp_path / "corporate.pem"
    corporate.cert_pem.write_to_path(str(corporate_file))
    settings = with_user_node_ca(Settings(), {NODE_CA_VARIABLE: str(corporate_file)})
    assert settings.node_extra_ca_certs == corporate_file
    install(
        settings, build_plan(settings, fake_machine(home), prepare_ca(settings)), RecordingRunner()
    )
    exported = dict(
        line.removeprefix("export ").split("=", 1)
        for line in (home.data_dir / "env.sh").read_text().splitlines()
        if line.startswith("export ")
    )
    assert exported[NODE_CA_VARIABLE] == str(settings.node_bundle_path)

    corporate_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    corporate.issue_cert("127.0.0.1").configure_cert(corporate_context)
    ours = CertificateAuthority.load_or_create(settings.ca_dir).server_context("127.0.0.1")
    env = {**home.env(), NODE_CA_VARIABLE: exported[NODE_CA_VARIABLE]}
    with https_origin(corporate_context) as corporate_url, https_origin(ours) as our_url:
        for url in (corporate_url, our_url):
            result = node_get(url, env)
            assert result.returncode == 0, (url, result.stderr)
        # Without the bundle, node trusts neither: the origins really need these CAs.
        assert node_get(our_url, home.env()).returncode == 1


def test_a_reinstall_from_a_shell_with_our_variables_keeps_the_users_file(home: Home) -> None:
    users = home.path / "corp.pem"
    first = with_user_node_ca(Settings(), {NODE_CA_VARIABLE: str(users)})
    install(first, build_plan(first, fake_machine(home), prepare_ca(first)), RecordingRunner())
    ours = {NODE_CA_VARIABLE: str(first.node_bundle_path)}
    assert with_user_node_ca(Settings(), ours).node_extra_ca_certs == users
    assert with_user_node_ca(Settings(), {}).node_extra_ca_certs is None


def npmrc_cafile(home: Home) -> str:
    return node.npm_settings(home.path, ())[node.NPM_CAFILE].value


@pytest.mark.parametrize("existing", [USER_NPMRC, None])
def test_npm_cafile_is_set_in_a_fenced_block_and_uninstall_restores_npmrc_exactly(
    home: Home, tmp_path: Path, existing: bytes | None
) -> None:
    corporate = trustme.CA()
    corporate_file = tmp_path / "corporate.pem"
    corporate.cert_pem.write_to_path(str(corporate_file))
    global_npmrc = tmp_path / "npmrc"
    global_npmrc.write_text(f"cafile={corporate_file}\n")
    npmrc = home.path / ".npmrc"
    if existing is not None:
        npmrc.write_bytes(existing)
    settings = Settings()
    machine = fake_machine(home, global_npmrc=(global_npmrc,))
    plan = build_plan(settings, machine, prepare_ca(settings))
    assert plan.notes == [systemd.start_hint(settings)]  # nothing about npm
    install(settings, plan, RecordingRunner())

    assert BEGIN_MARKER in npmrc.read_text()
    assert npmrc_cafile(home) == str(settings.npm_bundle_path)
    bundle = settings.npm_bundle_path.read_bytes()
    assert corporate.cert_pem.bytes().strip() in bundle
    assert settings.ca_path.read_bytes().strip() in bundle
    # A second install finds the block and changes nothing.
    again = build_plan(settings, machine, prepare_ca(settings))
    assert not install(settings, again, RecordingRunner()).changed

    uninstall(RecordingRunner(), purge=False)
    if existing is None:
        assert not npmrc.exists()
    else:
        assert npmrc.read_bytes() == existing
    assert not settings.npm_bundle_path.exists()


def test_npm_cafile_naming_the_system_bundle_points_npm_at_the_main_bundle(
    home: Home, tmp_path: Path
) -> None:
    found = system_bundle()  # the machine's own bundle, whichever path it has
    assert found is not None
    global_npmrc = tmp_path / "npmrc"
    global_npmrc.write_text(f"cafile={found}\n")
    settings = Settings()
    machine = fake_machine(home, global_npmrc=(global_npmrc,))
    install(settings, build_plan(settings, machine, prepare_ca(settings)), RecordingRunner())
    assert npmrc_cafile(home) == str(settings.bundle_path)
    assert not settings.npm_bundle_path.exists()


def apt_dump(config: Path) -> dict[str, str]:
    result = subprocess.run(
        ["apt-config", "-c", str(config), "dump"],
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=True,
    )
    return {
        key: value.removesuffix('";')
        for key, _, value in (line.partition(' "') for line in result.stdout.splitlines())
    }


def test_apt_snippet_is_read_by_apt_config_and_removed_on_uninstall(
    home: Home, tmp_path: Path
) -> None:
    apt_dir = tmp_path / "etc" / "apt"
    (apt_dir / "apt.conf.d").mkdir(parents=True)
    settings = Settings(listen_port=8123, apt=True)
    machine = fake_machine(home, apt_dir=apt_dir)
    install(settings, build_plan(settings, machine, prepare_ca(settings)), SubprocessRunner())

    snippet = apt.snippet_path(apt_dir)
    dump = apt_dump(snippet)
    assert dump["Acquire::http::Proxy"] == "http://127.0.0.1:8123"
    assert dump["Acquire::https::Proxy"] == "http://127.0.0.1:8123"
    cainfo = Path(dump["Acquire::https::CAInfo"])
    assert cainfo == apt.bundle_copy_path(apt_dir)
    assert settings.ca_path.read_bytes().strip() in cainfo.read_bytes()
    assert oct(cainfo.stat().st_mode & 0o777) == "0o644"  # apt's _apt user reads it
    manifest = json.loads((home.data_dir / "install.json").read_text())
    runs = [arg for entry in manifest["entries"] for argv in entry.get("run", []) for arg in argv]
    assert str(snippet) in runs

    uninstall(SubprocessRunner(), purge=False)
    assert list(apt_dir.rglob("*")) == [apt_dir / "apt.conf.d"]


def test_apt_snippet_goes_through_sudo_when_not_root(home: Home, tmp_path: Path) -> None:
    settings = Settings(apt=True)
    machine = fake_machine(home, apt_dir=tmp_path / "apt", sudo=("sudo",))
    plan = build_plan(settings, machine, prepare_ca(settings))
    commands = needs_root(plan.steps)
    assert [argv[:2] for argv in commands] == [("sudo", "install")] * 2
    assert str(apt.snippet_path(tmp_path / "apt")) in commands[0]


def test_apt_option_without_apt_is_refused(home: Home) -> None:
    settings = Settings(apt=True)
    with pytest.raises(InstallError, match="--apt"):
        build_plan(settings, fake_machine(home), prepare_ca(settings))


def test_settings_keep_the_users_node_file_and_apt_across_the_manifest() -> None:
    settings = Settings(node_extra_ca_certs=Path("/corp/ca.pem"), apt=True)
    assert Settings.from_json(json.loads(json.dumps(settings.to_json()))) == settings
    assert dataclasses.replace(settings, node_extra_ca_certs=None).node_ca_path == settings.ca_path


def test_a_users_node_ca_that_is_the_system_bundle_gets_the_main_bundle(home: Home) -> None:
    found = system_bundle()
    assert found is not None
    settings = Settings(node_extra_ca_certs=found)
    assert settings.node_ca_path == settings.bundle_path
    plan = build_plan(settings, fake_machine(home), prepare_ca(settings))
    install(settings, plan, RecordingRunner())
    assert not settings.node_bundle_path.exists()
