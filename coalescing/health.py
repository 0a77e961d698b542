"""The health of one shared backend (a tier, Redis): the one failure policy.

A failure is counted every time, logged once per outage, and the backend is
left alone for ``retry_s`` (a short circuit breaker), so that a Redis that is
down or slow costs one timeout per second, not one per request. The first
call after that tries again: a backend that is back is used again at once.
"""

from __future__ import annotations

import logging
import time

from . import metrics

log = logging.getLogger("coalescing")


class Health:
    def __init__(self, name: str, retry_s: float = 1.0) -> None:
        self.name = name
        self.retry_s = retry_s
        self.down = False
        self.retry_at = 0.0

    def available(self) -> bool:
        return not self.down or time.monotonic() >= self.retry_at

    def failed(self, op: str, exc: BaseException) -> None:
        metrics.TIER_ERRORS.labels(self.name, op).inc()
        self.retry_at = time.monotonic() + self.retry_s
        if not self.down:
            self.down = True
            log.warning("coalescing: %s failing (%s); working without it", self.name, exc)

    def succeeded(self) -> None:
        if self.down:
            self.down = False
            log.warning("coalescing: %s is back", self.name)
