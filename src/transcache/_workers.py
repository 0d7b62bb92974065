"""`transcache run --workers N`: N serving processes behind one supervisor.

The supervisor (the process `transcache run` started) binds the listening sockets, or adopts
those of socket activation, creates the CA and the cache's directories, then starts N workers:
`transcache run` again with the same flags and `--workers 1`. A worker finds the sockets'
descriptors in WORKER_FDS_VARIABLE (handed over with `pass_fds`) and accepts from them, so all
workers share one accept queue; it is otherwise today's single process, on the same cache dir
and CA. Inherited sockets rather than SO_REUSEPORT: one queue lets whichever worker is free
take the next connection (SO_REUSEPORT hashes each connection to one worker, busy or not, and
a dying worker's queued connections are lost); no other process of the user can bind the port
alongside us; and socket activation hands over one socket anyway.

What the supervisor promises:
- READY=1 (sd_notify) once, when every worker has said it listens (its first stdout line);
  worker 0's output is what `transcache run` prints;
- SIGTERM and SIGINT stop every worker (STOPPING=1 first), SIGHUP reloads every worker;
- a worker that dies is started again: at once if it had served a while, after a pause that
  doubles (up to MAX_BACKOFF_SECONDS) while it keeps dying young. At startup, worker 0 starts
  first and the others once it listens; a worker that exits before it listens stops the whole
  run with its exit status: a bad flag or config file would only loop;
- a private run dir (0700, removed at exit; a temp dir of the cache, which the next proxy on
  it removes should the supervisor die first) for what the workers share: prometheus_client's
  multiprocess files (PROMETHEUS_MULTIPROC_DIR) and each worker's snapshot for the status page
  (`_observe`); the snapshot of a worker that died is removed with it;
- a worker's stdin is a pipe from the supervisor that is never written: at its end (the
  supervisor died, even by SIGKILL) the worker stops itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path

import trio

from . import _notify
from ._ca import CertificateAuthority
from ._config import Config
from ._metrics import MULTIPROCESS_VARIABLE
from .store.layout import Layout, TempDir

log = logging.getLogger("transcache")

WORKER_FDS_VARIABLE = "TRANSCACHE_WORKER_FDS"
RUN_DIR_VARIABLE = "TRANSCACHE_RUN_DIR"
METRICS_DIR_NAME = "metrics"
SNAPSHOT_PREFIX = "worker-"
# A worker that dies within this many seconds of starting died young: wait before the next.
YOUNG_SECONDS = 10.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
# How long stopping workers get to finish before they are killed.
STOP_SECONDS = 15.0
READ_SIZE = 4096


def usable_cores() -> int:
    """The cores this process may run on (its affinity), the default number of workers."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def snapshot_path(run_dir: Path, pid: int) -> Path:
    return run_dir / f"{SNAPSHOT_PREFIX}{pid}.json"


def worker_sockets(environ: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """In a worker, the listening sockets its supervisor handed over; none elsewhere."""
    fds = environ.pop(WORKER_FDS_VARIABLE, "")
    sockets = []
    for fd in map(int, fds.split()):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


def run_dir(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """In a worker, the run dir it shares with the other workers; None elsewhere."""
    value = environ.get(RUN_DIR_VARIABLE)
    return Path(value) if value else None


async def stop_with_supervisor() -> None:
    """In a worker: SIGTERM ourselves once the supervisor's pipe on stdin ends."""
    await trio.lowlevel.wait_readable(sys.stdin.fileno())
    os.kill(os.getpid(), signal.SIGTERM)


async def supervise(config: Config, argv: Sequence[str], count: int) -> int:
    """Run `count` workers of `transcache ARGV` until SIGTERM or SIGINT; the exit status: 0,
    or that of a worker that failed to start (it said why on stderr)."""
    CertificateAuthority.load_or_create(config.ca_dir)
    if config.cache:
        with contextlib.suppress(OSError):  # a worker reports it, and serves without a cache
            Layout(config.cache_dir).create()
    # Under socket activation the service manager's sockets replace --listen.
    inherited = _notify.inherited_sockets()
    listeners = _notify.trio_listeners(inherited) or await trio.open_tcp_listeners(
        config.listen_port, host=config.listen_host
    )
    fds = [listener.socket.fileno() for listener in listeners]
    command = [sys.executable, "-m", "transcache", *argv, "--workers", "1"]
    with (
        _private_run_dir(config) as shared,
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals,
    ):
        env = _worker_environment(os.environ, fds, shared)
        workers = Workers(command, env, fds, shared)
        async with trio.open_nursery() as nursery:
            # One first: a bad flag or config file is then reported once, not by every worker.
            nursery.start_soon(workers.keep, 0)
            if await workers.listening(1):
                for index in range(1, count):
                    nursery.start_soon(workers.keep, index)
            if await workers.listening(count):
                workers.announce()
                _notify.notify("READY=1")
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        workers.send(signal.SIGHUP)
                        continue
                    name = signal.Signals(signum).name
                    log.info("%s received, stopping %d workers", name, count)
                    _notify.notify("STOPPING=1")
                    break
            await workers.stop()
            nursery.cancel_scope.cancel()  # a worker waiting out its back-off
    for listener in listeners:
        await listener.aclose()
    return workers.failure or 0


class Workers:
    """The worker processes: started, kept running, signalled, stopped."""

    def __init__(self, command: list[str], env: dict[str, str], fds: list[int], shared: Path):
        self.command = command
        self.env = env
        self.fds = fds
        self.shared = shared
        self.processes: dict[int, trio.Process] = {}
        self.stopping = False
        # Worker 0's first output, held until every worker listens (`announce`).
        self._held: bytearray | None = bytearray()
        self._listening = 0
        # The exit status of a worker that ended before it first listened.
        self.failure: int | None = None
        self._changed = trio.Event()  # set (and replaced) when either changes
        self._all_ended = trio.Event()

    async def keep(self, index: int) -> None:
        """Keep worker `index` running until `stop`."""
        backoff = 0.0
        first = True
        while not self.stopping:
            started = trio.current_time()
            process = await trio.lowlevel.open_process(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self.env,
                pass_fds=self.fds,
                process_group=0,  # the terminal's Ctrl-C reaches us, and we stop the workers
            )
            self.processes[index] = process
            try:
                assert process.stdout is not None
                line, rest = await _first_line(process.stdout)
                if first:
                    if not line:
                        code = await process.wait()
                        if not self.stopping:
                            log.error("worker %d ended (%d) before it listened", index, code)
                            self.failure = code if code > 0 else 1
                            self._note()
                        return
                    self._listening += 1
                    self._note()
                relay = first and index == 0
                if relay:
                    self._print(line + rest)
                while chunk := await process.stdout.receive_some(READ_SIZE):
                    if relay:  # the variables worker 0 prints after its listening line
                        self._print(chunk)
                await process.wait()
            finally:
                await self._ended(index, process)
            first = False
            if self.stopping:
                return
            lived = trio.current_time() - started
            backoff = 0.0 if lived > YOUNG_SECONDS else _next_backoff(backoff)
            log.warning(
                "worker %d (pid %d) ended with status %s; starting it again%s",
                index,
                process.pid,
                process.returncode,
                f" in {backoff:g} s" if backoff else "",
            )
            await trio.sleep(backoff)

    async def listening(self, count: int) -> bool:
        """Wait until `count` workers listen (True), or one failed to (False)."""
        while self.failure is None and self._listening < count:
            await self._changed.wait()
        return self.failure is None

    def _note(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _ended(self, index: int, process: trio.Process) -> None:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    await stream.aclose()
        del self.processes[index]
        snapshot_path(self.shared, process.pid).unlink(missing_ok=True)
        if self.stopping and not self.processes:
            self._all_ended.set()

    def _print(self, data: bytes | bytearray) -> None:
        if self._held is not None:
            self._held += data
            return
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    def announce(self) -> None:
        """Print what worker 0 printed so far, its listening line first: all workers listen."""
        held, self._held = bytes(self._held or b""), None
        self._print(held)

    def send(self, signum: int) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def stop(self) -> None:
        self.stopping = True
        if not self.processes:
            return
        self.send(signal.SIGTERM)
        with trio.move_on_after(STOP_SECONDS):
            await self._all_ended.wait()
        self.send(signal.SIGKILL)


async def _first_line(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes]:
    """The first line a worker prints, and what came with it; b"" if it ended first."""
    buffer = b""
    while b"\n" not in buffer:
        chunk = await stream.receive_some(READ_SIZE)
        if not chunk:
            return b"", buffer
        buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    return line + b"\n", rest


def _next_backoff(backoff: float) -> float:
    return min(MAX_BACKOFF_SECONDS, backoff * 2 if backoff else FIRST_BACKOFF_SECONDS)


def _worker_environment(
    environ: MutableMapping[str, str], fds: list[int], shared: Path
) -> dict[str, str]:
    """Our environment for a worker: the sockets, the run dir, and no NOTIFY_SOCKET (the
    supervisor speaks to the service manager; a worker's READY would be rejected)."""
    metrics = shared / METRICS_DIR_NAME
    metrics.mkdir(mode=0o700)
    env = {name: value for name, value in environ.items() if name != "NOTIFY_SOCKET"}
    env[WORKER_FDS_VARIABLE] = " ".join(map(str, fds))
    env[RUN_DIR_VARIABLE] = str(shared)
    env[MULTIPROCESS_VARIABLE] = str(metrics)
    return env


@contextlib.contextmanager
def _private_run_dir(config: Config) -> Iterator[Path]:
    """The run dir: a temp dir of the cache (0700, locked while we live, so that the next
    proxy on the cache removes it if we die without cleaning up), or one in the system's
    temp dir when there is no usable cache."""
    own = None
    if config.cache:
        with contextlib.suppress(OSError):
            own = TempDir(Layout(config.cache_dir).tmp)
    path = own.path if own is not None else Path(tempfile.mkdtemp(prefix="transcache-run-"))
    try:
        yield path
    finally:
        if own is not None:
            own.close()
        else:
            shutil.rmtree(path, ignore_errors=True)
