"""The local "internet": nginx over TLS on 127.0.0.1 answering for `.test` names, with
git http-backend behind fcgiwrap, and in slow mode a delaying relay in front of it.

Cache headers follow the big public hosts: wheels, metadata and the big file are immutable for
a year, index pages and small pages fresh for ten minutes; nginx adds ETag and Last-Modified.
Every request nginx answers is one line in `access.log`, with its connection's serial number;
`requests_since(mark)` counts requests and connections, which is how a workload learns what a
peer really fetched upstream, and how well it reused its upstream connections.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import trustme

from . import procs
from .data import Content
from .options import SLOW_DELAY_MS, SLOW_RATE_MIB

NAMES = ("index.test", "files.test", "git.test")
NEW_HOST_SUFFIX = "new.test"  # W5 mints a leaf for each <label>.new.test
NGINX = "/usr/sbin/nginx"
FCGIWRAP = "/usr/sbin/fcgiwrap"
GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


def run_as_root_directive() -> str:
    # nginx drops to "nobody" unless told otherwise; our temp dirs belong to the caller.
    return "user root root;" if os.geteuid() == 0 else ""


def nginx_common(workdir: Path) -> str:
    """Top of every nginx config we write: one worker, foreground, files in `workdir`."""
    return f"""
{run_as_root_directive()}
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
"""


def nginx_temp_paths(workdir: Path) -> str:
    return "".join(
        f"{kind}_temp_path {workdir}/tmp-{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


@dataclass
class Upstream:
    workdir: Path
    content: Content
    slow: bool
    ca: trustme.CA
    ca_pem: Path
    nginx_port: int = 0
    port: int = 0  # what clients use: the relay's in slow mode, else nginx's
    floor_port: int = 0  # nginx with no added latency or rate limit (W7's floor); or nginx_port
    _nginx: subprocess.Popen[bytes] | None = None
    _fcgi: subprocess.Popen[bytes] | None = None
    _relay: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, workdir: Path, content: Content, slow: bool) -> Upstream:
        workdir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="transcache bench upstream CA")
        ca_pem = workdir / "upstream-ca.pem"
        ca.cert_pem.write_to_path(str(ca_pem))
        return cls(workdir, content, slow, ca, ca_pem)

    def url(self, host: str, path: str) -> str:
        return f"https://{host}:{self.port}{path}"

    def floor_url(self, path: str) -> str:
        """`path` on the listener with no added latency, as a client without proxy reaches it."""
        return f"https://127.0.0.1:{self.floor_port}{path}"

    def issue_cert(self, name: str, *names: str) -> tuple[Path, Path]:
        """A certificate (and key) from the upstream CA, written into the workdir."""
        leaf = self.ca.issue_cert(*names)
        cert, key = self.workdir / f"{name}.pem", self.workdir / f"{name}-key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    def start(self) -> None:
        cert, key = self.issue_cert("origin", *NAMES, f"*.{NEW_HOST_SUFFIX}", "127.0.0.1")
        sock = self.workdir / "fcgiwrap.sock"
        sock.unlink(missing_ok=True)
        self._fcgi = procs.spawn(
            [FCGIWRAP, "-c", "4", "-s", f"unix:{sock}"], self.workdir / "fcgiwrap.log"
        )
        self.nginx_port = procs.free_port()
        self.floor_port = procs.free_port() if self.slow else self.nginx_port
        conf = self.workdir / "nginx.conf"
        conf.write_text(self._config(cert, key, sock))
        self._nginx = procs.spawn(
            [NGINX, "-c", str(conf), "-p", str(self.workdir)], self.workdir / "nginx.out"
        )
        procs.wait_listening(self.nginx_port, self._nginx, self.workdir / "error.log")
        self.port = self.nginx_port
        if self.slow:
            self.port = procs.free_port()
            self._relay = procs.spawn(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.relay",
                    str(self.port),
                    str(self.nginx_port),
                    str(SLOW_DELAY_MS),
                ],
                self.workdir / "relay.log",
            )
            procs.wait_listening(self.port, self._relay, self.workdir / "relay.log")

    def _config(self, cert: Path, key: Path, sock: Path) -> str:
        servers = self._server(self.nginx_port, cert, key, sock, self.slow)
        if self.floor_port != self.nginx_port:
            servers += self._server(self.floor_port, cert, key, sock, slow=False)
        return f"""{nginx_common(self.workdir)}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    log_format counted '$connection $request_method $uri $status $body_bytes_sent';
    access_log {self.workdir}/access.log counted;
    {nginx_temp_paths(self.workdir)}
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
{servers}
}}
"""

    def _server(self, port: int, cert: Path, key: Path, sock: Path, slow: bool) -> str:
        root = self.content.root
        rate = f"limit_rate {SLOW_RATE_MIB}m;" if slow else ""
        year = 'add_header Cache-Control "public, max-age=31536000, immutable" always;'
        short = 'add_header Cache-Control "public, max-age=600" always;'
        return f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name _;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache off;
        ssl_session_tickets off;
        root {root};
        {rate}
        location /simple/ {{ {short} }}
        location /files/ {{ {year} }}
        location /big/ {{ {year} }}
        location /pages/ {{ {short} }}
        location /git/ {{
            client_max_body_size 0;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME {GIT_HTTP_BACKEND};
            fastcgi_param GIT_PROJECT_ROOT {self.content.git_root};
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param GIT_PROTOCOL $http_git_protocol;
            fastcgi_split_path_info ^(/git)(/.*)$;
            fastcgi_param PATH_INFO $fastcgi_path_info;
            fastcgi_pass unix:{sock};
        }}
    }}"""

    def mark(self) -> int:
        """A position in the access log; pass it to `requests_since`."""
        log = self.workdir / "access.log"
        return log.stat().st_size if log.exists() else 0

    def requests_since(self, mark: int) -> tuple[int, int]:
        """(requests, distinct connections) the upstream served since `mark`."""
        with (self.workdir / "access.log").open("rb") as log:
            log.seek(mark)
            lines = log.read().splitlines()
        return len(lines), len({line.split(b" ", 1)[0] for line in lines})

    def stop(self) -> None:
        for process in (self._relay, self._nginx, self._fcgi):
            if process is not None:
                procs.stop(process)

    def clean(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
