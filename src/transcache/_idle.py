"""The upstream pool's idle connections: which are kept for the next request, which are handed
back for closing. Bookkeeping only: the caller says what time it is and closes what it gets.

Up to `MAX_IDLE_PER_ORIGIN` connections are kept per origin, the newest reused first, for
`POOL_IDLE_SECONDS`. One idle longer is handed back when its origin is next asked for, or by
the sweep of every origin that a release makes at most once per `POOL_IDLE_SECONDS`: without
the sweep, the connections of an origin never asked again stayed open (their fds and TLS
state) for as long as the proxy ran, and the pool grew with every origin it ever reached.
"""

from __future__ import annotations

import math
from typing import Generic, Protocol, TypeVar

from ._protocol import Origin

MAX_IDLE_PER_ORIGIN = 32
# Origins commonly drop idle keep-alive connections after 60 s or more; stay under that.
POOL_IDLE_SECONDS = 50.0


class Pooled(Protocol):
    origin: Origin
    idle_since: float


C = TypeVar("C", bound=Pooled)


class IdleConnections(Generic[C]):
    def __init__(self) -> None:
        self._idle: dict[Origin, list[C]] = {}
        self._swept = -math.inf  # when `sweep` last looked at every origin

    def take(self, origin: Origin, now: float) -> tuple[C | None, list[C]]:
        """A usable idle connection to `origin`, if any, and the expired ones, for closing."""
        idle = self._idle.get(origin, [])
        expired: list[C] = []
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < POOL_IDLE_SECONDS:
                return connection, expired
            expired.append(connection)
        return None, expired

    def put(self, connection: C, now: float) -> bool:
        """Keep `connection` for reuse; False when its origin has enough (close it)."""
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            return False
        connection.idle_since = now
        idle.append(connection)
        return True

    def sweep(self, now: float) -> list[C]:
        """Every origin's expired connections, for closing (none if the last sweep was less
        than `POOL_IDLE_SECONDS` ago); an origin left with none is forgotten."""
        if now - self._swept < POOL_IDLE_SECONDS:
            return []
        self._swept = now
        idle, self._idle = self._idle, {}
        expired: list[C] = []
        for origin, connections in idle.items():
            for connection in connections:
                if now - connection.idle_since < POOL_IDLE_SECONDS:
                    self._idle.setdefault(origin, []).append(connection)
                else:
                    expired.append(connection)
        return expired

    def drain(self) -> list[C]:
        """Every idle connection, for closing: the pool is closing."""
        idle, self._idle = self._idle, {}
        return [connection for connections in idle.values() for connection in connections]
