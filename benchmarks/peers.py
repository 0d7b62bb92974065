"""The caches under test, behind one interface.

A `Peer` starts and stops one cache and tells a client how to reach the upstream through it:
`proxy_url` (forward proxies: clients set the proxy variables and keep the `.test` URLs, which
the peer resolves to the local upstream) or an origin-like address (`direct` and the nginx
reverse cache: clients use `https://127.0.0.1:PORT/...` and need no proxy). `reset()` stops the
peer, wipes its cache and starts it again: every cold measurement starts from it.

Peers: direct (no cache; the baseline), transcache, squid (ssl-bump, disk cache), nginx as a
reverse cache (`proxy_cache`) and mitmproxy (no cache: the cost of a Python MITM proxy).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path

import trustme

from transcache._launch import listening_url, run_command, server_environment

from . import procs
from .upstream import NAMES, NGINX, Upstream, nginx_common, nginx_temp_paths

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = "cache"
VENVS = (
    Path(os.environ.get("TRANSCACHE_BENCH_CACHE", Path.home() / ".cache" / "transcache-bench"))
    / "venvs"
)
MITM_VENV = VENVS / "mitmproxy"
PY_SPY = VENVS / "tools" / "bin" / "py-spy"
PROFILE_RATE = 100  # samples per second
SQUID = "/usr/sbin/squid"
SQUID_CERTGEN = "/usr/lib/squid/security_file_certgen"
LISTEN_TIMEOUT = 30.0


class Peer(ABC):
    name: str
    proxied = True  # clients reach the upstream's `.test` names through proxy variables

    def __init__(self, upstream: Upstream, workdir: Path, hosts: list[str]) -> None:
        self.upstream = upstream
        self.workdir = workdir
        self.hosts = hosts  # every `.test` name a workload may use
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @abstractmethod
    def start(self) -> None: ...

    @property
    @abstractmethod
    def client_ca(self) -> Path:
        """The PEM file a client must trust to talk TLS through this peer."""

    @property
    def proxy_url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self.proxied else None

    def url(self, host: str, path: str) -> str:
        if self.proxied:
            return self.upstream.url(host, path)
        return f"https://127.0.0.1:{self.port}{path}"

    def origin_address(self) -> tuple[str, int]:
        """Where a client without proxy connects (only for peers that are not proxies)."""
        return ("127.0.0.1", self.port)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def stop(self) -> None:
        if self.process is not None:
            procs.stop(self.process)
            self.process = None

    def reset(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir / CACHE_DIR, ignore_errors=True)
        self.start()


class Direct(Peer):
    """No cache, no proxy: clients talk to the upstream nginx itself."""

    name = "direct"
    proxied = False

    def start(self) -> None:
        self.port = self.upstream.port

    @property
    def client_ca(self) -> Path:
        return self.upstream.ca_pem


class Transcache(Peer):
    """`python -m transcache run` (with `options` added): from the working tree, or from
    `source` (a `src/` exported from some commit) to measure one revision against another.
    With `profile_dir` set, py-spy samples each process it starts into
    `<profile_dir>/<profile_label>-<n>.svg` (a flame graph; written when the process stops)."""

    name = "transcache"

    def __init__(self, upstream: Upstream, workdir: Path, hosts: list[str]) -> None:
        super().__init__(upstream, workdir, hosts)
        self.source: Path | None = None
        self.options: list[str] = []  # more `transcache run` options (--transcache-option)
        self.profile_dir: Path | None = None
        self.profile_label = "start"
        self._profiles = 0
        self._spy: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = run_command(
            self.workdir / "ca",
            self.workdir / CACHE_DIR,
            upstream_ca=[self.upstream.ca_pem],
            resolve={(host, self.upstream.port): "127.0.0.1" for host in self.hosts},
            access_log=self.workdir / "access.log",
            args=self.options,
        )
        env = server_environment(os.environ)
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        stdout = self.workdir / "stdout.log"
        stdout.unlink(missing_ok=True)
        with stdout.open("wb") as out, (self.workdir / "stderr.log").open("ab") as err:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while time.monotonic() < deadline:
            first, newline, _ = stdout.read_text().partition("\n")
            if newline:
                url = listening_url(first)
                if url is None:
                    break
                self.port = int(url.rsplit(":", 1)[1])
                self._start_profile()
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        log = (self.workdir / "stderr.log").read_text()[-3000:]
        raise RuntimeError(f"transcache did not start: {stdout.read_text()!r}\n{log}")

    def _start_profile(self) -> None:
        if self.profile_dir is None or self.process is None:
            return
        self._profiles += 1
        output = self.profile_dir / f"{self.profile_label}-{self._profiles}.svg"
        self._spy = procs.spawn(
            [str(PY_SPY), "record", "--nonblocking", "--rate", str(PROFILE_RATE),
             "--pid", str(self.process.pid), "--output", str(output)],
            self.workdir / "py-spy.log",
        )  # fmt: skip

    def stop(self) -> None:
        super().stop()
        if self._spy is not None:  # py-spy writes its graph once the process is gone
            self._spy.wait(procs.STOP_TIMEOUT)
            self._spy = None

    @property
    def client_ca(self) -> Path:
        return self.workdir / "ca" / "ca.pem"


class Squid(Peer):
    """squid with ssl-bump (leaves minted by security_file_certgen) and a ufs disk cache."""

    name = "squid"

    def __init__(self, upstream: Upstream, workdir: Path, hosts: list[str]) -> None:
        super().__init__(upstream, workdir, hosts)
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="transcache bench squid CA")
        ca.cert_pem.write_to_path(str(self.workdir / "ca.pem"))
        ca.private_key_pem.write_to_path(str(self.workdir / "ca-key.pem"))

    @property
    def client_ca(self) -> Path:
        return self.workdir / "ca.pem"

    def _config(self) -> str:
        d = self.workdir
        return f"""
http_port 127.0.0.1:{self.port} ssl-bump tls-cert={d}/ca.pem tls-key={d}/ca-key.pem \
    generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program {SQUID_CERTGEN} -s {d}/ssl_db -M 16MB
sslcrtd_children 4 startup=1 idle=1
ssl_bump bump all
tls_outgoing_options cafile={self.upstream.ca_pem}
hosts_file {d}/hosts
http_access allow all
cache_dir ufs {d}/{CACHE_DIR} 4096 16 256
cache_mem 64 MB
maximum_object_size 512 MB
maximum_object_size_in_memory 1 MB
collapsed_forwarding on
refresh_pattern . 0 20% 4320
pid_filename {d}/squid.pid
access_log stdio:{d}/access.log
cache_log {d}/cache.log
cache_store_log none
coredump_dir {d}
shutdown_lifetime 0 seconds
"""

    def start(self) -> None:
        d = self.workdir
        self.port = procs.free_port()
        (d / "hosts").write_text("127.0.0.1 " + " ".join(self.hosts) + "\n")
        (d / "squid.conf").write_text(self._config())
        if not (d / "ssl_db").exists():
            subprocess.run(
                [SQUID_CERTGEN, "-c", "-s", str(d / "ssl_db"), "-M", "16MB"],
                check=True,
                capture_output=True,
            )
        if os.geteuid() == 0:  # squid drops root for its cache_effective_user
            subprocess.run(["chown", "-R", "proxy:proxy", str(d)], check=True)
        init = subprocess.run(
            [SQUID, "-N", "-z", "-f", str(d / "squid.conf")], capture_output=True, text=True
        )
        if init.returncode != 0:
            raise RuntimeError(f"squid -z failed: {init.stderr}")
        self.process = procs.spawn([SQUID, "-N", "-f", str(d / "squid.conf")], d / "squid.out")
        procs.wait_listening(self.port, self.process, d / "cache.log")


class NginxReverse(Peer):
    """nginx as a reverse cache in front of the upstream: clients use it as their index URL."""

    name = "nginx-rc"
    proxied = False

    def __init__(self, upstream: Upstream, workdir: Path, hosts: list[str]) -> None:
        super().__init__(upstream, workdir, hosts)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = upstream.issue_cert("reverse", "127.0.0.1", *hosts)

    @property
    def client_ca(self) -> Path:
        return self.upstream.ca_pem

    def _config(self) -> str:
        d = self.workdir
        proxy_common = f"""
            proxy_pass https://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {NAMES[0]};
            proxy_ssl_server_name on;
            proxy_ssl_name {NAMES[0]};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {self.upstream.ca_pem};
            proxy_ssl_session_reuse on;"""
        return f"""{nginx_common(d)}
http {{
    access_log off;
    {nginx_temp_paths(d)}
    proxy_cache_path {d}/{CACHE_DIR} levels=1:2 keys_zone=bench:32m max_size=4g
                     inactive=1d use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{self.upstream.port}; keepalive 64; }}
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.cert};
        ssl_certificate_key {self.key};
        ssl_session_cache off;
        ssl_session_tickets off;
        client_max_body_size 0;
        location / {{
            {proxy_common}
            proxy_cache bench;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 600s;
            proxy_cache_revalidate on;
            proxy_cache_use_stale updating error timeout;
            add_header X-Cache-Status $upstream_cache_status;
        }}
        location /git/ {{
            {proxy_common}
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
"""

    def start(self) -> None:
        self.port = procs.free_port()
        (self.workdir / CACHE_DIR).mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self._config())
        self.process = procs.spawn(
            [NGINX, "-c", str(conf), "-p", str(self.workdir)], self.workdir / "nginx.out"
        )
        procs.wait_listening(self.port, self.process, self.workdir / "error.log")


class Mitmproxy(Peer):
    """mitmdump, quiet, streaming bodies over 1 MiB; `.test` names resolved by a tiny addon."""

    name = "mitmproxy"

    @property
    def client_ca(self) -> Path:
        return self.workdir / "conf" / "mitmproxy-ca-cert.pem"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = procs.free_port()
        addon = Path(__file__).resolve().parent / "mitm_resolve.py"
        command = [
            str(MITM_VENV / "bin" / "mitmdump"),
            "--quiet",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(self.port),
            "--set",
            f"confdir={self.workdir / 'conf'}",
            "--set",
            f"ssl_verify_upstream_trusted_ca={self.upstream.ca_pem}",
            "--set",
            "stream_large_bodies=1m",
            "-s",
            str(addon),
        ]
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(self.workdir)}
        self.process = procs.spawn(command, self.workdir / "mitmdump.log", env)
        procs.wait_listening(self.port, self.process, self.workdir / "mitmdump.log")


PEERS: dict[str, type[Peer]] = {
    cls.name: cls for cls in (Direct, Transcache, Squid, NginxReverse, Mitmproxy)
}
