"""The persistent tier, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from coalescing.models import CacheEntry
from coalescing.tiers.database import READERS, DatabaseTier
from tests.conftest import make_entry

pytestmark = pytest.mark.django_db(databases=["default", "postgres"], transaction=True)


@pytest.fixture
def make_tier(db_alias):
    """Tiers on the database under test, closed afterwards (their readers hold connections)."""
    made: list[DatabaseTier] = []

    def make(**kwargs) -> DatabaseTier:
        made.append(DatabaseTier(using=db_alias, **kwargs))
        return made[-1]

    yield make
    for tier in made:
        tier.close()


def test_a_row_records_its_body_size(db_alias, make_tier):
    """Round trips are the contract suite's (tests/test_tier_contract.py); the size
    column, which the size bound sums, is this tier's."""
    tier = make_tier()
    body = bytes(range(256)) * 3
    tier.set(make_entry(key_hash="k1", body=body))
    tier.flush()
    assert CacheEntry.objects.using(db_alias).get(pk="k1").size == len(body)


def test_writes_happen_behind_the_caller_and_are_batched(db_alias, make_tier):
    tier = make_tier(flush_interval=0.01)
    for i in range(50):
        tier.set(make_entry(key_hash=f"k{i}", fetched_at=1000.0 + i))
    # Reads see buffered writes at once, before they reach the database.
    assert tier.get("k49").fetched_at == 1049.0
    tier.flush()
    assert CacheEntry.objects.using(db_alias).count() == 50
    assert tier.pending == 0


def test_the_writer_thread_writes_without_a_flush(db_alias, make_tier):
    tier = make_tier(flush_interval=0.01)
    tier.set(make_entry(key_hash="bg"))
    for _ in range(100):
        if CacheEntry.objects.using(db_alias).filter(pk="bg").exists():
            break
        threading.Event().wait(0.05)
    assert CacheEntry.objects.using(db_alias).filter(pk="bg").exists()


def test_concurrent_writers_keep_the_newest(db_alias, make_tier):
    tier_a, tier_b = make_tier(), make_tier()
    errors: list[BaseException] = []

    def write(tier: DatabaseTier, start: int) -> None:
        try:
            for i in range(start, 40, 2):
                tier.set(make_entry(key_hash="hot", fetched_at=1000.0 + i, body=str(i).encode()))
                tier.flush()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t, s)) for t, s in ((tier_a, 0), (tier_b, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert CacheEntry.objects.get_entry("hot", using=db_alias).body == b"39"


def test_reads_from_many_threads_share_a_few_long_lived_connections(db_alias, make_tier):
    from django.db.backends.signals import connection_created

    tier = make_tier()
    tier.set(make_entry(key_hash="shared"))
    tier.flush()
    opened: list[str] = []

    def count(sender, connection, **kwargs):
        if connection.alias == db_alias:
            opened.append(threading.current_thread().name)

    connection_created.connect(count)
    try:
        # One thread per read, as every flight runs in a thread of its own.
        for _ in range(3):
            threads = [threading.Thread(target=lambda: tier.get("shared")) for _ in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
    finally:
        connection_created.disconnect(count)
    assert tier.get("shared") == make_entry(key_hash="shared")
    assert 1 <= len(opened) <= READERS, opened
    assert set(opened) == {"coalescing-db-reader"}


def test_a_read_that_hangs_is_a_tier_error_within_the_bound_without_gevent(
    db_alias, make_tier, monkeypatch
):
    from coalescing.models import CacheEntryManager
    from coalescing.tiers.base import TierError

    release = threading.Event()
    real_get = CacheEntryManager.get_entry

    def hanging_get(self, *args, **kwargs):
        release.wait(10)  # a database that does not answer
        return real_get(self, *args, **kwargs)

    monkeypatch.setattr(CacheEntryManager, "get_entry", hanging_get)
    tier = make_tier(timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(TierError, match="longer than"):
            tier.get("hung")
        assert time.monotonic() - started < 1.0
    finally:
        release.set()


def test_an_outage_is_logged_once_and_the_buffer_written_when_it_ends(
    db_alias, make_tier, monkeypatch, caplog
):
    from django.db.utils import OperationalError

    from coalescing.models import CacheEntryManager

    down = threading.Event()
    down.set()
    attempts: list[float] = []
    real_upsert = CacheEntryManager.upsert_many

    def upsert_many(self, *args, **kwargs):
        attempts.append(time.monotonic())
        if down.is_set():
            raise OperationalError("connection refused (the test's outage)")
        return real_upsert(self, *args, **kwargs)

    monkeypatch.setattr(CacheEntryManager, "upsert_many", upsert_many)
    # A buffer of three entries' bytes (they are all the same size).
    tier = make_tier(flush_interval=0.01, max_pending_bytes=3 * make_entry(key_hash="out0").size)
    with caplog.at_level("WARNING", logger="coalescing"):
        for i in range(5):  # more than the buffer keeps: the two oldest go
            tier.set(make_entry(key_hash=f"out{i}", fetched_at=1000.0 + i))
        deadline = time.monotonic() + 10
        while len(attempts) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(attempts) >= 3  # the writer retried, about once a second
        down.clear()
        while tier.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        tier.flush()  # waits for a batch the writer has in hand
    rows = set(CacheEntry.objects.using(db_alias).values_list("key_hash", flat=True))
    assert rows == {"out2", "out3", "out4"}
    failing = [r for r in caplog.records if "failing" in r.getMessage()]
    back = [r for r in caplog.records if "is back" in r.getMessage()]
    assert len(failing) == 1 and len(back) == 1, [r.getMessage() for r in caplog.records]


def test_with_debug_on_the_readers_keep_no_log_of_their_queries(db_alias, make_tier, settings):
    from django.db import connections

    settings.DEBUG = True  # Django then logs every query of a connection
    tier = make_tier()
    for i in range(40):
        assert tier.get(f"none{i}") is None
    # Asked in the readers themselves: each connection's log is empty again.
    logged = [
        tier._readers.run(lambda: len(connections[db_alias].queries_log), 1.0) for _ in range(8)
    ]
    assert logged == [0] * 8
