"""Load protection for the upstream, per process.

- :class:`ConcurrencyLimit`: at most N upstream calls at once, so that a burst
  of distinct cold keys cannot flood the upstream. A call over the cap waits
  its turn for a bounded time, then fails with :class:`UpstreamOverloaded`
  (503 with ``Retry-After``, or stale if there is some).
- :class:`FailureBackoff`: after an upstream error for a key, further calls
  for it are held back for a short interval that doubles with each failure
  in a row (stale served meanwhile), so a down upstream sees a trickle of
  probes, not a flood. The first success clears it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from .errors import UpstreamError, UpstreamHeldBack, UpstreamOverloaded


class ConcurrencyLimit:
    def __init__(self, limit: int, wait_s: float) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self._slots = threading.BoundedSemaphore(limit) if limit > 0 else None

    @contextmanager
    def slot(self):
        if self._slots is None:
            yield
            return
        if not self._slots.acquire(timeout=self.wait_s):
            error = UpstreamOverloaded(
                f"too many upstream calls in progress (limit {self.limit}); try again shortly"
            )
            error.retry_after = 1
            raise error
        try:
            yield
        finally:
            self._slots.release()


@dataclasses.dataclass(frozen=True, slots=True)
class _Failure:
    """What is kept of a failed call: its words and statuses, never the exception.

    An exception holds its traceback, whose frames hold what the call had read
    (up to a whole body over the size cap): kept for thousands of keys, that
    is hundreds of megabytes.
    """

    count: int  # failures in a row
    until: float  # held back until
    message: str
    upstream_status: int | None
    http_status: int


class FailureBackoff:
    def __init__(
        self,
        base_s: float = 0.25,
        max_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self.max_keys = max_keys
        self._lock = threading.Lock()  # guards _failures
        self._failures: dict[str, _Failure] = {}

    def check(self, key: str) -> None:
        """Raise :class:`UpstreamHeldBack` if ``key`` failed too recently."""
        with self._lock:
            record = self._failures.get(key)
        if record is None:
            return
        remaining = record.until - self.clock()
        if remaining > 0:
            error = UpstreamHeldBack(
                f"{record.message} (held back for {remaining:.1f}s after failing)",
                record.upstream_status,
            )
            error.http_status = record.http_status
            error.retry_after = max(1, round(remaining))
            raise error

    def failed(self, key: str, error: UpstreamError) -> None:
        if isinstance(error, UpstreamOverloaded | UpstreamHeldBack):
            return  # our own refusals say nothing about the upstream
        now = self.clock()
        with self._lock:
            last = self._failures.pop(key, None)
            count = (last.count if last is not None else 0) + 1
            delay = min(self.max_s, self.base_s * 2 ** (count - 1))
            self._failures[key] = _Failure(
                count, now + delay, str(error)[:300], error.upstream_status, error.http_status
            )
            if len(self._failures) > self.max_keys:
                # Forget the records whose interval is over; then, if need be, the oldest.
                for k in [k for k, f in self._failures.items() if f.until <= now]:
                    del self._failures[k]
                while len(self._failures) > self.max_keys:
                    del self._failures[next(iter(self._failures))]

    def succeeded(self, key: str) -> None:
        if self._failures:
            with self._lock:
                self._failures.pop(key, None)
