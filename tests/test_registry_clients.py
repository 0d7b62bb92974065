"""Warm means warm: each real client, run cold and then warm with its own cache emptied,
against an origin that behaves like its registry (no Cache-Control, ETag or Last-Modified;
see tests/registries.py). Inside the index window the warm run sends nothing to the origin:
the origin's own request log is counted, not the proxy's. git asks the origin for its refs
on every run by design (ref discovery is never served from the cache), so there only the
pack fetch is counted; so for cargo before 1.68, whose registry index is a git repository."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from .clients import CLIENT_TIMEOUT, PIP, run, uv_pip_install
from .conftest import REGISTRY_NAMES, StartProxy
from .gitrepo import make_repo
from .origin import Origin, RecordedRequest, client_env
from .proxyproc import ProxyProcess
from .registries import (
    DEB_PACKAGE,
    DEB_SUITE,
    add_crates,
    add_debian,
    add_goproxy,
    add_npm,
    add_pypi,
    cargo_reads_sparse,
)

# A heavier tier: real package managers or a real squid (`-m 'not slow'` skips it).
pytestmark = pytest.mark.slow

# npm without its network side trips (audit, funding, update check) and scripts.
NPM_QUIET = ["--no-audit", "--no-fund", "--no-update-notifier", "--ignore-scripts"]


@pytest.fixture
def proxy(start_proxy: StartProxy, registry: Origin) -> ProxyProcess:
    return start_proxy(registry, names=REGISTRY_NAMES)


@pytest.fixture
def env(proxy: ProxyProcess, home: Path) -> dict[str, str]:
    return client_env(home, proxy.env())


def url(origin: Origin, host: str) -> str:
    """The origin's base URL under `host`, with no trailing slash."""
    return origin.url(host, "")


def cold_then_warm(origin: Origin, install: object) -> list[RecordedRequest]:
    """Run `install("cold")` and `install("warm")`; the origin's requests during the warm one."""
    assert callable(install)
    install("cold")
    cold = len(origin.requests)
    assert cold > 0
    install("warm")
    return origin.requests[cold:]


def described(requests: list[RecordedRequest]) -> list[str]:
    return [f"{r.method} {r.path}" for r in requests]


def test_pip_warm_download_sends_nothing_upstream(
    registry: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    requirements = add_pypi(registry, tmp_path / "dists")
    index = registry.url("pypi.test", "/simple/")

    def install(run_name: str) -> None:
        dest = tmp_path / run_name
        run([*PIP, "download", "--dest", str(dest), "--index-url", index, *requirements], env)

    warm = cold_then_warm(registry, install)
    assert warm == [], described(warm)
    assert sorted(p.name for p in (tmp_path / "warm").iterdir()) == sorted(
        p.name for p in (tmp_path / "cold").iterdir()
    )
    # pip asked for every index page with max-age=0, which the window does not follow
    assert any(
        r.headers.get("cache-control") == "max-age=0"
        for r in registry.requests
        if r.path.startswith("/simple/")
    )


def test_uv_warm_install_sends_nothing_upstream(
    registry: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    requirements = add_pypi(registry, tmp_path / "dists")
    index = registry.url("pypi.test", "/simple/")

    def install(run_name: str) -> None:
        uv_pip_install(env, index, tmp_path / run_name, *requirements)

    warm = cold_then_warm(registry, install)
    assert warm == [], described(warm)
    assert (tmp_path / "warm" / "tcsdist" / "__init__.py").is_file()


def test_npm_warm_install_sends_nothing_upstream(
    registry: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    registry_url = registry.url("npm.test", "/")
    packages = add_npm(registry, registry_url)

    def install(run_name: str) -> None:
        project = tmp_path / run_name
        project.mkdir()
        (project / "package.json").write_text('{"name": "project", "version": "1.0.0"}\n')
        cache = tmp_path / f"npm-cache-{run_name}"
        options = ["--registry", registry_url, "--cache", str(cache), *NPM_QUIET]
        # --prefix also moves npm's global npmrc into the project: a machine-wide `cafile`
        # (some machines set one), which would replace NODE_EXTRA_CA_CERTS, stays out
        run(["npm", "install", "--prefix", str(project), *options, *packages], env)

    warm = cold_then_warm(registry, install)
    assert warm == [], described(warm)
    assert (tmp_path / "warm" / "node_modules" / "tc-beta" / "package.json").is_file()


def apt_get(
    proxy: ProxyProcess, env: dict[str, str], root: Path, sources: str, args: list[str]
) -> None:
    """apt-get as any user, on state, cache and configuration of its own under `root`: no
    machine-wide file is read or written (APT_CONFIG replaces /etc/apt/apt.conf, the empty
    parts directory /etc/apt/apt.conf.d)."""
    for directory in ("state/lists/partial", "cache/archives/partial", "etc/parts", "out"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "status").touch()
    (root / "etc/sources.list").write_text(sources)
    settings = {
        "Dir::State": root / "state",
        "Dir::State::status": root / "status",
        "Dir::Cache": root / "cache",
        "Dir::Etc::SourceList": root / "etc/sources.list",
        "Dir::Etc::SourceParts": root / "etc/parts",
        "Dir::Etc::Parts": root / "etc/parts",
        "Dir::Etc::Preferences": root / "etc/preferences",
        "Dir::Etc::PreferencesParts": root / "etc/parts",
        "Debug::NoLocking": "true",
        # root's apt downloads as _apt, which cannot enter pytest's private temp directories
        "APT::Sandbox::User": pwd.getpwuid(os.getuid()).pw_name,
        "Acquire::Languages": "none",
        "Acquire::https::Proxy": proxy.url,
        "Acquire::https::CaInfo": proxy.bundle,
    }
    config = "".join(f'{name} "{value}";\n' for name, value in settings.items())
    (root / "etc/apt.conf").write_text(config)
    apt_env = {**env, "APT_CONFIG": str(root / "etc/apt.conf")}
    for command in (["update"], args):
        result = subprocess.run(
            ["apt-get", "-q", *command],
            env=apt_env,
            cwd=root / "out",
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_apt_get_warm_update_and_download_send_nothing_upstream(
    registry: Origin, proxy: ProxyProcess, env: dict[str, str], tmp_path: Path
) -> None:
    repo = add_debian(registry, tmp_path / "repo")
    url = registry.url("deb.test", "/debian")
    sources = f"deb [signed-by={repo.keyring}] {url} {DEB_SUITE} main\n"

    def install(run_name: str) -> None:
        apt_get(proxy, env, tmp_path / run_name, sources, ["download", DEB_PACKAGE])

    warm = cold_then_warm(registry, install)
    assert warm == [], described(warm)
    (deb,) = (tmp_path / "warm" / "out").iterdir()
    assert deb.name == f"{DEB_PACKAGE}_1.0_all.deb"


def test_git_warm_pinned_fetch_asks_the_origin_only_for_refs(
    registry: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    bare, commit = make_repo(tmp_path / "repos", "pkg.git", commits=3)
    registry.add_git("git", bare.parent)
    url = registry.url("git.test", "/git/pkg.git")

    def fetch(run_name: str) -> None:
        dest = tmp_path / run_name
        run(["git", "init", "--quiet", str(dest)], env)
        run(["git", "-C", str(dest), "fetch", "--quiet", url, commit], env)

    warm = cold_then_warm(registry, fetch)
    # ref discovery (GET info/refs, then ls-refs) and nothing else: the pack came from disk
    assert described(warm) == [
        "GET /git/pkg.git/info/refs?service=git-upload-pack",
        "POST /git/pkg.git/git-upload-pack",
    ]


def test_go_warm_module_download_sends_nothing_upstream(
    registry: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    if shutil.which("go") is None:
        pytest.fail("go is not installed: ./dev test installs golang-go")
    module = add_goproxy(registry)

    def download(run_name: str) -> None:
        go_env = {
            **env,
            "GOPROXY": url(registry, "goproxy.test"),
            "GOSUMDB": "off",
            "GOFLAGS": "-mod=mod",
            "GOTOOLCHAIN": "local",
            "GOPATH": str(tmp_path / "gopath"),
            "GOCACHE": str(tmp_path / "gocache"),
            "GOMODCACHE": str(tmp_path / f"gomodcache-{run_name}"),
        }
        run(["go", "mod", "download", "-json", module], go_env)

    warm = cold_then_warm(registry, download)
    assert warm == [], described(warm)
    assert list((tmp_path / "gomodcache-warm").rglob("hello.go"))


def test_cargo_warm_fetch_sends_nothing_upstream_but_git_ref_discovery(
    registry: Origin, env: dict[str, str], tmp_path: Path
) -> None:
    """The registry form this cargo supports: sparse from 1.68 on (nothing upstream when
    warm), a git index before (Debian's cargo: ref discovery, like git)."""
    if shutil.which("cargo") is None:
        pytest.fail("cargo is not installed: ./dev test installs cargo")
    sparse = cargo_reads_sparse()
    index = add_crates(registry, url(registry, "crates.test"), url(registry, "git.test"), tmp_path)

    def fetch(run_name: str) -> None:
        cargo_home = tmp_path / f"cargo-home-{run_name}"
        cargo_home.mkdir()
        (cargo_home / "config.toml").write_text(
            '[source.crates-io]\nreplace-with = "local"\n'
            f'[source.local]\nregistry = "{index}"\n[net]\ngit-fetch-with-cli = true\n'
        )
        project = tmp_path / f"project-{run_name}"
        (project / "src").mkdir(parents=True)
        (project / "src/lib.rs").write_text("")
        (project / "Cargo.toml").write_text(
            '[package]\nname = "project"\nversion = "0.1.0"\nedition = "2021"\n'
            '[dependencies]\ntcfoo = "1.0.0"\n'
        )
        cargo_env = {**env, "CARGO_HOME": str(cargo_home), "CARGO_TERM_COLOR": "never"}
        if "RUSTUP_HOME" in os.environ or (Path.home() / ".rustup").is_dir():
            # a rustup proxy binary finds its toolchains there, not under our HOME
            cargo_env["RUSTUP_HOME"] = os.environ.get("RUSTUP_HOME", str(Path.home() / ".rustup"))
        run(["cargo", "fetch", "--manifest-path", str(project / "Cargo.toml")], cargo_env)

    warm = cold_then_warm(registry, fetch)
    if sparse:
        assert warm == [], described(warm)
    else:
        assert described(warm) == [
            "GET /git/index.git/info/refs?service=git-upload-pack",
            "POST /git/index.git/git-upload-pack",
        ]
    assert list((tmp_path / "cargo-home-warm").rglob("tcfoo-1.0.0.crate"))
