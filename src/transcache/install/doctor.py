"""`transcache doctor`: each installed client (pip, uv, git, curl, cargo, npm) makes one fetch
of its own kind, with the user's environment, from the pages the proxy serves for
transcache.invalid (doctor_pages.py). A fetch that works proves the client uses the proxy
and trusts its CA. When one fails, the cause is looked for in order: the client's proxy or
CA variable missing, nothing answering at the proxy address, the CA file not holding the
proxy's CA, npm configured with its own CA file; else the client's own error message
(`failure_reason`). A client that is not installed is reported as such, not as a failure.
Then the clients' own settings that win over the variables are read and judged
(overrides.py).
"""

from __future__ import annotations

import enum
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import overrides
from .doctor_pages import DOCTOR_URL, PROJECT
from .health import answers, fetch, leaf_rejections

CLIENT_TIMEOUT = 60.0
ENV_FIX = 'run eval "$(transcache env)" (or open a new shell after `transcache install`)'
CARGO_REGISTRY = "transcache-doctor"
CARGO_REGISTRY_VARIABLE = "CARGO_REGISTRIES_TRANSCACHE_DOCTOR_INDEX"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy")
INDEX_URL = f"{DOCTOR_URL}/simple/"
# A user's debugging settings that turn a client's error into a stack dump: cargo's failure
# was reported as the last line of a Rust backtrace ("13: <unknown>").
PROBE_UNSET = ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")
# A client's own error line (cargo, uv and git "error:", git "fatal:", pip "ERROR:", npm
# "npm error" / "npm ERR!", curl "curl: (60)").
ERROR_LINE = re.compile(r"^(error|fatal|npm err!|npm error|curl: \(\d+\))\b", re.IGNORECASE)
# Lines that explain nothing: stack frames ("  13: <unknown>", "    at ...", "File ..."),
# and the headers and hints around them.
NOISE_LINE = re.compile(
    r"^(\d+:\s|at\s|file\s\"|stack backtrace:|note: run with `rust_backtrace|traceback)",
    re.IGNORECASE,
)
CAUSED_BY = "Caused by:"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Client:
    name: str
    executables: tuple[str, ...]
    # The variables it needs: proxy variables (any one will do) and its CA variable.
    proxy_variables: tuple[str, ...]
    ca_variable: str
    # (executable, scratch dir) -> argv
    command: Callable[[str, Path], list[str]]
    extra_env: tuple[tuple[str, str], ...] = ()


def _pip(exe: str, scratch: Path) -> list[str]:
    return [
        exe,
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--dest",
        str(scratch),
        "--index-url",
        INDEX_URL,
        PROJECT,
    ]


def _uv(exe: str, scratch: Path) -> list[str]:
    requirements = scratch / "requirements.in"
    requirements.write_text(PROJECT + "\n")
    return [
        exe,
        "pip",
        "compile",
        "--quiet",
        "--no-cache",
        "--no-config",
        "--index-url",
        INDEX_URL,
        str(requirements),
    ]


CLIENTS = (
    Client("pip", ("pip", "pip3"), PROXY_VARIABLES, "REQUESTS_CA_BUNDLE", _pip),
    Client("uv", ("uv",), PROXY_VARIABLES, "SSL_CERT_FILE", _uv),
    Client(
        "git",
        ("git",),
        ("https_proxy", "HTTPS_PROXY"),
        "GIT_SSL_CAINFO",
        lambda exe, scratch: [exe, "ls-remote", f"{DOCTOR_URL}/git/doctor.git"],
    ),
    Client(
        "curl",
        ("curl",),
        ("https_proxy", "HTTPS_PROXY"),
        "CURL_CA_BUNDLE",
        lambda exe, scratch: [
            exe,
            "--fail",
            "--silent",
            "--show-error",
            f"{DOCTOR_URL}/npm/-/ping",
        ],
    ),
    Client(
        "cargo",
        ("cargo",),
        PROXY_VARIABLES,
        "CARGO_HTTP_CAINFO",
        lambda exe, scratch: [
            exe,
            "search",
            "--registry",
            CARGO_REGISTRY,
            "--limit",
            "1",
            "doctor",
        ],
        ((CARGO_REGISTRY_VARIABLE, f"sparse+{DOCTOR_URL}/cargo/"), ("CARGO_NET_RETRY", "0")),
    ),
    Client(
        "npm",
        ("npm",),
        PROXY_VARIABLES,
        "NODE_EXTRA_CA_CERTS",
        lambda exe, scratch: [exe, "ping", "--fetch-retries=0", "--registry", f"{DOCTOR_URL}/npm/"],
    ),
)


class Verdict(enum.Enum):
    OK = "OK"
    FAIL = "FAIL"
    NOT_INSTALLED = "not installed"


@dataclass(frozen=True)
class Finding:
    client: str
    verdict: Verdict
    message: str

    @property
    def ok(self) -> bool:
        """Nothing to fix: the client works, or is not there to work."""
        return self.verdict is not Verdict.FAIL


def _fetch_ca(proxy_url: str) -> bytes | None:
    return fetch(proxy_url, "/ca.pem")


def _holds(path: str, ca_pem: bytes) -> bool:
    try:
        return ca_pem.strip() in Path(path).read_bytes()
    except OSError:
        return False


def _npm_cafile(exe: str, env: Mapping[str, str]) -> str | None:
    value = overrides.command_output([exe, "config", "get", "cafile"], env, CLIENT_TIMEOUT).strip()
    return value if value and value not in ("null", "undefined") else None


def _not_answering(proxy_url: str) -> str:
    return (
        f"nothing answers at {proxy_url}: start the service "
        "(`systemctl --user start transcache`, or launchctl on macOS) or `transcache run`"
    )


def diagnose(client: Client, exe: str, env: Mapping[str, str], output: str) -> str:
    if not any(env.get(name) for name in client.proxy_variables):
        return f"{client.proxy_variables[0]} is not set: {ENV_FIX}"
    if not env.get(client.ca_variable):
        return f"{client.ca_variable} is not set: {ENV_FIX}"
    proxy_url = next(env[name] for name in client.proxy_variables if env.get(name)).rstrip("/")
    if not answers(proxy_url):
        return _not_answering(proxy_url)
    ca_pem = _fetch_ca(proxy_url)
    if ca_pem is not None and not _holds(env[client.ca_variable], ca_pem):
        return (
            f"{client.ca_variable} ({env[client.ca_variable]}) does not contain the transcache "
            f"CA of {proxy_url}: {ENV_FIX}"
        )
    if client.name == "npm" and (cafile := _npm_cafile(exe, env)):
        bundle = env.get("SSL_CERT_FILE", "the transcache bundle")
        return (
            f"npm's configuration sets cafile={cafile}, so NODE_EXTRA_CA_CERTS is ignored: "
            f"run `npm config set cafile {bundle}`"
        )
    return failure_reason(output)


def failure_reason(output: str) -> str:
    """The line of a client's output that says why it failed: its first error line, with the
    last cause cargo lists under it ("error: failed to ...: [60] SSL peer certificate ...");
    else its last line that is no stack frame."""
    lines = [ANSI_ESCAPE.sub("", line).strip() for line in output.splitlines()]
    lines = [line for line in lines if line and not NOISE_LINE.match(line)]
    error = next((i for i, line in enumerate(lines) if ERROR_LINE.match(line)), None)
    if error is None:
        return lines[-1] if lines else "failed without a message"
    after = lines[error + 1 :]
    if CAUSED_BY in after:
        causes = [line for line in after if line != CAUSED_BY]
        if causes:
            return f"{lines[error]}: {causes[-1]}"
    return lines[error]


def probe_environment(client: Client, env: Mapping[str, str]) -> dict[str, str]:
    """The user's environment for a client's fetch, with its own settings and without the
    debugging settings that bury its error (PROBE_UNSET)."""
    kept = {name: value for name, value in env.items() if name not in PROBE_UNSET}
    return {**kept, **dict(client.extra_env)}


def check(client: Client, env: Mapping[str, str]) -> Finding:
    """One client's fetch."""
    exe = installed(client, env)
    if exe is None:
        return not_installed(client)
    child_env = probe_environment(client, env)
    with tempfile.TemporaryDirectory(prefix="transcache-doctor-") as scratch:
        try:
            result = subprocess.run(
                client.command(exe, Path(scratch)),
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=CLIENT_TIMEOUT,
                check=False,
            )
            ok, output = result.returncode == 0, result.stdout
        except subprocess.TimeoutExpired:
            ok, output = False, f"no answer within {CLIENT_TIMEOUT:.0f} s"
    if ok:
        return Finding(client.name, Verdict.OK, "OK")
    return Finding(client.name, Verdict.FAIL, diagnose(client, exe, child_env, output))


def not_installed(client: Client) -> Finding:
    return Finding(client.name, Verdict.NOT_INSTALLED, Verdict.NOT_INSTALLED.value)


def installed(client: Client, env: Mapping[str, str]) -> str | None:
    return next(
        (found for e in client.executables if (found := shutil.which(e, path=env.get("PATH")))),
        None,
    )


def run(env: Mapping[str, str], clients: Sequence[Client] = CLIENTS) -> list[Finding]:
    """A finding per client. When the proxy the variables name does not answer, that is
    every installed client's finding, and no client waits out its retries to find it."""
    proxy_url = next((env[n] for n in PROXY_VARIABLES if env.get(n)), "").rstrip("/")
    if proxy_url and not answers(proxy_url):
        message = _not_answering(proxy_url)
        return [
            Finding(c.name, Verdict.FAIL, message) if installed(c, env) else not_installed(c)
            for c in clients
        ]
    findings = [check(client, env) for client in clients]
    if not proxy_url:
        return findings
    return findings + rejection_findings(proxy_url) + override_findings(env, proxy_url)


def override_findings(env: Mapping[str, str], proxy_url: str) -> list[Finding]:
    """A finding per client setting that wins over the variables and bypasses the proxy or
    its CA (overrides.py)."""
    home = Path(env.get("HOME") or Path.home())
    bundle = env.get("SSL_CERT_FILE") or "the transcache bundle"
    settings = overrides.read(env, home)
    conflicts = overrides.find(settings, env, proxy_url, _fetch_ca(proxy_url), bundle)
    return [Finding(conflict.client, Verdict.FAIL, conflict.message) for conflict in conflicts]


def rejection_findings(proxy_url: str) -> list[Finding]:
    """A finding per host whose clients rejected the proxy's certificate (since it started):
    those clients trust their own CA store, not the transcache bundle."""
    return [
        Finding(
            host,
            Verdict.FAIL,
            f"{seen['count']} TLS handshake(s) by {', '.join(seen['clients'])} rejected the "
            "transcache certificate; the proxy's log names each client's fix",
        )
        for host, seen in leaf_rejections(proxy_url).items()
    ]
