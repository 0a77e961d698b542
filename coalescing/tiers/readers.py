"""A few long-lived OS threads that run the database tier's blocking calls.

Two reasons for threads of their own:

- Django's connections belong to the thread that opened them, and every
  flight runs in a thread (a greenlet) of its own: read there, each cold
  miss opened a database connection for one ``SELECT`` and closed it again
  (with PostgreSQL, a server process per miss). These threads keep theirs open.
- sqlite3 is C and not cooperative. Under gevent a ``threading.Thread`` is a
  greenlet, so a slow SQLite call, or its busy wait on another process's
  write lock, would hold the whole process: every request, hits included.
  Under gevent these threads are therefore *real* OS threads (gevent's
  originals of ``_thread``), their job queue is the C ``SimpleQueue``, and
  a job's end wakes its caller through the caller's hub
  (``run_callback_threadsafe``), so the caller waits cooperatively.

The caller waits for its answer with a bound, so a database that hangs or
is locked is a miss (a tier error), never a wait past the bound; the
thread itself stays blocked until the database lets go (SQLite's busy
timeout, the bounds the tier sets inside the call).

Code run in these threads must not take gevent's locks or log through
handlers shared with the hub: the tier runs only the database calls here
and does its bookkeeping (locks, health, logging) on the caller's side.
"""

from __future__ import annotations

import _queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..threads import after_fork_in_child

T = TypeVar("T")
#: How long :meth:`Readers.close` waits for its threads to end.
CLOSE_WAIT_S = 2.0


class ReadTimeout(Exception):
    """The call did not end within the caller's bound (it may still end later)."""


class ReadersBusy(Exception):
    """Too many calls are queued already: the database is not keeping up."""


def gevent_patched() -> bool:
    """Whether gevent has patched threads: then ``threading`` gives greenlets."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


def _start_os_thread(target: Callable[[], None], name: str) -> None:
    """Start ``target`` in a real OS thread, whether or not gevent patched ``threading``."""
    if gevent_patched():
        from gevent import monkey

        monkey.get_original("_thread", "start_new_thread")(target, ())
    else:
        threading.Thread(target=target, name=name, daemon=True).start()


class Job(Generic[T]):
    """One call handed to a thread; its caller waits on :meth:`wait`."""

    __slots__ = ("_done", "_hub", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        # Made in the caller's thread: a gevent Event under gevent (woken
        # through the caller's hub), a threading.Event otherwise.
        self._done = threading.Event()
        self._hub: Any = None
        if gevent_patched():
            import gevent

            self._hub = gevent.get_hub()

    def wait(self, timeout: float | None) -> bool:
        """Whether the call ended within ``timeout`` seconds (``None``: until it ends)."""
        return self._done.wait(timeout)

    def outcome(self) -> T:
        """The call's result, or its exception raised (once it ended)."""
        if self.error is not None:
            raise self.error
        return self.result

    def _finish(self) -> None:
        """In the worker thread: tell the caller the call ended."""
        self.done = True
        hub = self._hub
        if hub is None:
            self._done.set()
            return
        try:
            hub.loop.run_callback_threadsafe(self._done.set)
        except Exception:  # the caller's hub is gone (its thread ended): nobody waits
            pass


class Readers:
    """``size`` OS threads running the calls handed to them, first come first served."""

    def __init__(
        self,
        size: int,
        max_queued: int,
        on_error: Callable[[], None],
        on_exit: Callable[[], None],
        name: str = "coalescing-db-reader",
    ) -> None:
        self.size = size
        self.max_queued = max_queued
        #: Run in the thread itself: after a failed call (drop a broken
        #: connection), and when the thread stops (close its connection).
        self.on_error = on_error
        self.on_exit = on_exit
        self.name = name
        # A lock of the OS, never gevent's: the threads take it too, briefly.
        self._lock = os_lock()  # guards _jobs and _threads
        self._jobs: _queue.SimpleQueue[Job[Any] | None] = _queue.SimpleQueue()
        self._threads = 0
        self._running = 0  # threads started and not ended (their on_exit included)
        self._closed = False
        self._busy = 0  # calls handed over and not ended
        after_fork_in_child(self._forked)

    def submit(self, fn: Callable[[], T]) -> Job[T]:
        """Hand ``fn`` to a thread; wait on the returned job (``ReadersBusy`` if too many wait)."""
        if self._closed:
            raise ReadersBusy("the database tier is closed")
        jobs = self._started()
        if self._busy >= self.size + self.max_queued:
            raise ReadersBusy(f"{self._busy - self.size} database calls are waiting already")
        job = Job(fn)
        with self._lock:
            self._busy += 1
        jobs.put(job)
        return job

    def run(self, fn: Callable[[], T], timeout: float) -> T:
        """``fn()`` in a thread; its result or its exception, within ``timeout`` seconds."""
        job = self.submit(fn)
        if not job.wait(timeout):
            raise ReadTimeout(f"database call took longer than {timeout:.2f}s")
        return job.outcome()

    @property
    def queued(self) -> int:
        """Calls handed over that no thread has ended yet (running or waiting)."""
        return self._busy

    def close(self, wait: float = CLOSE_WAIT_S) -> bool:
        """Stop the threads once the calls queued before are done; whether they
        all ended within ``wait`` seconds.

        Waited for, so that none is still closing its connection while the
        interpreter shuts down (psycopg crashed the process then).
        """
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, 0
            for _ in range(threads):
                self._jobs.put(None)
        deadline = time.monotonic() + wait
        while self._running and time.monotonic() < deadline:
            time.sleep(0.005)  # cooperative under gevent
        return not self._running

    def _forked(self) -> None:
        """In a forked child: the threads did not come along, nor their calls."""
        self._lock = os_lock()
        self._jobs, self._threads, self._busy = _queue.SimpleQueue(), 0, 0
        self._running = 0

    def _started(self) -> _queue.SimpleQueue[Job[Any] | None]:
        if self._threads:
            return self._jobs
        with self._lock:
            while self._threads < self.size:
                jobs = self._jobs
                self._running += 1
                _start_os_thread(lambda jobs=jobs: self._loop(jobs), self.name)
                self._threads += 1
            return self._jobs

    def _loop(self, jobs: _queue.SimpleQueue[Job[Any] | None]) -> None:
        try:
            while (job := jobs.get()) is not None:
                try:
                    job.result = job.fn()
                except Exception as exc:  # handed to the caller, who decides
                    job.error = exc
                    try:
                        self.on_error()
                    except Exception:
                        pass  # the next call reports the database's state
                finally:
                    with self._lock:
                        self._busy -= 1
                    job._finish()
        finally:
            try:
                self.on_exit()
            except Exception:
                pass  # at exit: nothing left to tell
            with self._lock:
                self._running -= 1


def os_lock() -> Any:
    """A lock of the OS: safe to take from OS threads and greenlets alike (held briefly)."""
    if gevent_patched():
        from gevent import monkey

        return monkey.get_original("_thread", "allocate_lock")()
    return threading.Lock()
