"""Per-key single flight: N concurrent calls for one key make one call.

The idea of Go's ``golang.org/x/sync/singleflight``, for greenlets and threads.
The call runs in a thread of its own (a greenlet once gevent has patched
``threading``), never in a caller: a caller that times out or goes away does
not cancel the call for the others. Every waiter gets the call's value, or the
call's exception raised again. Waits are bounded by the caller's timeout.

A waiter blocks its thread (:meth:`Flight.result`: a greenlet under gevent)
or awaits on an event loop (:meth:`Flight.aresult`: under ASGI, holding no
thread); the call itself runs the same way for both.

This module imports nothing from Django on purpose: it is the part worth
testing alone, with many greenlets and with real threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class FlightTimeout(Exception):
    """A waiter gave up before the call finished; the call goes on."""


#: Guards every flight's callbacks: held only to append to or take the list.
_callbacks_lock = threading.Lock()


class Flight(Generic[T]):
    """One call in progress. Written by its runner only, read after ``done``."""

    __slots__ = ("_callbacks", "done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None
        #: Run once the call has ended; ``None`` from then on.
        self._callbacks: list[Callable[[], None]] | None = []

    def result(self, timeout: float | None) -> T:
        if not self.done.wait(timeout):
            raise FlightTimeout(f"no result after {timeout:.3f}s")
        return self._result()

    async def aresult(self, timeout: float | None) -> T:
        """:meth:`result` for a coroutine: the event loop is woken when the call ends."""
        if not self.done.is_set():
            loop = asyncio.get_running_loop()
            woken = loop.create_future()

            def wake() -> None:  # in the call's thread
                try:
                    loop.call_soon_threadsafe(_settle, woken)
                except RuntimeError:
                    pass  # the loop has closed: nobody is waiting any more

            self.add_done_callback(wake)
            try:
                await asyncio.wait_for(woken, timeout)
            except TimeoutError:
                raise FlightTimeout(f"no result after {timeout:.3f}s") from None
        return self._result()

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` when the call ends (in the call's thread), or now if it has."""
        with _callbacks_lock:
            if self._callbacks is not None:
                self._callbacks.append(fn)
                return
        fn()

    def _result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]

    def _set_done(self) -> None:
        with _callbacks_lock:
            self.done.set()
            callbacks, self._callbacks = self._callbacks, None
        for fn in callbacks or ():
            try:
                fn()
            except Exception:  # one waiter's trouble must not keep the others asleep
                pass


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # a waiter that timed out has cancelled it
        future.set_result(None)


def _spawn_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="singleflight", daemon=True).start()


class SingleFlight(Generic[T]):
    def __init__(self, spawn: Callable[[Callable[[], None]], Any] = _spawn_thread) -> None:
        self._spawn = spawn
        self._lock = threading.Lock()  # guards _flights
        self._flights: dict[Hashable, Flight[T]] = {}

    def start(self, key: Hashable, fn: Callable[[], T]) -> tuple[Flight[T], bool]:
        """Join the flight for ``key``, or start one that runs ``fn``.

        Returns the flight and whether this call started it. Never blocks on
        the call itself, so it also serves fire-and-forget refreshes.
        """
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
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
        flight._set_done()
