"""`transcache exec -- CMD`: with no installed service, a proxy starts in-process for the
command; pip and git reach local origins through it with no other setup. The command's exit
status (and death by signal) becomes exec's, signals sent to exec reach the command, and a
healthy installed service is used instead of a new proxy."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from .conftest import StartProxy, resolve_names
from .gitrepo import make_repo, run_git
from .installhome import TRANSCACHE, Home, make_home
from .origin import Origin, client_env
from .packages import make_index

EXEC_TIMEOUT = 120.0


def proxy_options(tmp_path: Path, origin: Origin, origin_ca_pem: Path) -> list[str]:
    options = [
        "--listen",
        "127.0.0.1:0",
        "--ca-dir",
        str(tmp_path / "ca"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--upstream-ca",
        str(origin_ca_pem),
    ]
    for host, port in resolve_names(origin):
        options += ["--resolve", f"{host}:{port}:127.0.0.1"]
    return options


def exec_(
    options: list[str], command: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TRANSCACHE, "exec", *options, "--", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=EXEC_TIMEOUT,
        check=False,
    )


def test_exec_pip_download_from_a_local_index_needs_no_other_setup(
    origin: Origin, origin_ca_pem: Path, tmp_path: Path
) -> None:
    wheels = make_index(origin, tmp_path / "dists")
    dest = tmp_path / "downloads"
    pip = [sys.executable, "-m", "pip", "download", "--no-cache-dir", "--dest", str(dest)]
    index = ["--index-url", origin.url("index.test", "/simple/"), "alpha"]
    env = client_env(tmp_path / "home")
    result = exec_(proxy_options(tmp_path, origin, origin_ca_pem), [*pip, *index], env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        w.name for w in wheels if w.name.startswith(("alpha", "beta"))
    )
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("transcache: ") and " requests through http://127.0.0.1:" in summary
    assert int(summary.split()[1]) >= 4  # two index pages, two wheels at least


def test_exec_git_clone_from_a_local_origin_needs_no_other_setup(
    origin: Origin, origin_ca_pem: Path, tmp_path: Path
) -> None:
    bare, head = make_repo(tmp_path / "repos", "pkg.git", commits=3)
    origin.add_git("git", bare.parent)
    clone = tmp_path / "clone"
    env = client_env(tmp_path / "home")
    url = origin.url("git.test", "/git/pkg.git")
    result = exec_(
        proxy_options(tmp_path, origin, origin_ca_pem),
        ["git", "clone", "--quiet", url, str(clone)],
        env,
    )
    assert result.returncode == 0, result.stderr
    assert run_git("rev-parse", "HEAD", cwd=clone, env=env) == head


def test_exec_passes_the_exit_status_through(tmp_path: Path) -> None:
    options = ["--listen", "127.0.0.1:0", "--ca-dir", str(tmp_path / "ca")]
    env = client_env(tmp_path)
    assert exec_(options, ["sh", "-c", "exit 7"], env).returncode == 7
    assert exec_(options, ["sh", "-c", "kill -TERM $$"], env).returncode == 128 + signal.SIGTERM
    missing = exec_(options, ["no-such-command-here"], env)
    assert missing.returncode == 127
    assert "command not found: no-such-command-here" in missing.stderr


def test_exec_forwards_sigterm_to_the_command(tmp_path: Path) -> None:
    script = 'trap "exit 42" TERM; echo ready; while :; do sleep 1 & wait $!; done'
    process = subprocess.Popen(
        [*TRANSCACHE, "exec", "--listen", "127.0.0.1:0", "--", "sh", "-c", script],
        env=client_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(EXEC_TIMEOUT) == 42
    finally:
        process.kill()
        process.wait()


def test_exec_uses_the_installed_service_when_it_answers(
    origin: Origin, start_proxy: StartProxy, tmp_path: Path
) -> None:
    # The "service" is a transcache run on a free port; install records that address.
    service = start_proxy(origin)
    home: Home = make_home(tmp_path / "user")
    home.transcache(
        "install", "--listen", f"127.0.0.1:{service.port}", "--ca-dir", str(service.ca_dir)
    )
    origin.add_file("/hello.txt", b"hello through the service\n")
    url = origin.url("files.test", "/hello.txt")
    result = exec_([], ["curl", "--silent", "--show-error", url], home.env())
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello through the service\n"
    assert f"through the service at {service.url}" in result.stderr
    assert service.log_lines(f"GET {url} 200")


def test_exec_offline_fails_when_anything_was_not_in_the_cache(
    origin: Origin, origin_ca_pem: Path, tmp_path: Path
) -> None:
    origin.add_file("/cached.whl", b"in the cache")
    env = client_env(tmp_path / "home")
    options = proxy_options(tmp_path, origin, origin_ca_pem)
    cached = origin.url("files.test", "/cached.whl")
    warm = exec_(options, ["curl", "--silent", "--fail", "--output", "/dev/null", cached], env)
    assert warm.returncode == 0, warm.stderr
    offline = [*options, "--offline"]
    hit = exec_(offline, ["curl", "--silent", "--fail", "--output", "/dev/null", cached], env)
    assert hit.returncode == 0, hit.stderr
    missing = origin.url("files.test", "/never-fetched.whl")
    # curl without --fail exits 0 on the 504; exec still fails the run and names the URL.
    miss = exec_(offline, ["curl", "--silent", "--output", "/dev/null", missing], env)
    assert miss.returncode == 1
    assert f"1 offline miss: {missing}" in miss.stderr
    assert origin.requests_to("/never-fetched.whl") == []
