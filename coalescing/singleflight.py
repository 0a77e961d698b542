"""Per-key single flight: N concurrent calls for one key make one call.

The idea of Go's ``golang.org/x/sync/singleflight``, for greenlets and threads.
The call runs in a thread of its own (a greenlet once gevent has patched
``threading``), never in a caller: a caller that times out or goes away does
not cancel the call for the others. Every waiter gets the call's value, or the
call's exception raised again. Waits are bounded by the caller's timeout.

This module imports nothing from Django on purpose: it is the part worth
testing alone, with many greenlets and with real threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class FlightTimeout(Exception):
    """A waiter gave up before the call finished; the call goes on."""


class Flight(Generic[T]):
    """One call in progress. Written by its runner only, read after ``done``."""

    __slots__ = ("done", "value", "error", "waiters")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.waiters = 0  # callers that joined after the first; guarded by SingleFlight._lock

    def result(self, timeout: float | None) -> T:
        if not self.done.wait(timeout):
            raise FlightTimeout(f"no result after {timeout:.3f}s")
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


def _spawn_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="singleflight", daemon=True).start()


class SingleFlight(Generic[T]):
    def __init__(self, spawn: Callable[[Callable[[], None]], Any] = _spawn_thread) -> None:
        self._spawn = spawn
        self._lock = threading.Lock()  # guards _flights and Flight.waiters
        self._flights: dict[Hashable, Flight[T]] = {}

    def start(self, key: Hashable, fn: Callable[[], T]) -> tuple[Flight[T], bool]:
        """Join the flight for ``key``, or start one that runs ``fn``.

        Returns the flight and whether this call started it. Never blocks on
        the call itself, so it also serves fire-and-forget refreshes.
        """
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                flight.waiters += 1
                return flight, False
            flight = self._flights[key] = Flight()
        try:
            self._spawn(lambda: self._run(key, flight, fn))
        except BaseException as exc:  # could not even start: fail the flight, free the key
            flight.error = exc
            self._finish(key, flight)
            raise
        return flight, True

    def do(self, key: Hashable, fn: Callable[[], T], timeout: float | None) -> tuple[T, bool]:
        """Run ``fn`` once for all concurrent callers of ``key``; ``(value, shared)``."""
        flight, started = self.start(key, fn)
        return flight.result(timeout), not started

    def in_flight(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._flights

    def __len__(self) -> int:
        with self._lock:
            return len(self._flights)

    def _run(self, key: Hashable, flight: Flight[T], fn: Callable[[], T]) -> None:
        try:
            flight.value = fn()
        except BaseException as exc:  # every waiter must see it, even a GreenletExit
            flight.error = exc
        finally:
            self._finish(key, flight)

    def _finish(self, key: Hashable, flight: Flight[T]) -> None:
        # Free the key before waking the waiters, so that a waiter that starts
        # a follow-up call for the key (a refresh after a stale result) never
        # joins this finished flight by mistake. A caller arriving in between
        # starts a new flight; callers look again before any real work.
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()
