"""The persistent tier: ``CacheEntry`` rows, written behind the request.

Every blocking database call runs in a few long-lived OS threads of the
tier's own (:mod:`.readers`): four readers, and one writer thread that runs
the writes, deletes and size upkeep one after the other. Under gevent these
are real threads, so SQLite (C, not cooperative) never holds the process:
a locked or slow database delays its own tier, while hits from memory and
Redis and upstream calls go on. Every caller waits with a bound; past it the
tier is a miss (a read) or reports a slow write, and the call ends later in
its thread.

Writes go to a buffer that a writer loop (a greenlet under gevent) drains in
batches of monotonic upserts, so no request ever waits for a database
write, and a burst of writes for one key becomes one row write. The writer
thread is FIFO: a delete handed over after a batch runs after it, so a
batch in hand cannot bring a deleted row back.

Memory: the buffer is bounded in bytes (``Entry.size``), counting the batch
being written too. Its budget is a share of ``MEMORY_CACHE_MAX_BYTES``
(:func:`buffer_budget`: an eighth, and at least one entry of
``UPSTREAM_MAX_BYTES``); what does not fit drops the oldest buffered
entries, counted in ``coalescing_db_dropped{reason="buffer"}``. A statement
carries at most :data:`WRITE_CHUNK_BYTES` of bodies, which bounds the copies
the database driver makes while it runs. So what the process keeps for the
cache is at most ``MEMORY_CACHE_MAX_BYTES`` (memory tier) plus an eighth of
it (buffer) plus about 8 MiB (a statement's copies; SQLite's page cache of
2 MiB per connection), whatever the database does.

While the database is down the buffer keeps what it can (within that
budget) and the writer tries again every second, so what was fetched during
an outage reaches the database once it is back. The tier's health is judged
by what the database really did, its reads and the writer's writes (one
:class:`~coalescing.health.Health`, reads and writes apart): an outage is
logged once when it starts and once when it ends.

Size on disk: with ``max_bytes`` (``DATABASE_MAX_BYTES``) the writer
measures the tier every :data:`SIZE_CHECK_S` seconds of writing (or after
each hundredth of the bound written) and past the bound deletes the oldest
rows down to 90 % of it, counted in ``coalescing_db_dropped{reason="size"}``;
on SQLite the freed pages are given back to the file system (the file is in
``auto_vacuum = INCREMENTAL`` mode, see migration 0002).
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from django.db import close_old_connections, connections
from django.db.utils import Error as DatabaseError

from .. import metrics
from ..entry import ENTRY_OVERHEAD_BYTES, Entry
from ..health import Health
from ..models import CacheEntry, give_space_back
from ..reads import Source
from ..threads import DaemonThread
from .base import Tier, TierError
from .readers import Job, Readers, ReadersBusy, ReadTimeout, os_lock

T = TypeVar("T")

if TYPE_CHECKING:
    from ..conf import CoalescingSettings

log = logging.getLogger("coalescing")

#: How many times the read bound a batch write may take before it counts as
#: a failure (at least :data:`MIN_WRITE_BOUND_S`), and a call is cut inside
#: its thread when gevent runs the sockets (PostgreSQL).
WRITE_BOUND_FACTOR = 10
MIN_WRITE_BOUND_S = 5.0
#: Reader threads per tier, and the reads that may wait for one.
READERS = 4
MAX_QUEUED_READS = 256
#: Deletes that may wait behind a write in hand (one per invalidation).
MAX_QUEUED_WRITES = 1024
#: One statement's rows and bodies: a bound on what the driver copies.
WRITE_CHUNK_ROWS = 500
WRITE_CHUNK_BYTES = 2 * 1024 * 1024
#: The buffer's share of MEMORY_CACHE_MAX_BYTES: 1 / BUFFER_SHARE.
BUFFER_SHARE = 8
#: How often the size bound is checked while writes happen, and how far
#: below the bound an eviction goes (so that it does not run on every check).
SIZE_CHECK_S = 5.0
SIZE_TARGET = 0.9


def buffer_budget(memory_max_bytes: int, upstream_max_bytes: int) -> int:
    """The write buffer's bytes: an eighth of the memory budget, at least one largest entry."""
    return max(memory_max_bytes // BUFFER_SHARE, upstream_max_bytes + ENTRY_OVERHEAD_BYTES + 8192)


class DatabaseTier(Tier):
    name = Source.DB
    buffers_writes = True

    def __init__(
        self,
        using: str = "default",
        flush_interval: float = 0.05,
        timeout: float = 0.5,
        max_pending_bytes: int = 8 * 1024 * 1024,
        max_bytes: int = 0,
        size_check_s: float = SIZE_CHECK_S,
    ) -> None:
        self.using = using
        self.flush_interval = flush_interval
        self.timeout = timeout
        self.write_bound = max(MIN_WRITE_BOUND_S, timeout * WRITE_BOUND_FACTOR)
        self.max_pending_bytes = max_pending_bytes
        self.max_bytes = max_bytes
        self.size_check_s = size_check_s
        #: What the database really did; the coalescer's guard of this tier shares it.
        self.health = Health("db", retry_s=1.0, split=True)
        # An OS lock (never gevent's), held only for dict work: guards the buffer.
        self._lock = os_lock()
        self._pending: OrderedDict[str, Entry] = OrderedDict()  # oldest first
        self._pending_bytes = 0
        self._inflight: dict[str, Entry] = {}  # the batch handed to the writer thread
        self._inflight_bytes = 0
        self._outstanding: tuple[Job[tuple[int, BaseException | None]], list[Entry]] | None = None
        self._write_lock = threading.Lock()  # one batch at a time (a gevent lock under gevent)
        self._wakeup = threading.Event()
        self._writer = DaemonThread(
            self._writer_loop, "coalescing-db-writer-loop", on_fork=self._forked
        )
        self._closed = False
        self._atexit_registered = False
        self._written_since_check = 0
        self._checked_at = 0.0
        #: The size measured after the last eviction (PostgreSQL keeps the space
        #: of deleted rows for reuse, so its measure does not drop).
        self._size_after_evict = 0
        self._readers = Readers(
            READERS, MAX_QUEUED_READS, on_error=self._discard_connection, on_exit=self._close_own
        )
        self._writes = Readers(
            1,
            MAX_QUEUED_WRITES,
            on_error=self._discard_connection,
            on_exit=self._close_own,
            name="coalescing-db-writer",
        )

    @classmethod
    def from_settings(cls, conf: CoalescingSettings) -> DatabaseTier:
        return cls(
            using=conf.database_alias,
            timeout=conf.database_timeout_ms / 1000.0,
            max_pending_bytes=buffer_budget(conf.memory_cache_max_bytes, conf.upstream_max_bytes),
            max_bytes=conf.database_max_bytes,
        )

    # -- reads ----------------------------------------------------------------

    def get(self, key_hash: str, name: str = "") -> Entry | None:
        with self._lock:
            pending = self._pending.get(key_hash) or self._inflight.get(key_hash)
        if pending is not None:
            return pending
        if self._caller_in_transaction():
            # Read on the caller's connection: it may hold rows not committed yet.
            try:
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
        """In a reader: one read, cut (PostgreSQL under gevent) if it hangs far past the bound."""
        try:
            with self._bounded(self.write_bound, "read"):
                return CacheEntry.objects.get_entry(key_hash, using=self.using)
        finally:
            self._forget_queries()

    # -- writes ---------------------------------------------------------------

    def set(self, entry: Entry, lifetime_ms: int = 0) -> None:
        with self._lock:
            self._buffer(entry)
            self._trim_pending()
        self._ensure_writer()
        self._wakeup.set()

    def delete(self, key_hash: str, name: str = "") -> None:
        if self._caller_in_transaction():
            with self._lock:
                self._drop_buffered(key_hash)
            try:
                CacheEntry.objects.delete_key(key_hash, using=self.using)
            except DatabaseError as exc:
                raise TierError(f"database delete failed: {exc}") from exc
            return
        with self._lock:
            # Dropped from the buffer and handed over together: a batch taken
            # before runs before this delete, one taken after no longer has it.
            self._drop_buffered(key_hash)
            try:
                job = self._writes.submit(lambda: self._delete(key_hash))
            except ReadersBusy as exc:
                raise TierError(str(exc)) from None
        if not job.wait(self.timeout):
            raise TierError(f"database delete took longer than {self.timeout:.2f}s (queued)")
        try:
            job.outcome()
        except DatabaseError as exc:
            raise TierError(f"database delete failed: {exc}") from exc

    def _delete(self, key_hash: str) -> None:
        try:
            with self._bounded(self.write_bound, "delete"):
                CacheEntry.objects.delete_key(key_hash, using=self.using)
        finally:
            self._forget_queries()

    # -- by tag (an operator's action: on the writer, bounded) ---------------

    def tagged(self, tag: str) -> list[tuple[str, str, str]]:
        """``(key hash, name, endpoint)`` of the rows labelled ``tag``."""
        return self._on_writer(lambda: CacheEntry.objects.tagged(tag, using=self.using), "read")

    def age_to(self, keys: list[tuple[str, str]], fetched_at: float) -> int:
        """Make these rows no younger than ``fetched_at`` (soft purge)."""
        ms, hashes = round(fetched_at * 1000), self._unbuffered(keys)
        return self._on_writer(
            lambda: CacheEntry.objects.age_to(hashes, ms, using=self.using), "write"
        )

    def delete_many(self, keys: list[tuple[str, str]]) -> int:
        hashes = self._unbuffered(keys)
        return self._on_writer(
            lambda: CacheEntry.objects.delete_keys(hashes, using=self.using), "delete"
        )

    def _unbuffered(self, keys: list[tuple[str, str]]) -> list[str]:
        """The key hashes, dropped from the buffer (a buffered write would undo the purge)."""
        with self._lock:
            for key_hash, _ in keys:
                self._drop_buffered(key_hash)
        return [key_hash for key_hash, _ in keys]

    def _on_writer(self, fn: Callable[[], T], op: str) -> T:
        """``fn()`` in turn with the writes (or on the caller's open transaction)."""
        if self._caller_in_transaction():
            try:
                return fn()
            except DatabaseError as exc:
                raise TierError(f"database {op} failed: {exc}") from exc

        def bounded() -> T:
            try:
                with self._bounded(self.write_bound, op):
                    return fn()
            finally:
                self._forget_queries()

        try:
            job = self._writes.submit(bounded)
        except ReadersBusy as exc:
            raise TierError(str(exc)) from None
        if not job.wait(self.write_bound):
            raise TierError(f"database {op} took longer than {self.write_bound:.2f}s")
        try:
            return job.outcome()
        except DatabaseError as exc:
            raise TierError(f"database {op} failed: {exc}") from exc

    @property
    def pending(self) -> int:
        """Entries not in the database yet: buffered, or in the batch being written."""
        return len(self._pending) + len(self._inflight)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes + self._inflight_bytes

    def flush(self) -> None:
        """Write everything buffered now, within the write bound; ``TierError`` if not all was."""
        if not self._write_pending(self.write_bound):
            raise TierError(f"{self.pending} cache writes could not be written to the database")

    def close(self) -> None:
        """Write what is buffered, then stop the writer and the threads."""
        self._closed = True
        self._wakeup.set()
        try:
            self.flush()
        finally:
            self._readers.close()
            self._writes.close()

    # -- the buffer (under _lock) ---------------------------------------------

    def _buffer(self, entry: Entry) -> None:
        old = self._pending.pop(entry.key_hash, None)
        if old is not None:
            self._pending_bytes -= old.size
            if old.fetched_at > entry.fetched_at:
                entry = old  # monotonic: keep the newer, as the newest in the order
        self._pending[entry.key_hash] = entry
        self._pending_bytes += entry.size

    def _drop_buffered(self, key_hash: str) -> None:
        old = self._pending.pop(key_hash, None)
        if old is not None:
            self._pending_bytes -= old.size
        self._inflight.pop(key_hash, None)  # its bytes stay counted until the batch ends

    def _trim_pending(self) -> None:
        """Keep the buffer and the batch in hand within their bytes, the oldest dropped first."""
        dropped = 0
        while self._pending and self._pending_bytes + self._inflight_bytes > self.max_pending_bytes:
            _, old = self._pending.popitem(last=False)
            self._pending_bytes -= old.size
            dropped += 1
        if dropped:
            metrics.DB_DROPPED.labels("buffer").inc(dropped)
        metrics.DB_BUFFER_BYTES.set(self._pending_bytes + self._inflight_bytes)

    # -- the writer -----------------------------------------------------------

    def _ensure_writer(self) -> None:
        if self._writer.start() and not self._atexit_registered:
            atexit.register(self._flush_at_exit)
            self._atexit_registered = True

    def _forked(self) -> None:
        # The parent's batch in hand is the parent's to write; its locks may
        # have been held by a thread that did not come along.
        self._lock = os_lock()
        self._write_lock = threading.Lock()
        self._outstanding = None
        self._inflight, self._inflight_bytes = {}, 0

    def _writer_loop(self) -> None:
        """A greenlet under gevent: waits, and hands each batch to the writer thread."""
        while not self._closed:
            self._wakeup.wait()
            self._wakeup.clear()
            try:
                written = self._write_pending(self.write_bound)
                if written:
                    self._keep_size()
            except Exception as exc:  # never let the writer die; the batch was put back
                self.health.failed("write", exc)
                written = False
            if not written:
                threading.Event().wait(self.health.retry_s)
                self._wakeup.set()
            # Let a burst gather into one batch.
            threading.Event().wait(self.flush_interval)

    def _write_pending(self, bound: float) -> bool:
        """Write the buffer out, batch after batch; whether it all was, within ``bound`` s."""
        deadline = time.monotonic() + bound
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._write_batch_of_pending(left):
                return False
            if not self._pending:
                return True

    def _write_batch_of_pending(self, bound: float) -> bool:
        """Write the oldest half of the buffer's budget; whether it was, within ``bound`` s.

        Half, so that while a batch is held up (a locked database) the other
        half takes the newest entries, and the oldest are those dropped.
        """
        if not self._write_lock.acquire(timeout=bound):
            return False  # another batch is in hand (a database that is slow or locked)
        try:
            if self._outstanding is not None and not self._settle(bound):
                return False
            in_caller = self._caller_in_transaction()
            with self._lock:
                if not self._pending:
                    return True
                entries, size = [], 0
                half = self.max_pending_bytes // 2
                # At most half (one entry however big, so that it moves at all).
                while self._pending and (
                    not entries or size + next(iter(self._pending.values())).size <= half
                ):
                    _, entry = self._pending.popitem(last=False)
                    entries.append(entry)
                    size += entry.size
                self._inflight = {e.key_hash: e for e in entries}
                self._inflight_bytes = size
                self._pending_bytes -= size
                if not in_caller:
                    job = self._writes.submit(lambda: self._write_batch(entries))
                    self._outstanding = (job, entries)
            if in_caller:  # tests in a transaction: on the caller's connection
                return self._account(entries, *self._write_batch(entries))
            return self._settle(bound)
        finally:
            self._write_lock.release()

    def _settle(self, bound: float) -> bool:
        """Wait (bounded) for the batch in hand, and account for it once it ended."""
        assert self._outstanding is not None
        job, entries = self._outstanding
        if not job.wait(bound):
            self.health.failed("write", TierError(f"database write took longer than {bound:.1f}s"))
            return False
        self._outstanding = None
        return self._account(entries, *job.outcome())

    def _account(self, entries: list[Entry], written: int, error: BaseException | None) -> bool:
        """After a batch: drop what was written, put back what was not; whether all was."""
        self._written_since_check += sum(e.size for e in entries[:written])
        with self._lock:
            # Put back what was not written, unless deleted meanwhile or newer in the buffer.
            for entry in reversed(entries[written:]):
                newer = self._pending.get(entry.key_hash)
                if entry.key_hash not in self._inflight:
                    continue
                if newer is not None:
                    if newer.fetched_at >= entry.fetched_at:
                        continue
                    self._pending_bytes -= newer.size
                self._pending[entry.key_hash] = entry
                self._pending.move_to_end(entry.key_hash, last=False)  # the oldest
                self._pending_bytes += entry.size
            self._inflight, self._inflight_bytes = {}, 0
            self._trim_pending()
        if error is not None:
            self.health.failed("write", error)
            return False
        self.health.succeeded("write")
        return True

    def _write_batch(self, entries: list[Entry]) -> tuple[int, BaseException | None]:
        """In the writer thread: upsert ``entries`` in chunks; (how many written, the error)."""
        written = 0
        try:
            for chunk in _chunks(entries):
                with self._bounded(self.write_bound, "write"):
                    CacheEntry.objects.upsert_many(chunk, using=self.using)
                written += len(chunk)
            return written, None
        except (DatabaseError, TierError) as exc:
            self._discard_connection()
            return written, exc
        finally:
            self._forget_queries()

    def _flush_at_exit(self) -> None:
        """At exit: write what can be, within the bound, and say in one line what could not."""
        if self._closed or not self.pending:
            return
        try:
            self.flush()
        except Exception as exc:  # at exit a traceback helps nobody: one line says it
            log.warning("coalescing: %s; they are lost (%s)", exc, exc.__cause__ or "")

    # -- the size bound ---------------------------------------------------------

    def enforce_size_bound(self) -> int:
        """Check the size bound now (the writer does it as it writes); rows dropped."""
        return self._keep_size(force=True)

    def _keep_size(self, force: bool = False) -> int:
        """Past ``max_bytes``, drop the oldest rows and give the space back (writer thread)."""
        if not self.max_bytes or not (self._written_since_check or force):
            return 0
        now = time.monotonic()
        due = force or self._written_since_check >= self.max_bytes // 100
        if not due and now - self._checked_at < self.size_check_s:
            return 0
        self._checked_at, self._written_since_check = now, 0
        try:
            if self._caller_in_transaction():  # tests in a transaction: the caller's connection
                rows, _ = self._evict_if_over()
            else:
                job = self._writes.submit(self._evict_if_over)
                if not job.wait(self.write_bound * 4):
                    return 0  # it goes on in the writer thread
                rows, _ = job.outcome()
        except DatabaseError as exc:
            self.health.failed("evict", exc)
            return 0
        if rows:
            metrics.DB_DROPPED.labels("size").inc(rows)
        return rows

    def _evict_if_over(self) -> tuple[int, int]:
        """In the writer thread: (rows dropped, size after)."""
        try:
            used = CacheEntry.objects.storage_bytes(self.using)
            floor = max(self._size_after_evict, self.max_bytes)
            if used <= floor:
                return 0, used
            # Down to SIZE_TARGET of the bound; on PostgreSQL, whose measure keeps the
            # space of deleted rows (reused, not returned), what grew since the last time.
            excess = used - floor + round(self.max_bytes * (1 - SIZE_TARGET))
            rows, _ = CacheEntry.objects.evict_oldest(excess, using=self.using)
            give_space_back(self.using)
            self._size_after_evict = CacheEntry.objects.storage_bytes(self.using)
            return rows, self._size_after_evict
        except DatabaseError:
            self._discard_connection()
            raise
        finally:
            self._forget_queries()

    # -- helpers --------------------------------------------------------------

    def _forget_queries(self) -> None:
        """With DEBUG on, Django logs each query of a connection, 9,000 at most,
        until a request ends; the tier's threads serve no request, so they would
        keep them (a batch upsert's log holds every body it wrote)."""
        conn = connections[self.using]
        if conn.queries_logged:
            conn.queries_log.clear()

    def _caller_in_transaction(self) -> bool:
        # initialized_only: looking must not make a connection for this thread.
        return any(
            conn.alias == self.using and conn.in_atomic_block
            for conn in connections.all(initialized_only=True)
        )

    def _close_own(self) -> None:
        """When one of the tier's threads stops: close its connection."""
        connections[self.using].close()

    @contextmanager
    def _bounded(self, seconds: float, op: str) -> Iterator[None]:
        """Cut the block at ``seconds`` when gevent runs the sockets (in the calling thread).

        Only a cooperative driver (psycopg under gevent) can be cut; SQLite's
        calls end on its own busy timeout, in a thread where they block nobody.
        """
        monkey = sys.modules.get("gevent.monkey")
        patched = monkey is not None and monkey.is_module_patched("socket")
        if not patched or connections[self.using].vendor == "sqlite":
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


def _chunks(entries: list[Entry]) -> Iterator[list[Entry]]:
    """Runs of at most WRITE_CHUNK_ROWS entries and WRITE_CHUNK_BYTES of bodies (one at least)."""
    chunk: list[Entry] = []
    size = 0
    for entry in entries:
        if chunk and (len(chunk) >= WRITE_CHUNK_ROWS or size + len(entry.body) > WRITE_CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += len(entry.body)
    if chunk:
        yield chunk
