"""The persistent tier: ``CacheEntry`` rows, written behind the request.

Reads are one indexed query. Writes go to a buffer that a writer thread (a
greenlet under gevent) drains in batches of monotonic upserts, so no request
ever waits for a database write, and a burst of writes for one key becomes
one row write. :meth:`flush` writes the buffer out at once (on shutdown).
Reads run in a few long-lived reader threads that keep their connections
(see :mod:`.readers`), each within ``timeout``.

While the database is down the buffer keeps what it cannot write (up to
``max_pending`` entries, the oldest dropped first) and the writer tries
again every second, so what was fetched during an outage reaches the
database once it is back. Under gevent every read and write is cut at its
time bound: a database that hangs is a miss, not a wait.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import close_old_connections, connections
from django.db.utils import Error as DatabaseError

from ..entry import Entry
from ..health import Health
from ..models import CacheEntry
from .base import Tier, TierError
from .readers import Readers, ReadersBusy, ReadTimeout

log = logging.getLogger(__name__)

#: How many times the read bound a batch write may take, and a reader cut
#: under gevent (its caller has long gone: this only frees the reader).
WRITE_BOUND_FACTOR = 10
#: Reader threads per tier, and the reads that may wait for one.
READERS = 4
MAX_QUEUED_READS = 256


class DatabaseTier(Tier):
    name = "db"
    buffers_writes = True

    def __init__(
        self,
        using: str = "default",
        flush_interval: float = 0.05,
        timeout: float = 0.5,
        max_pending: int = 10_000,
    ) -> None:
        self.using = using
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.max_pending = max_pending
        self.writer_health = Health("db", retry_s=1.0)
        self._pending: dict[str, Entry] = {}  # guarded by _pending_lock
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one batch write at a time
        self._wakeup = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False
        self._atexit_registered = False
        self._readers = Readers(
            READERS,
            MAX_QUEUED_READS,
            on_error=self._discard_connection,
            on_exit=lambda: connections[self.using].close(),
        )

    def get(self, key_hash: str, name: str = "") -> Entry | None:
        with self._pending_lock:
            pending = self._pending.get(key_hash)
        if pending is not None:
            return pending
        if self._caller_in_transaction():
            # Read on the caller's connection: it may hold rows not committed yet.
            try:
                with self._bounded(self.timeout, "read"):
                    return CacheEntry.objects.get_entry(key_hash, using=self.using)
            except DatabaseError as exc:
                raise TierError(f"database read failed: {exc}") from exc
        try:
            return self._readers.run(lambda: self._read(key_hash), self.timeout)
        except (ReadTimeout, ReadersBusy) as exc:
            raise TierError(str(exc)) from None
        except DatabaseError as exc:
            raise TierError(f"database read failed: {exc}") from exc

    def _read(self, key_hash: str) -> Entry | None:
        """In a reader: one read, cut under gevent if it hangs far past the caller's bound."""
        try:
            with self._bounded(self.timeout * WRITE_BOUND_FACTOR, "read"):
                return CacheEntry.objects.get_entry(key_hash, using=self.using)
        finally:
            self._forget_queries()

    def _forget_queries(self) -> None:
        """With DEBUG on, Django logs each query of a connection, 9,000 at most,
        until a request ends; the reader and writer threads serve no request, so
        they would keep them (a batch upsert's log holds every body it wrote)."""
        conn = connections[self.using]
        if conn.queries_logged:
            conn.queries_log.clear()

    def _caller_in_transaction(self) -> bool:
        # initialized_only: looking must not make a connection for this thread.
        return any(
            conn.alias == self.using and conn.in_atomic_block
            for conn in connections.all(initialized_only=True)
        )

    def set(self, entry: Entry, lifetime_ms: int = 0) -> None:
        with self._pending_lock:
            old = self._pending.pop(entry.key_hash, None)
            self._pending[entry.key_hash] = (
                entry if old is None or old.fetched_at <= entry.fetched_at else old
            )
            self._trim_pending()
        self._ensure_writer()
        self._wakeup.set()

    def delete(self, key_hash: str, name: str = "") -> None:
        # Under the write lock: a batch taken from the buffer but not yet
        # written would otherwise bring the row back after the delete.
        with self._write_lock:
            with self._pending_lock:
                self._pending.pop(key_hash, None)
            try:
                with self._bounded(self.timeout, "delete"):
                    CacheEntry.objects.delete_key(key_hash, using=self.using)
            except DatabaseError as exc:
                self._discard_connection()
                raise TierError(f"database delete failed: {exc}") from exc

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Write everything buffered now, in the caller's thread."""
        self._write_pending()

    def close(self) -> None:
        """Write what is buffered, then stop the writer and the readers."""
        self._closed = True
        self._wakeup.set()
        self._readers.close()
        self.flush()

    # -- the writer -------------------------------------------------------

    def _ensure_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        with self._write_lock:
            if self._writer is not None and self._writer.is_alive():
                return
            self._writer = threading.Thread(
                target=self._writer_loop, name="coalescing-db-writer", daemon=True
            )
            self._writer.start()
            if not self._atexit_registered:
                atexit.register(self.flush)
                self._atexit_registered = True

    def _writer_loop(self) -> None:
        while not self._closed:
            self._wakeup.wait()
            self._wakeup.clear()
            try:
                self._write_pending()
            except Exception as exc:  # never let the writer die; the batch was put back
                # Counted every time, logged once per outage (not every second).
                self.writer_health.failed("write", exc)
                threading.Event().wait(self.writer_health.retry_s)
                self._wakeup.set()
            else:
                self.writer_health.succeeded()
            finally:
                self._forget_queries()
            # Let a burst gather into one batch.
            threading.Event().wait(self.flush_interval)

    def _write_pending(self) -> None:
        with self._write_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return
            try:
                entries = list(batch.values())
                for start in range(0, len(entries), 500):
                    with self._bounded(max(5.0, self.timeout * WRITE_BOUND_FACTOR), "write"):
                        CacheEntry.objects.upsert_many(
                            entries[start : start + 500], using=self.using
                        )
                    # Written: not put back if a later chunk fails.
                    for entry in entries[start : start + 500]:
                        del batch[entry.key_hash]
            except (DatabaseError, TierError):
                self._discard_connection()
                with self._pending_lock:  # put back what is not newer in the buffer
                    for key_hash, entry in batch.items():
                        newer = self._pending.get(key_hash)
                        if newer is None or newer.fetched_at < entry.fetched_at:
                            self._pending[key_hash] = entry
                    self._trim_pending()
                raise

    def _trim_pending(self) -> None:
        """Keep ``max_pending`` buffered writes, the oldest dropped first (under _pending_lock)."""
        while len(self._pending) > self.max_pending:
            del self._pending[next(iter(self._pending))]

    @contextmanager
    def _bounded(self, seconds: float, op: str) -> Iterator[None]:
        """Cut the block at ``seconds`` when gevent runs the sockets.

        Without gevent a blocked thread cannot be interrupted: there the
        database's own timeouts bound it (``connect_timeout`` in the project's
        settings; SQLite's ``timeout``).
        """
        monkey = sys.modules.get("gevent.monkey")
        if monkey is None or not monkey.is_module_patched("socket"):
            yield
            return
        import gevent

        timeout = gevent.Timeout(seconds)
        timeout.start()
        try:
            yield
        except gevent.Timeout as exc:
            if exc is not timeout:
                raise
            # Cut mid-protocol: the connection is in an unknown state.
            connections[self.using].close()
            raise TierError(f"database {op} took longer than {seconds:.2f}s") from None
        finally:
            timeout.close()

    def _discard_connection(self) -> None:
        """Drop this thread's connection if it broke, so the next use reconnects."""
        try:
            connections[self.using].close_if_unusable_or_obsolete()
        except DatabaseError:
            pass
        close_old_connections()
