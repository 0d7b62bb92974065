"""A circuit breaker, pure: after `failures` consecutive failures the tier is skipped for
`skip` seconds; then one request probes it (the others still skip it), and the probe's
success closes the breaker again while its failure opens it for another `skip`.

    CLOSED --failures in a row--> OPEN --skip seconds--> PROBING --success--> CLOSED
                                    ^                       |
                                    +------- failure -------+
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = enum.auto()
    OPEN = enum.auto()
    PROBING = enum.auto()


@dataclass
class Breaker:
    failures: int
    skip: float
    state: BreakerState = BreakerState.CLOSED
    _in_a_row: int = 0
    _until: float = 0.0

    def allows(self, now: float) -> bool:
        """Whether a request may use the tier now (an open breaker past its skip lets the
        first asker through as the probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now >= self._until:
            self.state = BreakerState.PROBING
            return True
        return False

    def succeeded(self) -> None:
        self.state = BreakerState.CLOSED
        self._in_a_row = 0

    def failed(self, now: float) -> None:
        self._in_a_row += 1
        if self.state is BreakerState.PROBING or self._in_a_row >= self.failures:
            self.state = BreakerState.OPEN
            self._until = now + self.skip
