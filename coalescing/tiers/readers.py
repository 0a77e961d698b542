"""A few long-lived threads that run the database tier's reads.

Django's connections belong to the thread (a greenlet under gevent) that
opened them, and every flight runs in a thread of its own: read there, each
cold miss opened a database connection for one ``SELECT`` and closed it
again (py-spy under the W6 benchmark: 13 % of the process's CPU in opening
and closing connections; with PostgreSQL, a server process per miss). The
readers keep theirs open. The caller waits for its answer with a bound, so a
database that hangs is a miss under plain threads as under gevent.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ReadTimeout(Exception):
    """The read did not end within the caller's bound (it may still end later)."""


class ReadersBusy(Exception):
    """Too many reads are queued already: the database is not keeping up."""


class _Job:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Readers:
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
        #: Run in the reader's own thread: after a failed read (drop a broken
        #: connection), and when the reader stops (close its connection).
        self.on_error = on_error
        self.on_exit = on_exit
        self.name = name
        self._lock = threading.Lock()  # guards _jobs, _threads and _pid
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pid = 0
        self._closed = False

    def run(self, fn: Callable[[], T], timeout: float) -> T:
        """``fn()`` in a reader; its result or its exception, within ``timeout`` seconds."""
        if self._closed:
            raise ReadersBusy("the database tier is closed")
        jobs = self._started()
        if jobs.qsize() >= self.max_queued:
            raise ReadersBusy(f"{jobs.qsize()} database reads are waiting already")
        job = _Job(fn)
        jobs.put(job)
        if not job.done.wait(timeout):
            raise ReadTimeout(f"database read took longer than {timeout:.2f}s")
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        """Stop the readers once the reads queued before are done."""
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
            for _ in threads:
                self._jobs.put(None)

    def _started(self) -> queue.SimpleQueue[_Job | None]:
        if self._threads and self._pid == os.getpid():
            return self._jobs
        with self._lock:
            if self._pid != os.getpid():  # threads do not survive a fork
                self._jobs, self._threads, self._pid = queue.SimpleQueue(), [], os.getpid()
            while len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._loop, args=(self._jobs,), name=self.name, daemon=True
                )
                thread.start()
                self._threads.append(thread)
            return self._jobs

    def _loop(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        try:
            while (job := jobs.get()) is not None:
                try:
                    job.result = job.fn()
                except Exception as exc:  # handed to the caller, who decides
                    job.error = exc
                    try:
                        self.on_error()
                    except Exception:
                        pass  # the next read reports the database's state
                finally:
                    job.done.set()
        finally:
            self.on_exit()
