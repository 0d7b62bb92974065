"""The access log: the one place where an exchange (a request and what answered it) is
recorded: in the per-tag statistics behind `stats`, in every other `Recorder` the server
registers (Prometheus metrics, the status page's activity, the store's per-ecosystem
counters), and as one line on the `transcache.access` logger. Handlers fill in an `Exchange`
as they learn its parts, and hand it over once it is done, so every count moves when its
request ends.

A log record carries the exchange's fields as data (`record.access`), so the format is the
handler's choice: the message (text), or `JsonAccessFormatter` (`--access-log-format json`).
`transcache run` writes the lines in batches (`BatchedAccessHandler`), off the request path.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ._registries import Ecosystem
from ._stats import ProxyStats
from .cache import Outcome

access_log = logging.getLogger("transcache.access")

# CONNECT is a tunnel, not a request: logged, but its bytes are counted by the requests
# inside it (or not at all, for a passthrough tunnel).
UNCOUNTED_METHOD = "CONNECT"
# Outcomes whose answer the proxy wrote itself.
PROXY_MADE = frozenset({Outcome.ERROR, Outcome.OFFLINE_MISS})
# What the text line shows for a field the exchange never got.
NONE_FIELD = "-"
# Access lines wait in memory for at most this long, or until this many wait, then are
# written together.
BATCH_SECONDS = 0.5
BATCH_LINES = 512


@dataclass
class Exchange:
    """What the access log says about one request. `started` is the trio time its head
    arrived; None for a request that never got that far (its time is logged as "-").
    `outcome` is None until the cache (or an error answer) says what happened; `ecosystem`
    is None for requests that are not for an origin (the proxy's own pages, CONNECT)."""

    peer: str
    method: str
    url: str = NONE_FIELD
    status: int = 0
    bytes: int = 0
    outcome: Outcome | None = None
    ecosystem: Ecosystem | None = None
    tag: str | None = None
    user: str | None = None  # an authenticated user (--auth-file)
    to_proxy: bool = False  # one of the proxy's own pages (_admin)
    error: str | None = None  # the reason of an error answer
    saved_seconds: float = 0.0  # the stored entry's original fetch time, for a hit
    started: float | None = None

    @property
    def served_bytes(self) -> int:
        """Body bytes that came from the cache or an origin: not those of an answer the
        proxy made itself (an error, an offline miss)."""
        return 0 if self.outcome in PROXY_MADE else self.bytes

    @property
    def counted(self) -> bool:
        """Whether the request counts as traffic (not a tunnel, not the proxy's own page)."""
        return self.method != UNCOUNTED_METHOD and not self.to_proxy


class Recorder(Protocol):
    """Something that counts exchanges as they end (`seconds`: how long each took)."""

    def record(self, exchange: Exchange, seconds: float) -> None: ...


class AccessLog:
    def __init__(self, stats: ProxyStats, *recorders: Recorder) -> None:
        self.stats = stats
        self.recorders = list(recorders)
        # Told of each client TLS handshake in a tunnel (True: it succeeded): the metrics.
        self.handshakes: Callable[[bool], None] | None = None

    def record(self, exchange: Exchange) -> None:
        started = exchange.started
        seconds = 0.0 if started is None else trio.current_time() - started
        if exchange.method != UNCOUNTED_METHOD:
            self.stats.record(exchange, seconds)
        for recorder in self.recorders:
            recorder.record(exchange, seconds)
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields = _fields(exchange, None if started is None else seconds)
        access_log.info(
            "%s %s %s %d %d %s %s %s",
            exchange.peer,
            exchange.method,
            exchange.url,
            exchange.status,
            exchange.bytes,
            fields["ecosystem"] or NONE_FIELD,
            NONE_FIELD if started is None else f"{seconds * 1000:.0f}ms",
            fields["outcome"] or NONE_FIELD,
            extra={"access": fields},
        )

    def handshake(self, ok: bool) -> None:
        """A client's TLS handshake in a tunnel ended (`ok`: it succeeded)."""
        if self.handshakes is not None:
            self.handshakes(ok)


def _fields(exchange: Exchange, seconds: float | None) -> dict[str, Any]:
    """The JSON access log's object, without its time (see docs/usage.md)."""
    return {
        "peer": exchange.peer,
        "method": exchange.method,
        "url": exchange.url,
        "status": exchange.status,
        "bytes": exchange.bytes,
        "ecosystem": None if exchange.ecosystem is None else exchange.ecosystem.value,
        "duration_ms": None if seconds is None else round(seconds * 1000, 3),
        "outcome": None if exchange.outcome is None else exchange.outcome.value,
        "tag": exchange.tag,
        "error": exchange.error,
    }


class JsonAccessFormatter(logging.Formatter):
    """One JSON object per access-log line: "time" (ISO 8601, UTC), then the exchange's
    fields; a record that is not an exchange keeps only its message."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        fields = getattr(record, "access", None) or {"message": record.getMessage()}
        return json.dumps({"time": when.isoformat(timespec="milliseconds"), **fields})


class BatchedAccessHandler(logging.Handler):
    """Writes the lines of `target` (a file or stderr handler, whose format it uses) in
    batches: formatted as they come, written together BATCH_SECONDS after the first of them
    (by a timer thread, off the event loop), when BATCH_LINES wait (by the caller, the event
    loop: one write of the whole batch, under heavy traffic), and on `flush` and `close`. A
    reload flushes before it reopens the file; logging flushes and closes every handler when
    the process ends cleanly, so no line is lost then."""

    def __init__(self, target: logging.StreamHandler[Any]) -> None:
        super().__init__()
        self.target = target
        self._lines: list[str] = []
        self._timer: threading.Timer | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(self.target.format(record))
        if len(self._lines) >= BATCH_LINES:
            self._write()
        elif self._timer is None:
            self._timer = threading.Timer(BATCH_SECONDS, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def close(self) -> None:
        self.flush()
        self.target.close()
        super().close()

    def _write(self) -> None:
        """Write what waits (the caller holds this handler's lock)."""
        if self._timer is not None:
            self._timer.cancel()  # a no-op when it is the timer calling
            self._timer = None
        lines, self._lines = self._lines, []
        if not lines:
            return
        terminator = self.target.terminator
        with self.target.lock:  # type: ignore[union-attr]
            try:
                self.target.stream.write(terminator.join(lines) + terminator)
                self.target.stream.flush()
            except (OSError, ValueError):
                lost = logging.makeLogRecord({"msg": f"{len(lines)} access lines lost"})
                self.handleError(lost)
