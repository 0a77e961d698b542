"""The persistent tier: ``CacheEntry`` rows, written behind the request.

Reads are one indexed query. Writes go to a buffer that a writer thread (a
greenlet under gevent) drains in batches of monotonic upserts, so no request
ever waits for a database write, and a burst of writes for one key becomes
one row write. :meth:`flush` writes the buffer out at once (on shutdown).
"""

from __future__ import annotations

import atexit
import logging
import threading

from django.db import close_old_connections, connections
from django.db.utils import Error as DatabaseError

from ..entry import Entry
from ..models import CacheEntry
from .base import Tier, TierError

log = logging.getLogger(__name__)


class DatabaseTier(Tier):
    name = "db"

    def __init__(self, using: str = "default", flush_interval: float = 0.05) -> None:
        self.using = using
        self.flush_interval = flush_interval
        self._pending: dict[str, Entry] = {}  # guarded by _pending_lock
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one batch write at a time
        self._wakeup = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False
        self._atexit_registered = False

    def get(self, key_hash: str, name: str = "") -> Entry | None:
        with self._pending_lock:
            pending = self._pending.get(key_hash)
        if pending is not None:
            return pending
        try:
            return CacheEntry.objects.get_entry(key_hash, using=self.using)
        except DatabaseError as exc:
            self._discard_connection()
            raise TierError(f"database read failed: {exc}") from exc

    def set(self, entry: Entry, lifetime_ms: int = 0) -> None:
        with self._pending_lock:
            old = self._pending.get(entry.key_hash)
            if old is None or old.fetched_at <= entry.fetched_at:
                self._pending[entry.key_hash] = entry
        self._ensure_writer()
        self._wakeup.set()

    def delete(self, key_hash: str, name: str = "") -> None:
        # Under the write lock: a batch taken from the buffer but not yet
        # written would otherwise bring the row back after the delete.
        with self._write_lock:
            with self._pending_lock:
                self._pending.pop(key_hash, None)
            try:
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
        self._closed = True
        self._wakeup.set()
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
            except Exception:  # never let the writer die; the batch was put back
                log.warning("coalescing: database write failed, will retry", exc_info=True)
                threading.Event().wait(1.0)
                self._wakeup.set()
            # Let a burst gather into one batch.
            threading.Event().wait(self.flush_interval)

    def _write_pending(self) -> None:
        with self._write_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return
            try:
                for start in range(0, len(batch), 500):
                    chunk = list(batch.values())[start : start + 500]
                    CacheEntry.objects.upsert_many(chunk, using=self.using)
            except DatabaseError:
                self._discard_connection()
                with self._pending_lock:  # put back what is not newer in the buffer
                    for key_hash, entry in batch.items():
                        newer = self._pending.get(key_hash)
                        if newer is None or newer.fetched_at < entry.fetched_at:
                            self._pending[key_hash] = entry
                raise

    def _discard_connection(self) -> None:
        """Drop this thread's connection if it broke, so the next use reconnects."""
        try:
            connections[self.using].close_if_unusable_or_obsolete()
        except DatabaseError:
            pass
        close_old_connections()
