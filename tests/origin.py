"""Local origin servers for the end-to-end tests.

Provides:

- `Origin`: a threaded HTTP/1.1 (optionally TLS) server on 127.0.0.1 with an OS-chosen port.
  It records every request (`requests`, `requests_to`), counts accepted TCP connections
  (`connections`) and collects unexpected handler failures (`errors`). Routes live in a small
  dispatch table: exact paths first, then the longest matching prefix.
- Built-in routes: `/echo` (any method; JSON description of the request, body hashed),
  `/bytes/N` (N bytes of `pattern()` with Content-Length) and `/chunked/N` (the same, chunked).
- `Origin.add_file` for static files (ETag, Last-Modified, If-None-Match -> 304, one byte
  range -> 206/416), `Origin.add_git` for git smart HTTP through `git http-backend` (CGI, push
  enabled), `Origin.add_route` for anything else.
- `issue_origin_cert` / `issue_untrusted_cert`: certificates from a test CA (trustme) that the
  proxy is told to trust, or from a throwaway CA that nobody trusts.
- `client_env`: the minimal, explicit environment for client subprocesses (curl, pip, uv, git),
  so nothing from the machine's CA or pip configuration leaks into a test.

How it works: `socketserver.ThreadingTCPServer` runs one thread per connection; the handler is
stdlib `http.server.BaseHTTPRequestHandler` speaking HTTP/1.1 with keep-alive. TLS is wrapped
per accepted socket and the handshake runs in the connection's thread, so a stuck client never
blocks accept. Each request is wrapped in an `Exchange`, which decodes the request body
(Content-Length or chunked) and, when the route starts its response, drains whatever body is
left and records the request, so a client that has its response can always see its request in
`requests`. `stop()` shuts the listener, force-closes the connections still open (keep-alive
clients, a proxy's pool) and joins every thread.
"""

from __future__ import annotations

import email.message
import email.utils
import hashlib
import http.server
import io
import json
import os
import re
import selectors
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, NamedTuple, Self
from urllib.parse import urlsplit

import trustme

# Names the origins answer to; all of them reach 127.0.0.1 (through the proxy's resolve
# override, or directly for 127.0.0.1).
ORIGIN_NAMES = ("index.test", "files.test", "git.test", "127.0.0.1")
UNTRUSTED_NAMES = ("untrusted.test",)

PATTERN_BLOCK_SIZE = 1024 * 1024  # /bytes and /chunked write this one buffer again and again
COPY_SIZE = 64 * 1024  # read size for request bodies and CGI output
MAX_LINE = 64 * 1024  # longest chunk-size, trailer or CGI header line accepted
SOCKET_TIMEOUT = 60.0  # per socket operation; a safety net, stop() does not wait for it
BODYLESS_STATUSES = frozenset({204, 304})

Route = Callable[["Exchange"], None]


# --- certificates ----------------------------------------------------------------------------


def issue_origin_cert(ca: trustme.CA, *names: str) -> trustme.LeafCert:
    """A server certificate from `ca` for `names` (default: every name in ORIGIN_NAMES)."""
    return ca.issue_cert(*(names or ORIGIN_NAMES))


def issue_untrusted_cert(*names: str) -> trustme.LeafCert:
    """A server certificate from a fresh CA that is thrown away, so no client can trust it."""
    return trustme.CA().issue_cert(*(names or UNTRUSTED_NAMES))


# --- client environment ----------------------------------------------------------------------


def client_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a client subprocess: nothing inherited but PATH.

    The machine's environment carries CA bundles, pip configuration and proxy variables; a
    test states the few it needs in `extra` (for example SSL_CERT_FILE or GIT_SSL_CAINFO).
    """
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "UV_NO_CONFIG": "1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    env.update(extra or {})
    return env


# --- the byte pattern ------------------------------------------------------------------------

_PATTERN_BLOCK = bytes(range(256)) * (PATTERN_BLOCK_SIZE // 256)


def pattern(length: int) -> bytes:
    """The first `length` bytes that /bytes/N and /chunked/N send: 0, 1, ..., 255, 0, 1, ..."""
    return (bytes(range(256)) * (length // 256 + 1))[:length]


def _pattern_pieces(length: int) -> Iterator[memoryview]:
    block = memoryview(_PATTERN_BLOCK)
    remaining = length
    while remaining > 0:
        piece = block[: min(remaining, PATTERN_BLOCK_SIZE)]
        remaining -= len(piece)
        yield piece


# --- requests and responses ------------------------------------------------------------------


class RecordedRequest(NamedTuple):
    """One request as the origin received it. `headers` has lower-case names; repeated fields
    are joined with ", ". `path` is the full request target, query included."""

    method: str
    path: str
    headers: dict[str, str]
    body_len: int


class MalformedRequestError(Exception):
    """The request body's framing is broken (bad chunk size line, early EOF)."""


class _Body:
    """The decoded request body, read at most once, from Content-Length or chunked framing."""

    def __init__(self, rfile: io.BufferedIOBase, headers: Mapping[str, str]) -> None:
        self.length = 0
        self._rfile = rfile
        codings = headers.get("transfer-encoding", "").lower().split(",")
        if codings[-1].strip() == "chunked":
            self._chunks = self._read_chunked()
        else:
            self._chunks = self._read_exactly(int(headers.get("content-length", "0")))

    def chunks(self) -> Iterator[bytes]:
        return self._chunks

    def drain(self) -> None:
        for _ in self._chunks:
            pass

    def _read_exactly(self, size: int) -> Iterator[bytes]:
        remaining = size
        while remaining > 0:
            data = self._rfile.read(min(remaining, COPY_SIZE))
            if not data:
                raise MalformedRequestError(f"body ended {remaining} bytes early")
            remaining -= len(data)
            self.length += len(data)
            yield data

    def _read_chunked(self) -> Iterator[bytes]:
        while True:
            size_field = self._read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise MalformedRequestError(f"bad chunk size {size_field!r}") from None
            if size == 0:
                break
            yield from self._read_exactly(size)
            if self._read_line().strip():
                raise MalformedRequestError("chunk data not followed by CRLF")
        while self._read_line().strip():  # trailer fields, ignored
            pass

    def _read_line(self) -> bytes:
        line = self._rfile.readline(MAX_LINE)
        if not line.endswith(b"\n"):
            raise MalformedRequestError("truncated or overlong line in chunked body")
        return line


def _headers_dict(message: email.message.Message) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in message.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


class Exchange:
    """One request as a route sees it: the request head, the body, and the response writer.

    A route calls `respond()` once, or `start()` followed by any number of `write()`s; the
    dispatcher ends a chunked response. Bodies are never written for HEAD, 204 or 304.
    """

    def __init__(self, handler: _Handler) -> None:
        self.method = handler.command
        self.target = handler.path
        split = urlsplit(handler.path)
        self.path = split.path
        self.query = split.query
        self.headers = _headers_dict(handler.headers)
        self.client_address: str = handler.client_address[0]
        self._handler = handler
        self._body = _Body(handler.rfile, self.headers)
        self._started = False
        self._chunked = False
        self._sends_body = False

    def body_chunks(self) -> Iterator[bytes]:
        """The decoded request body, piece by piece; it can be consumed once."""
        return self._body.chunks()

    @property
    def body_len(self) -> int:
        """How many body bytes have been read so far (all of them, once the body is consumed)."""
        return self._body.length

    def respond(
        self, status: int, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> None:
        self.start(status, headers, length=len(body))
        self.write(body)

    def start(self, status: int, headers: Mapping[str, str] | None, *, length: int | None) -> None:
        """Send the status line and headers; `length=None` means a chunked body follows."""
        if self._started:
            raise RuntimeError("response already started")
        self._started = True
        self._body.drain()
        self._handler.origin.record(
            RecordedRequest(self.method, self.target, self.headers, self._body.length)
        )
        self._sends_body = self.method != "HEAD" and status not in BODYLESS_STATUSES
        handler = self._handler
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if status not in BODYLESS_STATUSES:
            if length is None:
                self._chunked = True
                handler.send_header("Transfer-Encoding", "chunked")
            else:
                handler.send_header("Content-Length", str(length))
        handler.end_headers()

    def write(self, data: bytes | memoryview) -> None:
        if not self._sends_body or not data:
            return
        wfile = self._handler.wfile
        if self._chunked:
            wfile.write(b"%x\r\n" % len(data))
            wfile.write(data)
            wfile.write(b"\r\n")
        else:
            wfile.write(data)

    def abort(self) -> None:
        """Cut the connection mid-response, as an origin that resets would."""
        self._handler.wfile.flush()
        socket.socket.shutdown(self._handler.connection, socket.SHUT_RDWR)
        raise ConnectionResetError("route aborted the response")

    def end(self) -> None:
        if not self._started:
            raise RuntimeError(f"route for {self.target} sent no response")
        if self._chunked and self._sends_body:
            self._handler.wfile.write(b"0\r\n\r\n")


# --- routes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaticFile:
    """A static representation; `headers` are added to (and override) the generated ones."""

    data: bytes
    content_type: str
    headers: Mapping[str, str]
    etag: str
    last_modified: str

    @classmethod
    def of(
        cls,
        data: bytes,
        content_type: str = "application/octet-stream",
        headers: Mapping[str, str] | None = None,
    ) -> StaticFile:
        """A file whose ETag is a hash of `data` and whose Last-Modified is now."""
        return cls(
            data=data,
            content_type=content_type,
            headers=dict(headers or {}),
            etag='"' + hashlib.sha256(data).hexdigest()[:32] + '"',
            last_modified=email.utils.formatdate(usegmt=True),
        )


class _UnsatisfiableRangeError(Exception):
    pass


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _byte_range(value: str, size: int) -> tuple[int, int] | None:
    """The (first, last) byte of a single-range `Range` value; None means send everything
    (absent, multi-range or unparseable values are answered with the full body)."""
    match = _RANGE.fullmatch(value.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # suffix: the last N bytes
        if int(last) == 0:
            raise _UnsatisfiableRangeError
        return max(size - int(last), 0), size - 1
    if int(first) >= size:
        raise _UnsatisfiableRangeError
    end = size - 1 if last == "" else min(int(last), size - 1)
    if end < int(first):
        return None
    return int(first), end


def _etag_matches(if_none_match: str, etag: str) -> bool:
    candidates = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in candidates or etag.removeprefix("W/") in candidates


def serve_file(exchange: Exchange, file: StaticFile) -> None:
    """Answer GET/HEAD for `file`, honouring If-None-Match and a single Range (with If-Range)."""
    if exchange.method not in ("GET", "HEAD"):
        exchange.respond(405, {"Allow": "GET, HEAD"})
        return
    validators = {"ETag": file.etag, "Last-Modified": file.last_modified}
    headers = {
        "Content-Type": file.content_type,
        "Accept-Ranges": "bytes",
        **validators,
        **file.headers,
    }
    if_none_match = exchange.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, file.etag):
        exchange.respond(304, {**validators, **file.headers})
        return
    size = len(file.data)
    requested = exchange.headers.get("range")
    if_range = exchange.headers.get("if-range")
    if requested is None or (if_range is not None and if_range not in validators.values()):
        exchange.respond(200, headers, file.data)
        return
    try:
        byte_range = _byte_range(requested, size)
    except _UnsatisfiableRangeError:
        exchange.respond(416, {**headers, "Content-Range": f"bytes */{size}"})
        return
    if byte_range is None:
        exchange.respond(200, headers, file.data)
        return
    first, last = byte_range
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    exchange.respond(206, headers, file.data[first : last + 1])


def _serve_echo(exchange: Exchange) -> None:
    digest = hashlib.sha256()
    for chunk in exchange.body_chunks():
        digest.update(chunk)
    body = json.dumps(
        {
            "method": exchange.method,
            "path": exchange.target,
            "headers": exchange.headers,
            "body_sha256": digest.hexdigest(),
            "body_len": exchange.body_len,
        }
    ).encode()
    exchange.respond(200, {"Content-Type": "application/json"}, body)


def _pattern_length(exchange: Exchange) -> int | None:
    length = exchange.path.rpartition("/")[2]
    return int(length) if length.isdigit() else None


def _serve_pattern(exchange: Exchange, *, chunked: bool) -> None:
    length = _pattern_length(exchange)
    if length is None:
        exchange.respond(404, {"Content-Type": "text/plain"}, b"expected /bytes/<N>\n")
        return
    headers = {"Content-Type": "application/octet-stream"}
    exchange.start(200, headers, length=None if chunked else length)
    if exchange.method != "HEAD":
        for piece in _pattern_pieces(length):
            exchange.write(piece)


def _serve_bytes(exchange: Exchange) -> None:
    _serve_pattern(exchange, chunked=False)


def _serve_chunked(exchange: Exchange) -> None:
    _serve_pattern(exchange, chunked=True)


# git http-backend as CGI. Push is enabled for every repository served (anonymous
# receive-pack needs http.receivepack=true), through command-scope configuration so that any
# bare repository works, not only those made by tests/gitrepo.py.
_GIT_CGI_CONFIG = {"http.receivepack": "true"}


def _git_cgi_env(
    exchange: Exchange, project_root: Path, path_info: str, length: int
) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_COUNT": str(len(_GIT_CGI_CONFIG)),
        "GIT_PROJECT_ROOT": str(project_root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": exchange.method,
        "PATH_INFO": path_info,
        "QUERY_STRING": exchange.query,
        "CONTENT_LENGTH": str(length),
        "REMOTE_ADDR": exchange.client_address,
    }
    for index, (key, value) in enumerate(_GIT_CGI_CONFIG.items()):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    for header, variable in (
        ("content-type", "CONTENT_TYPE"),
        ("git-protocol", "HTTP_GIT_PROTOCOL"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
    ):
        if header in exchange.headers:
            env[variable] = exchange.headers[header]
    return env


def _read_cgi_head(stdout: IO[bytes]) -> tuple[int, dict[str, str]]:
    status = 200
    headers: dict[str, str] = {}
    while True:
        line = stdout.readline(MAX_LINE).rstrip(b"\r\n").decode("latin-1")
        if not line:
            return status, headers
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        else:
            headers[name.strip()] = value.strip()


def _serve_git(exchange: Exchange, *, prefix: str, project_root: Path) -> None:
    git = shutil.which("git")
    if git is None:
        raise RuntimeError("git is not on PATH")
    # The whole body is spooled before the CGI starts, so it never waits on a half-read pipe.
    with tempfile.TemporaryFile() as body:
        for chunk in exchange.body_chunks():
            body.write(chunk)
        length = body.tell()
        body.seek(0)
        env = _git_cgi_env(exchange, project_root, exchange.path.removeprefix(prefix), length)
        with subprocess.Popen(
            [git, "http-backend"], stdin=body, stdout=subprocess.PIPE, env=env
        ) as process:
            stdout = process.stdout
            assert isinstance(stdout, io.BufferedReader)
            status, headers = _read_cgi_head(stdout)
            content_length = headers.pop("Content-Length", None)
            length_or_chunked = None if content_length is None else int(content_length)
            exchange.start(status, headers, length=length_or_chunked)
            while data := stdout.read1(COPY_SIZE):
                exchange.write(data)


# --- the server ------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle holds the second
    # until the client's delayed ACK, 40 ms per response.
    disable_nagle_algorithm = True
    timeout = SOCKET_TIMEOUT

    @property
    def origin(self) -> Origin:
        server = self.server
        assert isinstance(server, _Server)
        return server.origin

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def _dispatch(self) -> None:
        exchange = Exchange(self)
        route = self.origin.route_for(exchange.path)
        if route is None:
            exchange.respond(404, {"Content-Type": "text/plain"}, b"not found\n")
        else:
            route(exchange)
        exchange.end()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the origin reports through `requests` and `errors`, not stderr."""


class _Server(socketserver.ThreadingTCPServer):
    # socketserver joins only non-daemon connection threads in server_close().
    daemon_threads = False
    block_on_close = True

    def __init__(self, origin: Origin, tls: ssl.SSLContext | None) -> None:
        self.origin = origin
        self._tls = tls
        self._wake_reader, self._wake_writer = socket.socketpair()
        super().__init__(("127.0.0.1", 0), _Handler)

    def serve_until_woken(self) -> None:
        """Accept connections until `wake()`. Unlike serve_forever(), whose shutdown() waits
        for the next poll tick, this stops as soon as it is woken."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not any(key.fileobj is self._wake_reader for key, _ in selector.select()):
                try:
                    request, address = self.get_request()
                except OSError:
                    continue  # the client gave up before we accepted
                self.process_request(request, address)

    def wake(self) -> None:
        self._wake_writer.send(b"\0")

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = self.socket.accept()
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except OSError:
                sock.close()
                raise
        self.origin.opened(sock)
        return sock, address

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        assert isinstance(request, socket.socket)
        self.origin.closed(request)
        super().shutdown_request(request)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        error = sys.exc_info()[1]
        assert error is not None
        self.origin.handler_failed(error)


class Origin:
    """A test origin on 127.0.0.1:<port 0>; `Origin.start(tls_cert=...)`, then `stop()` or use
    it as a context manager."""

    def __init__(self, tls_cert: trustme.LeafCert | None) -> None:
        self.scheme = "http" if tls_cert is None else "https"
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._connections = 0
        self._open: set[socket.socket] = set()
        self._stopping = False
        self._exact: dict[str, Route] = {}
        self._prefixes: dict[str, Route] = {}
        tls = None
        if tls_cert is not None:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls_cert.configure_cert(tls)
            tls.set_alpn_protocols(["http/1.1"])
        self._server = _Server(self, tls)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_until_woken, name=f"origin:{self.port}", daemon=True
        )
        self.add_route("/echo", _serve_echo)
        self.add_route("/bytes/", _serve_bytes, prefix=True)
        self.add_route("/chunked/", _serve_chunked, prefix=True)

    @classmethod
    def start(cls, tls_cert: trustme.LeafCert | None = None) -> Origin:
        """Listen on 127.0.0.1 (https when `tls_cert` is given, else http) and serve."""
        origin = cls(tls_cert)
        origin._thread.start()
        return origin

    def stop(self) -> None:
        """Stop accepting, cut the connections still open, and join every thread (once)."""
        if not self._thread.is_alive():
            return
        self._server.wake()
        self._thread.join()
        with self._lock:
            self._stopping = True
            still_open = list(self._open)
        for sock in still_open:
            # socket.socket.shutdown, not SSLSocket.shutdown: wakes a thread blocked in a read
            # or write without touching the TLS state that thread is using.
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, host: str, path: str = "/") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    @property
    def connections(self) -> int:
        """How many TCP connections the origin has accepted."""
        with self._lock:
            return self._connections

    def errors_after(self, count: int = 1, timeout: float = 10.0) -> list[str]:
        """The handler failures, once there are `count` of them (or after `timeout`): a
        handler notices a client's hang-up in its own thread, after the client has moved on,
        and `stop()` ignores failures from then on."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                errors = list(self.errors)
            if len(errors) >= count or time.monotonic() > deadline:
                return errors
            time.sleep(0.02)

    def requests_to(self, target: str) -> list[RecordedRequest]:
        """The recorded requests whose target (path and query) is exactly `target`."""
        with self._lock:
            return [request for request in self.requests if request.path == target]

    # -- routes

    def add_route(self, path: str, route: Route, *, prefix: bool = False) -> None:
        """Serve `path` (or, with `prefix=True`, everything under `path`) with `route`."""
        with self._lock:
            (self._prefixes if prefix else self._exact)[path] = route

    def route_for(self, path: str) -> Route | None:
        with self._lock:
            if path in self._exact:
                return self._exact[path]
            matches = [prefix for prefix in self._prefixes if path.startswith(prefix)]
            return self._prefixes[max(matches, key=len)] if matches else None

    def add_file(
        self,
        path: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        headers: Mapping[str, str] | None = None,
    ) -> StaticFile:
        """Serve `data` at `path` for GET and HEAD; returns the file (its ETag, ...)."""
        file = StaticFile.of(data, content_type, headers)
        self.add_route(path, lambda exchange: serve_file(exchange, file))
        return file

    def add_git(self, prefix: str, project_root: Path) -> None:
        """Serve the repositories under `project_root` at /<prefix>/<repo>/ (fetch and push)."""
        url_prefix = "/" + prefix.strip("/")
        root = project_root.resolve()
        self.add_route(
            url_prefix + "/",
            lambda exchange: _serve_git(exchange, prefix=url_prefix, project_root=root),
            prefix=True,
        )

    # -- called by the server threads

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._open.add(sock)

    def closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def handler_failed(self, error: BaseException) -> None:
        """Keep unexpected failures for the test to assert on; a client that hangs up or
        rejects the certificate, and connections cut by stop(), are not failures."""
        with self._lock:
            if self._stopping or isinstance(error, ConnectionError | ssl.SSLError | TimeoutError):
                return
            self.errors.append("".join(traceback.format_exception(error)))
