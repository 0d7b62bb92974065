"""Connection limits: the fd limit raised at start, a cap on client connections that keeps
the proxy answering through a flood of silent sockets, accept errors (EMFILE) backed off and
logged once, and request bodies cut when they stall or trickle."""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio
import trio.testing

from transcache._config import Config, ConfigError, load_config_file
from transcache._limits import BodyPace, ConnectionSlots, default_max_connections

from .conftest import resolve_names
from .inprocess import connected, proxy_server
from .origin import Origin
from .proxyproc import ProxyProcess
from .test_bad_input import exchange, read_all, status_of

LOW_FD_LIMIT = (200, 200)
# More silent sockets than the proxy has file descriptors.
FLOOD = 300
# "Promptly": far below the header timeout (30 s) that frees a silent socket's descriptor.
PROMPT = 10.0


@pytest.fixture
def proxies(tmp_path: Path, origin_ca_pem: Path) -> Iterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    yield started
    for proxy in started:
        assert proxy.stop() == 0, proxy.log
        assert "Traceback" not in proxy.log, proxy.log


def start(
    proxies: list[ProxyProcess],
    tmp_path: Path,
    *origins: Origin,
    args: tuple[str, ...] = (),
    fd_limit: tuple[int, int] | None = None,
) -> ProxyProcess:
    proxy = ProxyProcess.start(
        tmp_path / f"proxy{len(proxies)}",
        resolve=resolve_names(*origins),
        args=args,
        fd_limit=fd_limit,
    )
    proxies.append(proxy)
    return proxy


def open_silent_sockets(proxy: ProxyProcess, count: int, stack: ExitStack) -> list[socket.socket]:
    """Connections that never send a byte (the kernel completes them; the proxy must cope)."""
    return [
        stack.enter_context(socket.create_connection(("127.0.0.1", proxy.port), timeout=30))
        for _ in range(count)
    ]


def healthz(proxy: ProxyProcess, timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return read_all(sock)


def nofile_limits(proxy: ProxyProcess) -> tuple[int, int]:
    limits = Path(f"/proc/{proxy.process.pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.MULTILINE)
    assert match, limits
    return int(match[1]), int(match[2])


def test_soft_fd_limit_is_raised_to_the_hard_limit(
    proxies: list[ProxyProcess], tmp_path: Path
) -> None:
    proxy = start(proxies, tmp_path, fd_limit=(200, 400))
    assert nofile_limits(proxy) == (400, 400)


def test_flood_of_silent_sockets_does_not_starve_a_health_check(
    proxies: list[ProxyProcess], tmp_path: Path
) -> None:
    proxy = start(proxies, tmp_path, fd_limit=LOW_FD_LIMIT)
    with ExitStack() as stack:
        open_silent_sockets(proxy, FLOOD, stack)
        response = healthz(proxy, PROMPT)
        assert status_of(response) == 200, response
    assert "Traceback" not in proxy.log


def test_accept_errors_back_off_and_are_logged_once(
    proxies: list[ProxyProcess], tmp_path: Path
) -> None:
    # A cap above what the descriptors allow: accept itself fails with EMFILE.
    args = ("--max-connections", "1000", "--header-timeout", "1")
    proxy = start(proxies, tmp_path, args=args, fd_limit=LOW_FD_LIMIT)
    with ExitStack() as stack:
        open_silent_sockets(proxy, FLOOD, stack)
        assert proxy.log_lines("EMFILE", timeout=30), proxy.log
        # The silent sockets time out, their descriptors come back, accepting resumes.
        response = healthz(proxy, 60)
        assert status_of(response) == 200, response
    warnings = proxy.log_lines("EMFILE")
    assert 1 <= len(warnings) <= 3, warnings
    assert "Traceback" not in proxy.log


def test_connection_past_the_cap_gets_503(
    proxies: list[ProxyProcess], tmp_path: Path, plain_origin: Origin
) -> None:
    proxy = start(proxies, tmp_path, plain_origin, args=("--max-connections", "2"))
    upload = (
        f"POST http://files.test:{plain_origin.port}/echo HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 4\r\nConnection: close\r\n\r\nab"
    ).encode()
    with ExitStack() as stack:
        busy = open_silent_sockets(proxy, 2, stack)
        for sock in busy:  # mid-body: busy, not idle, so not reclaimable
            sock.sendall(upload)
        # Both uploads are being forwarded (the proxy connected upstream for each) before
        # the third client comes; until then they could still count as idle.
        deadline = time.monotonic() + PROMPT
        while plain_origin.connections < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        refused = healthz(proxy, PROMPT)
        assert status_of(refused) == 503, refused
        assert b"--max-connections" in refused
        for sock in busy:
            sock.sendall(b"cd")
            assert status_of(read_all(sock)) == 200
    assert status_of(healthz(proxy, PROMPT)) == 200


def test_idle_connections_make_room_for_new_ones(
    proxies: list[ProxyProcess], tmp_path: Path
) -> None:
    proxy = start(proxies, tmp_path, args=("--max-connections", "2"))
    with ExitStack() as stack:
        oldest, _ = open_silent_sockets(proxy, 2, stack)
        assert status_of(healthz(proxy, PROMPT)) == 200
        assert oldest.recv(1) == b""  # closed by the proxy to make room


def test_stalled_request_body_is_cut_with_408(proxies: list[ProxyProcess], tmp_path: Path) -> None:
    with Origin.start() as origin:
        proxy = start(proxies, tmp_path, origin, args=("--body-timeout", "0.5"))
        response = exchange(
            proxy,
            f"POST http://files.test:{origin.port}/echo HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 100\r\n\r\nonly this much".encode(),
        )
        assert status_of(response) == 408, response
        assert b"--body-timeout" in response
        # The origin saw the body end early: never a complete-looking request.
        errors = origin.errors_after(1)
    assert len(errors) == 1 and "early" in errors[0], errors


# --- in process, on the virtual clock ----------------------------------------------------------

GIT_UPLOAD = (
    b"POST http://git.test/repo.git/git-upload-pack HTTP/1.1\r\nHost: git.test\r\n"
    b"Content-Type: application/x-git-upload-pack-request\r\nContent-Length: 1000\r\n\r\n"
)


async def test_git_request_body_trickled_under_the_minimum_rate_is_cut(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # git request bodies are read whole before anything goes upstream: no origin needed.
    server = proxy_server(tmp_path, cache=True)

    async def trickle() -> None:
        await client.send(GIT_UPLOAD)
        for _ in range(100):  # one byte every 6 s: progress, but far under 1 KiB/s
            await client.send(b"0")
            await trio.sleep(6)

    async with connected(server.handle) as client, trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        reply = await client.response()
        nursery.cancel_scope.cancel()
    # Cut after the first 30 s window, long before the trickle would end.
    assert trio.current_time() < 60
    assert reply.status == 408, reply
    assert "--min-body-rate" in reply.text


# --- the rules, without sockets or clocks ------------------------------------------------------


@pytest.mark.parametrize(
    ("fd_limit", "cap"), [(200, 34), (1024, 240), (65536, 16368), (64, 1), (10, 1)]
)
def test_connection_cap_follows_the_fd_limit(fd_limit: int, cap: int) -> None:
    assert default_max_connections(fd_limit) == cap


class Waiting:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_a_full_house_makes_room_by_closing_the_longest_idle() -> None:
    slots = ConnectionSlots(limit=2)
    first, second = Waiting(), Waiting()
    assert slots.admit() and slots.admit()
    slots.idle(first)
    slots.idle(second)
    assert slots.admit()  # over the cap: the first idle connection goes
    assert first.cancelled and not second.cancelled
    slots.release()  # ... and ends
    assert slots.count == 2


def test_a_full_house_of_busy_connections_turns_newcomers_away() -> None:
    slots = ConnectionSlots(limit=2)
    waiting = Waiting()
    assert slots.admit() and slots.admit()
    slots.idle(waiting)
    slots.busy(waiting)  # a request arrived
    assert not slots.admit()
    assert not waiting.cancelled
    slots.release()
    assert slots.admit()


@pytest.mark.parametrize(
    ("stall", "min_rate", "reads", "cut_by"),
    [
        # (seconds waited, bytes received) per read; no read waits past `next_wait()`
        (60, 1024, [(0.0, 65536)] * 1000, None),  # fast
        (60, 1024, [(6.0, 1)] * 5, "--min-body-rate"),  # one byte every 6 s
        (60, 1024, [(29.5, 0), (0.5, 30 * 1024)] * 10, None),  # bursty, 1 KiB/s on average
        (60, 1024, [(29.5, 0), (0.5, 30 * 1024 - 1)], "--min-body-rate"),  # a byte short
        (60, 1024, [(30.0, 0)], "--min-body-rate"),  # the rate rule is the stricter one
        (60, 0, [(30.0, 0), (30.0, 0)], "--body-timeout"),  # no minimum rate: 60 s silence
        (60, 0, [(6.0, 1)] * 100, None),
        (0.5, 1024, [(0.1, 100), (0.5, 0)], "--body-timeout"),  # a short stall limit
    ],
)
def test_body_pace(
    stall: float, min_rate: int, reads: list[tuple[float, int]], cut_by: str | None
) -> None:
    pace = BodyPace(stall=stall, min_rate=min_rate)
    reasons = []
    for waited, size in reads:
        assert waited <= pace.next_wait()
        reasons.append(pace.record(waited, size))
    cut = [reason for reason in reasons if reason is not None]
    if cut_by is None:
        assert cut == []
    else:
        assert reasons[-1] is not None and cut_by in reasons[-1], reasons
        assert cut == [reasons[-1]]


def test_body_pace_waits_at_most_to_the_next_decision() -> None:
    pace = BodyPace(stall=60.0, min_rate=1024)
    assert pace.next_wait() == 30.0  # the end of the first window
    pace.record(20.0, 40 * 1024)
    assert pace.next_wait() == 10.0
    pace.record(10.0, 0)  # the window closes with enough bytes
    assert pace.next_wait() == 30.0
    short = BodyPace(stall=0.5, min_rate=1024)
    assert short.next_wait() == 0.5


def test_limits_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "max_connections = 50\nidle_timeout = 5\nbody_timeout = 2.5\nmin_body_rate = '2K'\n"
        "connect_ports = [8443]\nallow_destinations = ['127.0.0.1', 'svc.test']\n"
    )
    config = Config(**load_config_file(path))
    assert config.max_connections == 50
    assert config.idle_timeout == 5.0
    assert config.body_timeout == 2.5
    assert config.min_body_rate == 2048
    assert config.connect_ports == {8443}
    assert config.allow_destinations == (ipaddress.ip_network("127.0.0.1/32"), "svc.test")


@pytest.mark.parametrize(
    "options",
    [{"body_timeout": 0}, {"idle_timeout": -1}, {"max_connections": 0}, {"min_body_rate": -1}],
)
def test_limits_out_of_range_are_config_errors(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Config(**options)  # type: ignore[arg-type]
