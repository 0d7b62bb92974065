"""git through the proxy: pack fetches for exact object ids come from the cache, ref
discovery always asks the origin (the last answer serves only in offline mode: git's servers
mark it must-revalidate), pushes pass through, and uv's git dependencies install warm and
offline."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import uv

from .clients import run
from .conftest import StartProxy
from .gitrepo import commit_file, git_env, make_repo, run_git
from .origin import Origin, client_env
from .packages import in_tree_build
from .proxyproc import ProxyProcess


@pytest.fixture
def repo(tmp_path: Path, origin: Origin) -> tuple[Path, str]:
    bare, _ = make_repo(tmp_path / "repos", "pkg.git", commits=4)
    work = tmp_path / "work"
    env = git_env(tmp_path / "git-home")
    (tmp_path / "git-home").mkdir()
    run_git("clone", "--quiet", str(bare), str(work), cwd=tmp_path, env=env)
    files = in_tree_build("gitpkg", "0.1")
    commit_file(work, "pyproject.toml", files["pyproject.toml"], "Add packaging", env)
    head = commit_file(work, "backend.py", files["backend.py"], "Add build backend", env)
    run_git("push", "--quiet", "origin", "HEAD:main", cwd=work, env=env)
    origin.add_git("git", bare.parent)
    return bare, head


def pack_fetches(origin: Origin) -> int:
    """POSTs to git-upload-pack: ls-refs and fetch alike (the origin does not tell them apart
    for us); ref discovery is one GET plus one ls-refs POST per v2 clone."""
    return sum(1 for r in origin.requests if r.path.endswith("/git-upload-pack"))


def pack_hits(proxy: ProxyProcess) -> list[str]:
    """Access-log lines of upload-pack requests answered from the cache (waiting a moment:
    the proxy logs just after the last byte, so git can exit first)."""
    deadline = time.monotonic() + 10
    while True:
        hits = [line for line in proxy.log_lines("/git-upload-pack 200") if line.endswith(" hit")]
        if hits or time.monotonic() > deadline:
            return hits
        time.sleep(0.02)


def clone(env: dict[str, str], url: str, dest: Path, *args: str) -> str:
    run(["git", "clone", "--quiet", *args, url, str(dest)], env)
    run(["git", "-C", str(dest), "fsck", "--strict"], env)
    return run(["git", "-C", str(dest), "rev-parse", "HEAD"], env).stdout.strip()


def pinned_fetch(env: dict[str, str], url: str, dest: Path, commit: str) -> None:
    """What uv does for a pinned git dependency: fetch one commit into an empty repository."""
    run(["git", "init", "--quiet", str(dest)], env)
    run(["git", "-C", str(dest), "fetch", "--quiet", url, commit], env)
    assert run(["git", "-C", str(dest), "cat-file", "-t", commit], env).stdout == "commit\n"


@pytest.mark.parametrize("depth", [[], ["--depth", "1"]], ids=["full", "shallow"])
def test_second_clone_receives_its_pack_from_the_cache(
    origin: Origin,
    proxy: ProxyProcess,
    proxied_env: dict[str, str],
    tmp_path: Path,
    repo: tuple[Path, str],
    depth: list[str],
) -> None:
    url = origin.url("git.test", "/git/pkg.git")
    cold = clone(proxied_env, url, tmp_path / "cold", *depth)
    cold_posts = pack_fetches(origin)
    warm = clone(proxied_env, url, tmp_path / "warm", *depth)
    assert cold == warm == repo[1]
    # The warm clone asked the origin for its refs (GET info/refs + ls-refs) and nothing else.
    warm_posts = pack_fetches(origin) - cold_posts
    assert warm_posts == 1
    assert proxy.log_lines("git-upload-pack 200", count=1)
    assert pack_hits(proxy)


def test_pinned_fetch_into_an_empty_repository_is_cached(
    origin: Origin,
    proxy: ProxyProcess,
    proxied_env: dict[str, str],
    tmp_path: Path,
    repo: tuple[Path, str],
) -> None:
    url = origin.url("git.test", "/git/pkg.git")
    for name in ("first", "second"):
        pinned_fetch(proxied_env, url, tmp_path / name, repo[1])
    assert pack_hits(proxy)


def test_origin_stopped_is_a_504_online_and_a_clone_from_cache_offline(
    origin: Origin, start_proxy: StartProxy, tmp_path: Path, repo: tuple[Path, str], home: Path
) -> None:
    proxy = start_proxy(origin)
    env = client_env(home, proxy.env())
    url = origin.url("git.test", "/git/pkg.git")
    clone(env, url, tmp_path / "online")
    pinned_fetch(env, url, tmp_path / "pinned-online", repo[1])
    origin.stop()
    # Ref discovery is must-revalidate: with the origin gone, no stale refs (RFC 9111 5.2.2).
    failed = run(["git", "clone", "--quiet", url, str(tmp_path / "refused")], env, check=False)
    assert failed.returncode != 0
    assert "must-revalidate" in failed.stderr
    proxy.stop()
    offline = start_proxy(origin, args=["--offline"], name="proxy")
    env = client_env(home, offline.env())
    assert clone(env, url, tmp_path / "offline") == repo[1]
    pinned_fetch(env, url, tmp_path / "pinned-offline", repo[1])


def test_push_passes_through_uncached(
    origin: Origin,
    proxy: ProxyProcess,
    proxied_env: dict[str, str],
    tmp_path: Path,
    repo: tuple[Path, str],
) -> None:
    url = origin.url("git.test", "/git/pkg.git")
    work = tmp_path / "pusher"
    clone(proxied_env, url, work)
    env = git_env(tmp_path / "home", proxied_env)
    new_head = commit_file(work, "pushed.txt", b"pushed through the proxy\n", "Push", env)
    run(["git", "-C", str(work), "push", "--quiet", "origin", "HEAD:main"], env)
    assert run_git("rev-parse", "main", cwd=repo[0], env=env) == new_head
    assert proxy.log_lines("git-receive-pack 200")
    # A new clone sees the push: ref discovery was not answered from the cache.
    assert clone(proxied_env, url, tmp_path / "after-push") == new_head


def test_uv_installs_a_git_dependency_warm_and_offline(
    origin: Origin, start_proxy: StartProxy, tmp_path: Path, repo: tuple[Path, str], home: Path
) -> None:
    proxy = start_proxy(origin)
    env = client_env(home, proxy.env())
    requirement = f"gitpkg @ git+{origin.url('git.test', '/git/pkg.git')}@{repo[1]}"

    def install(target: Path) -> None:
        run(
            [
                uv.find_uv_bin(),
                "pip",
                "install",
                "--no-cache",
                "--no-index",
                "--python",
                sys.executable,
                "--target",
                str(target),
                requirement,
            ],
            env,
        )
        assert (target / "gitpkg" / "__init__.py").read_text() == "VALUE = 42\n"

    install(tmp_path / "cold")
    install(tmp_path / "warm")
    origin.stop()
    proxy.stop()
    offline = start_proxy(origin, args=["--offline"], name="proxy")
    env = client_env(home, offline.env())
    install(tmp_path / "offline")


def test_cache_stats_count_git_packs_apart(
    origin: Origin,
    proxy: ProxyProcess,
    proxied_env: dict[str, str],
    tmp_path: Path,
    repo: tuple[Path, str],
) -> None:
    url = origin.url("git.test", "/git/pkg.git")
    clone(proxied_env, url, tmp_path / "a")
    clone(proxied_env, url, tmp_path / "b")
    proxy.stop()
    stats = subprocess.run(
        [
            sys.executable,
            "-m",
            "transcache",
            "cache",
            "stats",
            "--json",
            "--cache-dir",
            str(proxy.workdir / "cache"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counters = json.loads(stats)
    assert counters["git_hits"] >= 1
    assert counters["git_bytes_from_cache"] > 0
