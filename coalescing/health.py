"""The health of one shared backend (a tier, Redis): the one failure policy.

A failure is counted every time, logged once per outage, and the backend is
left alone for ``retry_s`` (a short circuit breaker), so that a Redis that is
down or slow costs one timeout per second, not one per request. The first
call after that tries again: a backend that is back is used again at once.

One ``Health`` per backend, fed only by what the backend really did: a
write that was merely buffered says nothing about the database, so it is
never counted (it made the log flap, "failing" and "back" once per
request). With ``split=True`` (the database tier) reads and writes are
judged apart: a database that answers reads but refuses writes (disk full,
a lock) is down until its writes work again, and its reads are still used
meanwhile. The outage starts with the first kind that fails and ends when
every kind that failed has worked again: one line each.
"""

from __future__ import annotations

import logging
import time

from . import metrics

log = logging.getLogger("coalescing")

#: The operations that change the backend, for judging reads and writes apart.
WRITE_OPS = frozenset({"set", "write", "delete", "flush", "close", "evict", "vacuum"})


class Health:
    def __init__(self, name: str, retry_s: float = 1.0, *, split: bool = False) -> None:
        self.name = name
        self.retry_s = retry_s
        self.split = split
        #: kind -> when to try that kind again; a kind is failing while present.
        self._failing: dict[str, float] = {}

    @property
    def down(self) -> bool:
        return bool(self._failing)

    @property
    def retry_at(self) -> float:
        return max(self._failing.values(), default=0.0)

    def available(self, op: str = "get") -> bool:
        """Whether to try ``op`` now: its kind works, or its retry time has come."""
        retry_at = self._failing.get(self._kind(op))
        return retry_at is None or time.monotonic() >= retry_at

    def failed(self, op: str, exc: BaseException) -> None:
        metrics.TIER_ERRORS.labels(self.name, op).inc()
        was_down = self.down
        self._failing[self._kind(op)] = time.monotonic() + self.retry_s
        if not was_down:
            log.warning("coalescing: %s failing (%s); working without it", self.name, exc)

    def _kind(self, op: str) -> str:
        if not self.split:
            return ""
        return "write" if op in WRITE_OPS else "read"

    def succeeded(self, op: str = "get") -> None:
        if not self._failing:
            return
        if self._failing.pop(self._kind(op), None) is not None and not self._failing:
            log.warning("coalescing: %s is back", self.name)
