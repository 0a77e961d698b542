"""The persistent tier's bounds under faults (issue 12), on real SQLite and PostgreSQL.

- the write buffer is bounded in bytes, the oldest dropped and counted (finding 1);
- the tier's health is judged by its real writes, not by buffered ones (finding 3);
- the tier's size on disk is bounded and SQLite gives space back (finding 7).

A database is made unwritable for real: another connection holds its write
lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL ``LOCK TABLE``).
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
from django.db import connections

from coalescing import metrics
from coalescing.models import CacheEntry
from coalescing.tiers.database import DatabaseTier, buffer_budget
from tests.conftest import make_entry

pytestmark = pytest.mark.django_db(databases=["default", "postgres"], transaction=True)

BODY = 100_000


def key(i: int) -> str:
    """The key hash of the ``i``-th entry: they sort as they were made."""
    return f"b{i:06d}"


def dropped(reason: str) -> float:
    return metrics.DB_DROPPED.labels(reason)._value.get()


@pytest.fixture
def make_tier(db_alias):
    made: list[DatabaseTier] = []

    def make(**kwargs) -> DatabaseTier:
        made.append(DatabaseTier(using=db_alias, flush_interval=0.01, **kwargs))
        return made[-1]

    yield make
    for tier in made:
        tier.close()


@contextlib.contextmanager
def write_locked(alias: str) -> Iterator[None]:
    """Another connection holds the database's write lock for the block."""
    conf = connections[alias].settings_dict
    if connections[alias].vendor == "sqlite":
        other = sqlite3.connect(conf["NAME"], isolation_level=None, timeout=5)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("COMMIT")
            other.close()
        return
    import psycopg

    other = psycopg.connect(
        dbname=conf["NAME"], user=conf["USER"], host=conf["HOST"], port=conf["PORT"] or 5432
    )
    other.execute("LOCK TABLE coalescing_cacheentry IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        other.commit()
        other.close()


def test_the_budget_is_a_share_of_the_memory_budget_and_holds_one_largest_entry():
    assert buffer_budget(64 * 2**20, 2**20) == 8 * 2**20
    assert buffer_budget(0, 2**20) > 2**20  # memory tier off: a largest entry still fits


def test_the_buffer_is_bounded_in_bytes_while_the_database_cannot_write(db_alias, make_tier):
    budget = 5 * make_entry(key_hash=key(0), body_size=BODY).size
    tier = make_tier(max_pending_bytes=budget)
    before = dropped("buffer")
    with write_locked(db_alias):
        for i in range(60):
            tier.set(make_entry(key_hash=key(i), body_size=BODY, fetched_at=1_000.0 + i))
            assert tier.pending_bytes <= budget  # the batch in the writer's hands included
        assert dropped("buffer") - before >= 50
        # Reads see what is buffered: the newest entries.
        assert tier.get("b000059").key_hash == "b000059"
    tier.flush()
    rows = set(CacheEntry.objects.using(db_alias).values_list("key_hash", flat=True))
    # What was buffered (the newest) and the batch in the writer's hands when
    # the lock came (half the budget at most); everything between was dropped.
    assert "b000059" in rows and len(rows) <= 6
    assert len([r for r in rows if int(r[1:]) < 50]) <= 2, rows


def test_a_buffered_write_never_marks_the_database_healthy(db_alias, make_tier, caplog):
    tier = make_tier(max_pending_bytes=10 * make_entry(key_hash=key(0), body_size=BODY).size)
    tier.write_bound = 0.3  # a write blocked longer than this is a failure
    from coalescing.coalescer import TierGuard

    guard = TierGuard(tier)
    assert guard.health is tier.health  # one Health per tier
    with caplog.at_level("WARNING", logger="coalescing"), write_locked(db_alias):
        for i in range(40):  # a request's miss writes through the guard
            guard.call(
                "set",
                lambda i=i: tier.set(
                    make_entry(key_hash=key(i), body_size=100, fetched_at=1_000.0 + i)
                ),
            )
            time.sleep(0.03)
        assert tier.health.down
    deadline = time.monotonic() + 10
    while tier.health.down and time.monotonic() < deadline:
        tier.set(make_entry(key_hash=key(99), body_size=100, fetched_at=1_099.0))
        time.sleep(0.1)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "db failing" in m]) == 1, messages
    assert len([m for m in messages if "db is back" in m]) == 1, messages


def test_the_size_on_disk_is_bounded_the_oldest_dropped(db_alias, make_tier):
    bound = 2 * 2**20
    tier = make_tier(max_bytes=bound, max_pending_bytes=2**30)
    before = dropped("size")
    for i in range(100):  # 10 MB of bodies
        tier.set(make_entry(key_hash=key(i), body_size=BODY, fetched_at=1_000.0 + i))
    tier.flush()
    tier.enforce_size_bound()  # the writer may have done it already, as it wrote
    deadline = time.monotonic() + 10
    while True:
        kept = list(
            CacheEntry.objects.using(db_alias)
            .order_by("fetched_at_ms")
            .values_list("key_hash", "size")
        )
        dropped_rows = round(dropped("size") - before)
        if len(kept) + dropped_rows == 100 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert dropped_rows > 0 and len(kept) + dropped_rows == 100  # each one counted
    assert sum(size for _, size in kept) <= bound
    assert kept[-1][0] == "b000099" and kept[0][0] == f"b{dropped_rows:06d}"  # oldest went
    if connections[db_alias].vendor == "sqlite":
        assert CacheEntry.objects.storage_bytes(db_alias) <= bound * 1.1


def test_the_writer_keeps_the_bound_by_itself(db_alias, make_tier):
    bound = 2 * 2**20
    tier = make_tier(max_bytes=bound, max_pending_bytes=2**30, size_check_s=0)
    for i in range(100):
        tier.set(make_entry(key_hash=key(i), body_size=BODY, fetched_at=1_000.0 + i))
        time.sleep(0.005)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        sizes = CacheEntry.objects.using(db_alias).values_list("size", flat=True)
        if tier.pending == 0 and sum(sizes) <= bound:
            break
        time.sleep(0.1)
    assert sum(CacheEntry.objects.using(db_alias).values_list("size", flat=True)) <= bound


def test_purge_stale_gives_the_sqlite_file_its_space_back():
    from django.core.management import call_command

    db_alias = "default"
    path = connections[db_alias].settings_dict["NAME"]
    old = [
        make_entry(key_hash=key(i), body_size=BODY, fetched_at=1_000.0 + i) for i in range(200)
    ]  # 20 MB, long dead
    for start in range(0, len(old), 20):
        CacheEntry.objects.upsert_many(old[start : start + 20], using=db_alias)

    def file_bytes() -> int:
        with connections[db_alias].cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return os.path.getsize(path)

    full = file_bytes()
    assert full > 15_000_000
    call_command("purge_stale", stdout=io.StringIO())
    assert CacheEntry.objects.using(db_alias).count() == 0
    assert file_bytes() < full / 4


def test_purge_stale_never_holds_the_write_lock_for_long(db_alias):
    """While a purge of many rows runs, another writer always gets in within a bound."""
    from django.core.management import call_command

    rows = [
        make_entry(key_hash=key(i), body_size=500, fetched_at=1_000.0 + i) for i in range(30_000)
    ]
    for start in range(0, len(rows), 500):
        CacheEntry.objects.upsert_many(rows[start : start + 500], using=db_alias)
    waits: list[float] = []
    done = threading.Event()

    def other_writer() -> None:
        n = 0
        try:
            while not done.is_set():
                n += 1
                started = time.monotonic()
                CacheEntry.objects.upsert_many(
                    [make_entry(key_hash=key(100_000 + n), body_size=10, fetched_at=time.time())],
                    using=db_alias,
                )
                waits.append(time.monotonic() - started)
                time.sleep(0.005)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_writer)
    thread.start()
    started = time.monotonic()
    try:
        call_command(
            "purge_stale",
            "--batch-size",
            "100000",
            "--database",
            db_alias,
            stdout=io.StringIO(),
        )
        purge_s = time.monotonic() - started
    finally:
        done.set()
        thread.join(30)
    assert CacheEntry.objects.using(db_alias).filter(fetched_at_ms__lt=10**9).count() == 0
    # One transaction for everything held the lock about as long as the purge
    # took; short ones hold it a small part of that at a time.
    assert waits and max(waits) < min(1.0, purge_s / 5), (max(waits), purge_s)
