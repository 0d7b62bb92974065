"""Real package and source clients through the proxy with nothing but the variables that
`transcache run` prints: pip, uv and git over https to local origins."""

from __future__ import annotations

from pathlib import Path

from .clients import PIP, run, uv_pip_install
from .gitrepo import make_repo, run_git
from .origin import Origin
from .packages import make_index
from .proxyproc import ProxyProcess


def index_url(origin: Origin) -> str:
    return origin.url("index.test", "/simple/")


def test_pip_download_and_install_through_the_proxy(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str], tmp_path: Path
) -> None:
    wheels = make_index(origin, tmp_path / "dists")
    pip = PIP
    downloads = tmp_path / "downloads"
    run(
        [
            *pip,
            "download",
            "--index-url",
            index_url(origin),
            "--dest",
            str(downloads),
            "alpha",
            "delta",
        ],
        proxied_env,
    )
    assert sorted(p.name for p in downloads.iterdir()) == sorted(w.name for w in wheels)
    for wheel in wheels:
        assert (downloads / wheel.name).read_bytes() == wheel.read_bytes()

    target = tmp_path / "site"
    run(
        [*pip, "install", "--index-url", index_url(origin), "--target", str(target), "alpha"],
        proxied_env,
    )
    assert (target / "alpha_pkg" / "__init__.py").is_file()
    assert (target / "beta_pkg" / "__init__.py").is_file()
    assert proxy.log_lines(f"GET {index_url(origin)}alpha/ 200")


def test_uv_pip_install_through_the_proxy(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str], tmp_path: Path
) -> None:
    make_index(origin, tmp_path / "dists")
    target = tmp_path / "site"
    uv_pip_install(proxied_env, index_url(origin), target, "alpha", "delta")
    for package in ("alpha", "beta", "gamma", "delta"):
        assert (target / f"{package}_pkg" / "__init__.py").is_file()


def test_git_clone_through_the_proxy(
    origin: Origin, proxy: ProxyProcess, proxied_env: dict[str, str], tmp_path: Path
) -> None:
    bare, head = make_repo(tmp_path / "repos", "pkg.git", commits=5)
    origin.add_git("git", bare.parent)
    clone = tmp_path / "clone"
    run(
        ["git", "clone", "--quiet", origin.url("git.test", "/git/pkg.git"), str(clone)], proxied_env
    )
    assert run_git("rev-parse", "HEAD", cwd=clone, env=proxied_env) == head
    run_git("fsck", "--strict", cwd=clone, env=proxied_env)
    assert proxy.log_lines("POST " + origin.url("git.test", "/git/pkg.git/git-upload-pack"))
