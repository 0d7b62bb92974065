"""A CI job's transcache: `start` runs a detached `transcache run` for the job's later steps,
`stop` ends it, saves the cache and writes the job's hit summary. ci/job.sh installs
transcache and runs this file with that installation's interpreter, so it builds on
transcache's own pieces: `_launch` for the command line, the server's environment and the
listening line, `install.health` for /healthz, and the `cache` commands for import, export
and stats.

How it works. `start` imports the archive (when there is one), notes the time and the cache's
counters, starts `transcache run` on a free loopback port in a session of its own (so it
outlives this step), waits for its listening line and /healthz, and passes on the client
environment that `transcache run` printed: always as export lines in the state directory's
`env` file (GitLab's template sources it), and to GitHub's GITHUB_ENV and GITHUB_PATH when
they are set. `stop` sends SIGTERM (the proxy flushes its counters as it exits), writes the
counters' change since `start` as markdown to the log and to GITHUB_STEP_SUMMARY, exports the
entries this job used, and on GitHub unsets the proxy variables for the post steps that
follow (another action's cache upload must not go through a proxy that is gone).

Settings are the TRANSCACHE_* variables (docs/ci.md); GitHub's action maps its inputs onto
them. A failure to start fails the step; at the end, only unreadable counters or a failed
export do."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transcache._errors import TranscacheError
from transcache._launch import (
    OWN_URL_VARIABLE,
    listening_url,
    proxy_variable_names,
    run_command,
    server_environment,
)
from transcache.cli._human import plural, size
from transcache.cli._tier import flags_for
from transcache.install.health import answers

# Files in the state directory.
PID_FILE = "proxy.pid"
OUT_FILE = "proxy.out"  # the proxy's stdout: its listening line and the client's variables
LOG_FILE = "proxy.log"  # its stderr: errors and the access log
ENV_FILE = "env"  # the client's variables as export lines, for `.` in a shell
SINCE_FILE = "since"  # when the job started using the cache (after the import)
BEFORE_FILE = "stats-before.json"  # the cache's counters then
BIN_DIR = "bin"  # holds only `transcache`, for PATH (a venv's bin would shadow python, pip)
CA_DIR = "ca"
CACHE_DIR = "cache"

# The first run generates the CA: a few seconds on a slow runner, well under this.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
POLL_SECONDS = 0.1
LOG_LINES_SHOWN = 30
# The lines `transcache run` prints after its listening line, one per variable.
EXPORT_PREFIX = "export "
# What the proxy reports about the store rather than counts (see `cache stats --json`).
STORE_FIELDS = frozenset({"entries", "bytes", "max_bytes", "ecosystems"})
# The counters the summary's table shows, per ecosystem and in total.
TABLE_COUNTERS = ("hits", "misses", "bytes_from_cache", "bytes_from_upstream")
BOOLEANS = {"": False, "false": False, "true": True}


class JobError(TranscacheError):
    """What keeps a job's proxy from starting or its cache from being saved; the message
    says why, for the step's log."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    cache_dir: Path
    archive: Path | None = None
    shared_cache: str | None = None
    shared_cache_readonly: bool = False
    shared_cache_verify_key: Path | None = None
    shared_cache_signing_key: Path | None = None
    # More `transcache run` flags (TRANSCACHE_ARGS, shell-quoted).
    args: list[str] = field(default_factory=list)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        def value(name: str) -> str | None:
            return environ.get(f"TRANSCACHE_{name}") or None

        def path(name: str) -> Path | None:
            text = value(name)
            return None if text is None else Path(text).absolute()

        state_dir = path("STATE_DIR")
        if state_dir is None:
            raise JobError("TRANSCACHE_STATE_DIR must name a directory for the proxy's state")
        try:
            args = shlex.split(value("ARGS") or "")
        except ValueError as exc:
            raise JobError(f"TRANSCACHE_ARGS is not shell-quoted words: {exc}") from exc
        readonly = environ.get("TRANSCACHE_SHARED_CACHE_READONLY", "").lower()
        if readonly not in BOOLEANS:
            raise JobError(f"TRANSCACHE_SHARED_CACHE_READONLY is true or false, not {readonly!r}")
        return cls(
            state_dir=state_dir,
            cache_dir=path("CACHE_DIR") or state_dir / CACHE_DIR,
            archive=path("ARCHIVE"),
            shared_cache=value("SHARED_CACHE"),
            shared_cache_readonly=BOOLEANS[readonly],
            shared_cache_verify_key=path("SHARED_CACHE_VERIFY_KEY"),
            shared_cache_signing_key=path("SHARED_CACHE_SIGNING_KEY"),
            args=args,
        )

    def file(self, name: str) -> Path:
        return self.state_dir / name


def run_arguments(settings: Settings) -> list[str]:
    """The `transcache run` command line that `start` runs for `settings`."""
    shared = flags_for(
        {
            "shared_cache": settings.shared_cache,
            "shared_cache_readonly": settings.shared_cache_readonly,
            "shared_cache_verify_key": settings.shared_cache_verify_key,
            "shared_cache_signing_key": settings.shared_cache_signing_key,
        }
    )
    return run_command(settings.file(CA_DIR), settings.cache_dir, args=[*shared, *settings.args])


def exported_variables(lines: list[str]) -> dict[str, str]:
    """The variables in `transcache run`'s `export NAME=VALUE` lines (shell-quoted)."""
    variables = {}
    for line in lines:
        if line.startswith(EXPORT_PREFIX):
            name, _, value = shlex.split(line.removeprefix(EXPORT_PREFIX))[0].partition("=")
            variables[name] = value
    return variables


def env_file(variables: Mapping[str, str], bin_dir: Path) -> str:
    """Export lines for a POSIX shell: the variables, and `bin_dir` first on PATH."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    lines.append(f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"')
    return "\n".join(lines) + "\n"


def github_env(variables: Mapping[str, str]) -> str:
    """`variables` as GITHUB_ENV lines (NAME=value; the runner takes the value as it is)."""
    for name, value in variables.items():
        if "\n" in value:
            raise JobError(f"{name} holds a newline, which GITHUB_ENV cannot take as NAME=value")
    return "".join(f"{name}={value}\n" for name, value in variables.items())


def _counter_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, int]:
    return {
        name: value - before.get(name, 0)
        for name, value in after.items()
        if name not in STORE_FIELDS and isinstance(value, int)
    }


def _amount(name: str, value: int) -> str:
    return size(value) if "bytes" in name else str(value)


def _row(label: str, counts: Mapping[str, int]) -> str:
    cells = [_amount(name, counts.get(name, 0)) for name in TABLE_COUNTERS]
    return "| " + " | ".join([label, *cells]) + " |"


def summary(before: Mapping[str, Any], after: Mapping[str, Any], saved: str | None) -> str:
    """The job's hit summary in markdown: what the counters of `cache stats --json` gained
    between `before` and `after`, per ecosystem and in total, every other counter that
    moved, the cache's size, and `saved` (what the export said) when there was one."""
    changes = _counter_changes(before, after)
    hits, misses = changes.get("hits", 0), changes.get("misses", 0)
    ratio = f" ({hits * 100 // (hits + misses)}% from cache)" if hits + misses else ""
    lines = [f"### transcache: {plural(hits, 'hit')}, {plural(misses, 'miss', 'misses')}{ratio}"]
    lines += ["", "| ecosystem | hits | misses | from cache | from upstream |"]
    lines.append("| --- | ---: | ---: | ---: | ---: |")
    old = before.get("ecosystems", {})
    for ecosystem, counts in after.get("ecosystems", {}).items():
        gained = _counter_changes(old.get(ecosystem, {}), counts)
        if any(gained.values()):
            lines.append(_row(ecosystem, gained))
    lines.append(_row("**all**", changes))
    others = [
        f"{name.replace('_', ' ')} {_amount(name, value)}"
        for name, value in changes.items()
        if value and name not in TABLE_COUNTERS
    ]
    lines.append("")
    if others:
        lines += ["Also: " + ", ".join(others) + ".", ""]
    entries = plural(after.get("entries", 0), "entry", "entries")
    lines.append(f"Cache: {entries}, {size(after.get('bytes', 0))}.")
    if saved is not None:
        lines.append(f"Saved: {saved}")
    return "\n".join(lines) + "\n"


# -- doing ------------------------------------------------------------------------------------


def _transcache(*args: str) -> subprocess.CompletedProcess[str]:
    """A `transcache` command of this installation: its stdout captured, its stderr (errors,
    progress) straight to the step's log."""
    command = [sys.executable, "-m", "transcache", *args]
    return subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)


def _stats(settings: Settings) -> dict[str, Any]:
    result = _transcache("cache", "stats", "--json", "--cache-dir", str(settings.cache_dir))
    if result.returncode != 0:
        raise JobError(f"transcache cache stats exited with {result.returncode}")
    stats: dict[str, Any] = json.loads(result.stdout)
    return stats


def _log_tail(settings: Settings) -> str:
    try:
        lines = settings.file(LOG_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_LINES_SHOWN:])


def _import(settings: Settings) -> None:
    if settings.archive is None or not settings.archive.is_file():
        return
    result = _transcache(
        "cache", "import", str(settings.archive), "--cache-dir", str(settings.cache_dir)
    )
    print(result.stdout, end="")
    if result.returncode != 0:
        # An archive that is damaged in part still gave what it could: start anyway.
        print(f"transcache: the cache starts without some of {settings.archive}")


def _launch(settings: Settings, environ: Mapping[str, str]) -> subprocess.Popen[bytes]:
    settings.file(BIN_DIR).mkdir(parents=True, exist_ok=True)
    with (
        settings.file(OUT_FILE).open("wb") as out,
        settings.file(LOG_FILE).open("ab") as log,
    ):
        process = subprocess.Popen(
            run_arguments(settings),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=log,
            env=server_environment(environ),
            start_new_session=True,  # outlives this step, and signals sent to it
        )
    settings.file(PID_FILE).write_text(f"{process.pid}\n")
    return process


def _wait_until_listening(settings: Settings, process: subprocess.Popen[bytes]) -> list[str]:
    """The proxy's stdout lines, once it answers /healthz. It prints its listening line and
    the variables in one flush before it serves anything, so after an answer they are all
    there."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = _log_tail(settings)
            raise JobError(f"transcache run exited with {process.returncode}:\n{log}")
        lines = settings.file(OUT_FILE).read_text().splitlines()
        url = listening_url(lines[0]) if lines else None
        if url is not None and answers(url):
            return settings.file(OUT_FILE).read_text().splitlines()
        time.sleep(POLL_SECONDS)
    process.kill()
    log = _log_tail(settings)
    raise JobError(f"transcache run did not answer within {START_TIMEOUT:g} s:\n{log}")


def _append(environ: Mapping[str, str], name: str, text: str) -> None:
    """Append `text` to the file the variable `name` names, when it is set (GitHub's
    GITHUB_ENV, GITHUB_PATH, GITHUB_STEP_SUMMARY)."""
    if name in environ:
        with open(environ[name], "a") as file:
            file.write(text)


def start(settings: Settings, environ: Mapping[str, str]) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    _import(settings)
    since, before = time.time(), _stats(settings)
    print("transcache: starting " + shlex.join(run_arguments(settings)))
    process = _launch(settings, environ)
    variables = exported_variables(_wait_until_listening(settings, process))
    # Written once it runs: `stop` saves and summarises only a proxy that started.
    settings.file(SINCE_FILE).write_text(f"{since}\n")
    settings.file(BEFORE_FILE).write_text(json.dumps(before))
    bin_dir = settings.file(BIN_DIR)
    link = bin_dir / "transcache"
    link.unlink(missing_ok=True)
    link.symlink_to(Path(sys.executable).parent / "transcache")
    settings.file(ENV_FILE).write_text(env_file(variables, bin_dir))
    _append(environ, "GITHUB_ENV", github_env(variables))
    _append(environ, "GITHUB_PATH", f"{bin_dir}\n")
    print(f"transcache: later steps go through {variables[OWN_URL_VARIABLE]}")


def _is_running_proxy(pid: int, settings: Settings) -> bool:
    """Whether `pid` is still the proxy `start` launched. Where there is a /proc, its command
    line must be ours: after a container restart (GitLab's Docker executor runs after_script
    so) the pid may be another process's, and a proxy that exited but was not reaped (a
    container's init may not reap) is a zombie, whose command line is empty."""
    proc = Path("/proc")
    if not (proc / "self").exists():
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        command = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return False
    return command == [os.fsencode(arg) for arg in run_arguments(settings)]


def stop_proxy(settings: Settings) -> None:
    """SIGTERM the proxy and wait for it to exit (it flushes its counters as it does). It is
    not our child (the start step's process started it), so its exit is watched, not awaited."""
    pid = int(settings.file(PID_FILE).read_text())
    if not _is_running_proxy(pid, settings):
        return  # gone already, as on GitLab's Docker executor, whose container stopped
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _is_running_proxy(pid, settings):
            return
        time.sleep(POLL_SECONDS)
    os.kill(pid, signal.SIGKILL)
    print(f"transcache: the proxy did not stop within {STOP_TIMEOUT:g} s and was killed")


def _export(settings: Settings) -> str | None:
    """Export the entries used since `start`; what the export said, or None without an
    archive."""
    if settings.archive is None:
        return None
    since = settings.file(SINCE_FILE).read_text().strip()
    result = _transcache(
        "cache",
        "export",
        str(settings.archive),
        "--since",
        since,
        "--cache-dir",
        str(settings.cache_dir),
    )
    if result.returncode != 0:
        raise JobError(f"transcache cache export exited with {result.returncode}")
    return result.stdout.strip().splitlines()[-1]


def stop(settings: Settings, environ: Mapping[str, str]) -> None:
    if not settings.file(BEFORE_FILE).exists():
        print("transcache: it did not start in this job; nothing to save")
        return
    stop_proxy(settings)
    unset = dict.fromkeys([*proxy_variable_names(), OWN_URL_VARIABLE], "")
    _append(environ, "GITHUB_ENV", github_env(unset))
    before = json.loads(settings.file(BEFORE_FILE).read_text())
    after = _stats(settings)
    failure = None
    try:
        saved = _export(settings)
    except JobError as exc:
        failure, saved = exc, f"nothing ({exc})"
    text = summary(before, after, saved)
    print(text, end="")
    _append(environ, "GITHUB_STEP_SUMMARY", text)
    if failure is not None:
        raise failure


COMMANDS = {"start": start, "stop": stop}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print("usage: job.py start|stop", file=sys.stderr)
        return 2
    try:
        COMMANDS[argv[0]](Settings.from_environ(os.environ), os.environ)
    except JobError as exc:
        print(f"transcache: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
