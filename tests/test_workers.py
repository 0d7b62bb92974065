"""`transcache run --workers N`: several serving processes behind one supervisor, seen from a
client. Each test steers its requests to a chosen worker: a keep-alive connection stays with
the worker that accepted it, and that worker names itself (its pid) in /stats.json, so a test
opens connections until it holds the workers it needs."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from transcache._launch import LISTENING_PREFIX
from transcache._metrics import MULTIPROCESS_VARIABLE, Gauges, Metrics

from .conftest import StartProxy
from .origin import Exchange, Origin
from .proxyproc import ProxyProcess

WORKERS = ["--workers", "2"]
DEADLINE_SECONDS = 20.0
FRESH = {"Cache-Control": "max-age=600"}


class WorkerConnection:
    """A keep-alive connection to the proxy, held by one worker."""

    def __init__(self, port: int) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.pid = json.loads(self.get("/stats.json")[2])["pid"]

    def get(
        self, target: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        self.http.request("GET", target, headers=dict(headers or {}))
        response = self.http.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def connections() -> Iterator[list[WorkerConnection]]:
    opened: list[WorkerConnection] = []
    yield opened
    for connection in opened:
        connection.close()


def connect(
    proxy: ProxyProcess, opened: list[WorkerConnection], *, not_to: Collection[int] = ()
) -> WorkerConnection:
    """A connection held by a worker whose pid is not in `not_to` (one that is starting
    takes connections once it listens)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        connection = WorkerConnection(proxy.port)
        if connection.pid not in not_to:
            opened.append(connection)
            return connection
        connection.close()
    raise AssertionError(f"no connection reached a worker other than {not_to}")


def workers_of(pid: int) -> set[int]:
    """The live child processes of `pid` (its workers)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
            state, ppid = stat.read_text().rpartition(")")[2].split()[:2]
        except OSError:
            continue  # ended meanwhile
        if int(ppid) == pid and state != "Z":
            children.add(int(stat.parent.name))
    return children


def until(condition: str, check: Callable[[], bool]) -> None:
    """Wait for `check()` to be true (what a proxy does after a response's last byte, or a
    restart, can trail the client)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"never true: {condition}"
        time.sleep(0.02)


def serving(
    start_proxy: StartProxy, origin: Origin, path: str, body: bytes
) -> tuple[ProxyProcess, str]:
    """A proxy with two workers, and the URL of `body` on `origin` (fresh for ten minutes)."""
    origin.add_file(path, body, headers=FRESH)
    return start_proxy(origin, args=WORKERS), origin.url("files.test", path)


def published(connection: WorkerConnection, url: str) -> tuple[int, dict[str, str], bytes]:
    """`url` from the cache only, once the download behind it is published."""
    answers: list[tuple[int, dict[str, str], bytes]] = []

    def hit() -> bool:
        answers.append(connection.get(url, {"Cache-Control": "only-if-cached"}))
        return answers[-1][0] != 504

    until(f"{url} is published", hit)
    return answers[-1]


def test_a_body_fetched_through_one_worker_is_a_hit_through_another(
    start_proxy: StartProxy, plain_origin: Origin, connections: list[WorkerConnection]
) -> None:
    data = os.urandom(256 * 1024)
    proxy, url = serving(start_proxy, plain_origin, "/one.whl", data)
    first = connect(proxy, connections)
    second = connect(proxy, connections, not_to={first.pid})
    assert first.get(url)[2] == data
    status, headers, body = published(second, url)
    assert (status, body) == (200, data)
    assert headers["cache-status"] == "transcache; hit"
    assert len(plain_origin.requests_to("/one.whl")) == 1


def test_two_workers_asked_for_one_cold_key_at_once_make_one_upstream_request(
    start_proxy: StartProxy, plain_origin: Origin, connections: list[WorkerConnection]
) -> None:
    arrived, release = threading.Event(), threading.Event()

    def held(exchange: Exchange) -> None:
        arrived.set()
        release.wait(DEADLINE_SECONDS)
        exchange.respond(200, FRESH, b"fetched once")

    plain_origin.add_route("/held.whl", held)
    url = plain_origin.url("files.test", "/held.whl")
    proxy = start_proxy(plain_origin, args=WORKERS)
    first = connect(proxy, connections)
    second = connect(proxy, connections, not_to={first.pid})
    with ThreadPoolExecutor(2) as pool:
        downloading = pool.submit(first.get, url)
        assert arrived.wait(DEADLINE_SECONDS)
        waiting = pool.submit(second.get, url)
        assert proxy.log_lines("waiting for the download another process has under way")
        release.set()
        assert downloading.result()[2] == waiting.result()[2] == b"fetched once"
    assert waiting.result()[1]["cache-status"] == "transcache; hit"
    assert len(plain_origin.requests_to("/held.whl")) == 1


def test_a_killed_worker_is_replaced_and_the_others_keep_serving(
    start_proxy: StartProxy, plain_origin: Origin, connections: list[WorkerConnection]
) -> None:
    proxy, url = serving(start_proxy, plain_origin, "/still.whl", b"still served")
    survivor = connect(proxy, connections)
    (victim,) = workers_of(proxy.process.pid) - {survivor.pid}
    os.kill(victim, signal.SIGKILL)
    for _ in range(10):  # over the survivor's connection, and over new ones
        fresh = WorkerConnection(proxy.port)
        for connection in (survivor, fresh):
            status, _, body = connection.get(url)
            assert (status, body) == (200, b"still served")
        assert fresh.pid != victim
        fresh.close()
    replacement = connect(proxy, connections, not_to={survivor.pid}).pid
    assert replacement != victim
    assert workers_of(proxy.process.pid) == {survivor.pid, replacement}
    assert proxy.log_lines(f"(pid {victim}) ended with status -9")


def test_sigterm_stops_every_worker_and_ready_is_sent_once(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(DEADLINE_SECONDS)
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "transcache", "run", "--listen", "127.0.0.1:0"),
                *("--ca-dir", str(tmp_path / "ca"), "--cache-dir", str(tmp_path / "cache")),
                *WORKERS,
            ],
            env={**os.environ, "NOTIFY_SOCKET": str(path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert notify.recv(4096) == b"READY=1"
            assert process.stdout is not None
            assert process.stdout.readline().startswith(LISTENING_PREFIX)
            workers = workers_of(process.pid)
            assert len(workers) == 2
            os.kill(min(workers), signal.SIGKILL)  # replaced, without a second READY
            until("a new worker", lambda: len(workers_of(process.pid) - workers) == 1)
            workers |= workers_of(process.pid)
            process.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"
            assert process.wait(DEADLINE_SECONDS) == 0
            notify.setblocking(False)
            with pytest.raises(BlockingIOError):
                notify.recv(4096)  # nothing else was sent
            assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
        finally:
            process.kill()
            process.wait()


def test_workers_run_the_command_line_given_to_main_not_the_interpreters(tmp_path: Path) -> None:
    # An embedder calls cli.main(argv) from its own program, whose sys.argv says nothing of
    # transcache: the workers must get `argv`.
    argv = [
        *("run", "--listen", "127.0.0.1:0"),
        *("--ca-dir", str(tmp_path / "ca"), "--cache-dir", str(tmp_path / "cache"), *WORKERS),
    ]
    embedder = f"import sys; from transcache.cli import main; sys.exit(main({argv!r}))"
    process = subprocess.Popen(
        [sys.executable, "-c", embedder, "--unrelated"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(LISTENING_PREFIX), process.communicate(timeout=DEADLINE_SECONDS)
        until("two workers", lambda: len(workers_of(process.pid)) == 2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE_SECONDS) == 0
    finally:
        process.kill()
        process.wait()


def test_metrics_and_the_status_page_sum_the_workers(
    start_proxy: StartProxy, plain_origin: Origin, connections: list[WorkerConnection]
) -> None:
    proxy, url = serving(start_proxy, plain_origin, "/counted.whl", b"counted")
    first = connect(proxy, connections)
    second = connect(proxy, connections, not_to={first.pid})
    assert first.get(url)[0] == second.get(url)[0] == 200

    def requests_counted(connection: WorkerConnection) -> float:
        page = connection.get("/metrics")[2].decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in page.splitlines()
            if line.startswith("transcache_requests_total{")
        )

    until("both workers' requests are counted", lambda: requests_counted(first) == 2)
    assert requests_counted(second) == 2  # whichever worker answers, it counts them all
    # The status page adds up the other workers' snapshots (written every second).
    summary = '<tr><td>requests</td><td class="n">2</td></tr>'

    def page_counts_both(connection: WorkerConnection) -> bool:
        return summary in connection.get("/")[2].decode()

    until("the first's status page counts both", lambda: page_counts_both(first))
    until("the second's status page counts both", lambda: page_counts_both(second))


def test_a_worker_failing_at_start_stops_the_run_with_its_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "transcache", "run", "--listen", "127.0.0.1:0"),
            *("--ca-dir", str(tmp_path / "ca"), "--cache-dir", str(tmp_path / "cache")),
            *("--tls-cert", missing, "--tls-key", missing, *WORKERS),
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )
    assert result.returncode == 2  # the worker's: a usage error
    assert result.stdout == ""  # no listening line
    assert result.stderr.count(f"cannot use --tls-cert {missing}") == 1  # one worker started
    assert "worker 0 ended (2) before it listened" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_scrape_skips_the_metrics_file_a_starting_worker_is_creating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prometheus_client creates a worker's file empty, then sizes it: a scrape in between
    # failed with struct.error before the page skipped empty files.
    monkeypatch.setenv(MULTIPROCESS_VARIABLE, str(tmp_path))
    (tmp_path / "counter_12345.db").touch()
    status, _, page = Metrics(lambda: Gauges(connections_open=3, downloads_in_flight=0)).render()
    assert status == 200
    assert b"transcache_connections_open 3.0" in page
