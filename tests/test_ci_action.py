"""The one-step CI set-up (docs/ci.md): GitHub's action (action.yml, run by Node as the runner
does) and GitLab's template (its before_script and after_script, run by bash as a runner
does), against a real local origin with a real curl through the started proxy.

Each fake job has what its CI provides: for GitHub RUNNER_TEMP, the INPUT_* variables from
action.yml's inputs and the GITHUB_ENV, GITHUB_PATH and GITHUB_STEP_SUMMARY files, whose lines
the test applies to "later steps" as the runner does; for GitLab the template's variables,
one shell for before_script and script, another for after_script, and its cache paths carried
from one job's project directory to the next. A second job imports what the first exported
and answers without the origin. The jobs use this checkout's venv (the `venv` input); one slow
test installs from a copy of the checkout, as a runner does.

The shared tier's flags are checked as the command line the inputs become."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import string
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no type hints

from ci import job
from tests.origin import Origin, client_env
from transcache._launch import OWN_URL_VARIABLE, client_environment, proxy_variable_names
from transcache.install.health import answers

ROOT = Path(__file__).resolve().parents[1]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
GITLAB = yaml.safe_load((ROOT / "ci" / "gitlab" / "transcache.gitlab-ci.yml").read_text())
TEMPLATE = GITLAB[".transcache"]
STEP_JS = ROOT / "ci" / "github" / "step.js"
# This checkout's venv, which the tests' jobs use instead of installing.
VENV = Path(sys.prefix)
PACKAGE = "/files/pkg-1.0.tar.gz"
BODY = b"a package, once downloaded\n"
STEP_TIMEOUT = 120.0
# curl prints the body, then this: a newline and the response's Cache-Status.
CACHE_STATUS_OUT = r"\n%header{cache-status}"
# What a copy of the checkout needs to install from it (tests/test_wheel.py builds the same).
CHECKOUT = ("pyproject.toml", "README.md", "src", "service", "ci")


def run_args(origin: Origin, origin_ca_pem: Path) -> str:
    """`transcache run` flags that reach the test origin: its CA, and files.test on loopback."""
    return f"--upstream-ca {origin_ca_pem} --resolve files.test:{origin.port}:127.0.0.1"


def curl(env: Mapping[str, str], url: str) -> tuple[bytes, str]:
    """GET `url` with curl in a step's environment: the body and the Cache-Status header."""
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--write-out", CACHE_STATUS_OUT, url],
        env=dict(env),
        capture_output=True,
        timeout=STEP_TIMEOUT,
        check=True,
    )
    body, _, status = result.stdout.rpartition(b"\n")
    return body, status.decode()


def env_lines(path: Path) -> dict[str, str]:
    """GITHUB_ENV's NAME=value lines, the last one for a name winning, as the runner reads."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


@dataclass
class GitHubJob:
    """A job on a fake GitHub runner: its temp dir, its files, and the `with:` of our step."""

    home: Path
    runner_temp: Path
    with_: dict[str, str]

    @classmethod
    def create(cls, tmp: Path, with_: dict[str, str]) -> GitHubJob:
        for name in ("home", "temp", "files"):
            (tmp / name).mkdir(parents=True)
        for name in ("env", "path", "summary"):
            (tmp / "files" / name).touch()
        return cls(tmp / "home", tmp / "temp", with_)

    def file(self, name: str) -> Path:
        return self.runner_temp.parent / "files" / name

    def base_env(self) -> dict[str, str]:
        return client_env(
            self.home,
            {
                "RUNNER_TEMP": str(self.runner_temp),
                "GITHUB_ACTIONS": "true",
                "GITHUB_ACTION_PATH": str(ROOT),
                "GITHUB_ENV": str(self.file("env")),
                "GITHUB_PATH": str(self.file("path")),
                "GITHUB_STEP_SUMMARY": str(self.file("summary")),
            },
        )

    def later_step_env(self) -> dict[str, str]:
        """What a step after ours sees: GITHUB_ENV's variables and GITHUB_PATH's directories."""
        env = {**self.base_env(), **env_lines(self.file("env"))}
        paths = self.file("path").read_text().splitlines()
        env["PATH"] = os.pathsep.join([*reversed(paths), env["PATH"]])
        return env

    def run(self, entry: str) -> subprocess.CompletedProcess[str]:
        """The action's `main` or `post` step, with the inputs as the runner passes them."""
        return subprocess.run(
            ["node", str(ROOT / ACTION["runs"][entry])],
            env={**self.base_env(), **action_inputs(self.with_)},
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )


def step_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_action_runs_node20_with_a_post_step() -> None:
    assert ACTION["runs"]["using"] == "node20"
    assert {"main", "post"} <= set(ACTION["runs"])
    assert "post-if" not in ACTION["runs"]  # the default, always(): a failed job saves too


def test_github_job_goes_through_the_proxy_and_saves_what_it_fetched(
    tmp_path: Path, origin: Origin, origin_ca_pem: Path
) -> None:
    origin.add_file(PACKAGE, BODY, headers={"Cache-Control": "max-age=3600"})
    url = origin.url("files.test", PACKAGE)
    archive = tmp_path / "actions-cache" / "transcache.tar.gz"  # actions/cache's `path`
    with_ = {"archive": str(archive), "venv": str(VENV), "args": run_args(origin, origin_ca_pem)}

    first = GitHubJob.create(tmp_path / "job1", with_)
    step_ok(first.run("main"))
    exported = env_lines(first.file("env"))
    assert set(exported) == set(client_environment("u", Path("b"), Path("n")))
    later = first.later_step_env()
    body, status = curl(later, url)
    assert (body, status.split(";")[:2]) == (BODY, ["transcache", " fwd=miss"])
    assert curl(later, url) == (BODY, "transcache; hit")
    version = subprocess.run(["transcache", "--version"], env=later, capture_output=True)
    assert version.returncode == 0  # GITHUB_PATH has `transcache`, and nothing else of the venv
    assert shutil.which("python", path=first.file("path").read_text().strip()) is None

    out = step_ok(first.run("post"))
    assert not answers(exported[OWN_URL_VARIABLE])
    summary = first.file("summary").read_text()
    assert summary.startswith("### transcache: 1 hit, 1 miss (50% from cache)\n")
    assert "| **all** | 1 | 1 |" in summary
    assert f"Saved: exported 1 entry (1 body, {len(BODY)} bytes) to {archive}" in summary
    assert summary in out  # and the same in the log
    after_post = env_lines(first.file("env"))
    assert all(after_post[name] == "" for name in [*proxy_variable_names(), OWN_URL_VARIABLE])
    assert archive.is_file()

    origin.stop()
    second = GitHubJob.create(tmp_path / "job2", with_)
    step_ok(second.run("main"))
    assert curl(second.later_step_env(), url) == (BODY, "transcache; hit")
    step_ok(second.run("post"))
    summary = second.file("summary").read_text()
    assert summary.startswith("### transcache: 1 hit, 0 misses (100% from cache)\n")
    assert "Saved: exported 1 entry" in summary  # what it imported and used
    assert len(origin.requests_to(PACKAGE)) == 1


def test_a_proxy_that_cannot_start_fails_the_step_and_the_post_step_saves_nothing(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "transcache.tar.gz"
    with_ = {"archive": str(archive), "venv": str(VENV), "args": "--no-such-flag"}
    github = GitHubJob.create(tmp_path / "job", with_)
    result = github.run("main")
    assert result.returncode == 1
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    assert github.file("env").read_text() == ""
    assert "nothing to save" in step_ok(github.run("post"))
    assert not archive.exists()


def gitlab_variables(project_dir: Path, job_id: str, **overrides: str) -> dict[str, str]:
    """The job's variables: the template's, expanded as the runner does, then the job's own."""
    predefined = {"CI_PROJECT_DIR": str(project_dir), "CI_JOB_ID": job_id}
    expanded = {
        name: string.Template(value).safe_substitute(predefined)
        for name, value in TEMPLATE["variables"].items()
    }
    return {**predefined, **expanded, **overrides}


def gitlab_job(
    env: Mapping[str, str], script: list[str]
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """before_script and script in one shell, after_script in another, as the runner runs
    them (each with errexit)."""

    def shell(lines: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-e", "-c", "\n".join(lines)],
            env=dict(env),
            cwd=env["CI_PROJECT_DIR"],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )

    return shell([*TEMPLATE["before_script"], *script]), shell(TEMPLATE["after_script"])


def carry_cache(previous: Path, project_dir: Path) -> None:
    """GitLab's cache: the template's cache paths, from one job's project dir to the next's."""
    for relative in TEMPLATE["cache"]["paths"]:
        target = project_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(previous / relative, target)


def test_gitlab_template_runs_a_job_through_the_proxy_and_caches_for_the_next(
    tmp_path: Path, origin: Origin, origin_ca_pem: Path
) -> None:
    origin.add_file(PACKAGE, BODY, headers={"Cache-Control": "max-age=3600"})
    url = origin.url("files.test", PACKAGE)
    script = [f"curl -fsS -o /dev/null {url}", f"curl -fsS {url}", "transcache --version"]
    own = {
        "TRANSCACHE_SOURCE": str(ROOT),
        "TRANSCACHE_VENV": str(VENV),
        "TRANSCACHE_ARGS": run_args(origin, origin_ca_pem),
    }
    first_dir, second_dir = tmp_path / "project1", tmp_path / "project2"
    first_dir.mkdir()
    env = {**client_env(tmp_path), **gitlab_variables(first_dir, "1", **own)}
    main, after = gitlab_job(env, script)
    assert main.returncode == 0, main.stdout + main.stderr
    assert main.stdout.endswith(
        BODY.decode() + f"transcache {importlib.metadata.version('transcache')}\n"
    )
    assert after.returncode == 0, after.stdout + after.stderr
    assert "### transcache: 1 hit, 1 miss (50% from cache)" in after.stdout
    assert not Path(env["TRANSCACHE_STATE_DIR"]).exists()  # nothing left on a shell runner

    origin.stop()
    second_dir.mkdir()
    carry_cache(first_dir, second_dir)
    env = {**client_env(tmp_path), **gitlab_variables(second_dir, "2", **own)}
    main, after = gitlab_job(env, script[1:2])
    assert main.returncode == 0, main.stdout + main.stderr
    assert main.stdout.endswith(BODY.decode())
    assert "### transcache: 1 hit, 0 misses (" in after.stdout
    assert len(origin.requests_to(PACKAGE)) == 1


def action_inputs(with_: Mapping[str, str]) -> dict[str, str]:
    """The INPUT_* variables the runner passes an action: `with:` values, else defaults."""
    return {
        f"INPUT_{name.upper()}": with_.get(name, spec.get("default", ""))
        for name, spec in ACTION["inputs"].items()
    }


def action_settings(with_: Mapping[str, str], runner_temp: Path) -> job.Settings:
    """The Settings ci/job.py gets from the action's inputs, mapped by the action's own
    JavaScript (step.js `settings`)."""
    script = (
        f"const env = require({json.dumps(str(STEP_JS))}).settings(JSON.parse(process.argv[1]));"
        "console.log(JSON.stringify(env));"
    )
    environ = {"RUNNER_TEMP": str(runner_temp), **action_inputs(with_)}
    result = subprocess.run(
        ["node", "-e", script, json.dumps(environ)],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=True,
    )
    return job.Settings.from_environ(json.loads(result.stdout))


def test_shared_cache_inputs_become_the_shared_cache_flags(tmp_path: Path) -> None:
    with_ = {
        "shared-cache": "s3://team-cache/ci",
        "shared-cache-readonly": "true",
        "shared-cache-verify-key": "/keys/cache.pub",
        "shared-cache-signing-key": "/keys/cache.key",
        "args": "--passthrough '*.internal.example'",
    }
    settings = action_settings(with_, tmp_path)
    state = tmp_path / "transcache"
    assert job.run_arguments(settings) == [
        sys.executable,
        *("-m", "transcache", "run", "--listen", "127.0.0.1:0"),
        *("--ca-dir", str(state / "ca"), "--cache-dir", str(state / "cache")),
        *("--shared-cache", "s3://team-cache/ci", "--shared-cache-readonly"),
        *("--shared-cache-verify-key", "/keys/cache.pub"),
        *("--shared-cache-signing-key", "/keys/cache.key"),
        *("--passthrough", "*.internal.example"),
    ]
    assert settings.archive is None


def test_without_a_shared_cache_the_command_line_has_no_shared_cache_flags(
    tmp_path: Path,
) -> None:
    settings = action_settings({}, tmp_path)
    assert not any(arg.startswith("--shared-cache") for arg in job.run_arguments(settings))


def test_stop_signals_no_process_that_took_the_proxys_pid(tmp_path: Path) -> None:
    # After a container restart (GitLab's Docker executor), the pid file may name another
    # process: stop must leave it alone.
    settings = job.Settings(state_dir=tmp_path, cache_dir=tmp_path / "cache")
    with subprocess.Popen(["sleep", "60"]) as other:
        (tmp_path / job.PID_FILE).write_text(f"{other.pid}\n")
        job.stop_proxy(settings)
        assert other.poll() is None
        other.kill()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TRANSCACHE_SHARED_CACHE_READONLY", "yes", "true or false"),
        ("TRANSCACHE_ARGS", "--passthrough '*.example", "not shell-quoted words"),
    ],
)
def test_a_setting_that_cannot_be_read_is_named(name: str, value: str, message: str) -> None:
    with pytest.raises(job.JobError, match=f"{name} .*{message}"):
        job.Settings.from_environ({"TRANSCACHE_STATE_DIR": "/state", name: value})


def test_summary_shows_what_this_job_added_to_the_counters() -> None:
    before = {"hits": 5, "misses": 2, "stored": 2, "bytes_from_cache": 0, "ecosystems": {}}
    after = {
        "entries": 3,
        "bytes": 3 * 1024 * 1024,
        "hits": 8,
        "misses": 3,
        "stored": 3,
        "revalidations": 0,
        "bytes_from_cache": 2 * 1024 * 1024,
        "bytes_from_upstream": 1024 * 1024,
        "ecosystems": {
            "npm": {"hits": 0, "misses": 0, "bytes_from_cache": 0, "bytes_from_upstream": 0},
            "pypi": {
                "hits": 3,
                "misses": 1,
                "bytes_from_cache": 2 * 1024 * 1024,
                "bytes_from_upstream": 1024 * 1024,
            },
        },
    }
    assert job.summary(before, after, "exported 3 entries (3 bodies, 3 MiB) to x.tar.gz") == (
        "### transcache: 3 hits, 1 miss (75% from cache)\n"
        "\n"
        "| ecosystem | hits | misses | from cache | from upstream |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
        "| pypi | 3 | 1 | 2 MiB | 1 MiB |\n"
        "| **all** | 3 | 1 | 2 MiB | 1 MiB |\n"
        "\n"
        "Also: stored 1.\n"
        "\n"
        "Cache: 3 entries, 3 MiB.\n"
        "Saved: exported 3 entries (3 bodies, 3 MiB) to x.tar.gz\n"
    )


@pytest.mark.slow
def test_the_action_installs_transcache_from_its_own_checkout(
    tmp_path: Path, origin: Origin, origin_ca_pem: Path
) -> None:
    # A copy, as the runner checks the action out, so the build's files stay out of ours.
    checkout = tmp_path / "action"
    checkout.mkdir()
    for name in CHECKOUT:
        source = ROOT / name
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=ignore)
        else:
            shutil.copy2(source, checkout / name)
    origin.add_file(PACKAGE, BODY, headers={"Cache-Control": "max-age=3600"})
    state = tmp_path / "state"
    env = {
        **os.environ,  # pip's own settings (its index, its cache) as the machine has them
        "TRANSCACHE_STATE_DIR": str(state),
        "TRANSCACHE_PYTHON": sys.executable,
        "TRANSCACHE_ARGS": run_args(origin, origin_ca_pem),
    }
    env.pop("TRANSCACHE_VENV", None)
    started = subprocess.run(
        ["bash", str(checkout / "ci" / "job.sh"), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    assert (state / "bin" / "transcache").resolve().parent == state / "venv" / "bin"
    step = {**client_env(tmp_path), **env_source(state / job.ENV_FILE)}
    assert curl(step, origin.url("files.test", PACKAGE))[0] == BODY
    stopped = subprocess.run(
        ["bash", str(checkout / "ci" / "job.sh"), "stop"],
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "### transcache: 0 hits, 1 miss (0% from cache)" in stopped.stdout


def env_source(path: Path) -> dict[str, str]:
    """The variables a shell has after `. path` (the env file GitLab's template sources)."""
    result = subprocess.run(
        ["bash", "-c", f". {path} && env -0"],
        env={"PATH": os.defpath},
        capture_output=True,
        timeout=STEP_TIMEOUT,
        check=True,
    )
    return dict(item.split("=", 1) for item in result.stdout.decode().split("\0") if item)
