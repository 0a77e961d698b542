"""What every tier promises (:class:`coalescing.tiers.base.Tier`), run against each.

In the shape of Django's ``tests/cache/tests.py`` (``BaseCacheTests``, run
against every cache backend): one parametrised fixture, ``tier``, gives a
fresh, empty instance of the memory tier, the Redis tier, and the database
tier on SQLite and on PostgreSQL; every test below runs on each. What only
one tier does (the memory tier's LRU by bytes, Redis's expiry and leases,
the database tier's buffer bounds, locks and outages) stays in that tier's
own tests.

The database tier buffers its writes (``Tier.buffers_writes``); :func:`put`
writes them out, so that a read after it reads the backend, not the buffer.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from coalescing.entry import Entry
from coalescing.tiers.base import Tier
from tests.conftest import make_entry

#: Long enough that no entry of a test expires in Redis while it runs.
LIFETIME_MS = 60_000
_DATABASES = pytest.mark.django_db(databases=["default", "postgres"], transaction=True)


@pytest.fixture(
    params=[
        "memory",
        "redis",
        pytest.param("sqlite", marks=_DATABASES),
        pytest.param("postgres", marks=_DATABASES),
    ]
)
def tier(request) -> Iterator[Tier]:
    """A fresh, empty tier of each kind; a missing service is a skip (a failure
    under REQUIRE_SERVICES=1), as in the rest of the suite."""
    if request.param == "memory":
        from coalescing.tiers.memory import MemoryTier

        yield MemoryTier(max_bytes=64 * 2**20)
    elif request.param == "redis":
        import redis

        from coalescing.tiers.redis import RedisTier

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        prefix = f"contract-{uuid.uuid4().hex[:8]}"
        yield RedisTier(client, prefix)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()
    else:
        from coalescing.tiers.database import DatabaseTier

        alias = (
            "default" if request.param == "sqlite" else request.getfixturevalue("postgres_alias")
        )
        made = DatabaseTier(using=alias, flush_interval=0.01)
        yield made
        made.close()  # its reader and writer threads hold connections


def put(tier: Tier, *entries: Entry) -> None:
    """Write ``entries`` and wait until they are in the backend (buffered tiers)."""
    for entry in entries:
        tier.set(entry, LIFETIME_MS)
    tier.flush()


def now() -> float:
    """Now, to the millisecond every tier keeps."""
    return round(time.time(), 3)


def stored(name: str = "SKU1", **fields: object) -> Entry:
    """An entry fetched just now (Redis keeps it ``LIFETIME_MS``) with every field set."""
    defaults: dict[str, object] = {
        "key_hash": f"h-{name}",
        "fetched_at": now(),
        "params": json.dumps({"q": {"productId": [name]}, "v": None}),
        "upstream_etag": '"v1"',
        "upstream_modified": "Wed, 21 Oct 2015 07:28:00 GMT",
        "tags": (f"product:{name}", "region:eu"),
    }
    return make_entry(name, **{**defaults, **fields})  # type: ignore[arg-type]


def test_it_has_a_name(tier):
    assert tier.name and isinstance(tier.name, str)
    assert isinstance(tier.buffers_writes, bool)


def test_a_missing_key_is_none(tier):
    assert tier.get("never-written", "SKU1") is None
    tier.flush()  # nothing buffered: a no-op
    assert tier.get("never-written", "SKU1") is None


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"body": bytes(range(256)) * 3, "content_type": "application/octet-stream"},
        {"negative": True, "tags": (), "upstream_etag": "", "upstream_modified": ""},
        {"body": b"", "params": ""},
    ],
    ids=["json", "binary", "negative", "empty"],
)
def test_a_written_entry_reads_back_equal_in_every_field(tier, fields):
    entry = stored(**fields)
    put(tier, entry)
    got = tier.get(entry.key_hash, entry.name)
    assert got == entry  # every field but the derived ETag...
    assert got.etag == entry.etag  # ...which is derived again, equal
    assert got.body == entry.body and type(got.body) is bytes


def test_keys_are_independent(tier):
    one, two = stored("SKU1", body=b"[1]"), stored("SKU2", body=b"[2]")
    put(tier, one, two)
    assert tier.get(one.key_hash, one.name).body == b"[1]"
    assert tier.get(two.key_hash, two.name).body == b"[2]"


@pytest.mark.parametrize("flushed", [True, False], ids=["written", "buffered"])
def test_writes_are_monotonic(tier, flushed):
    """An older entry never replaces a newer one; a newer one does. ``written``:
    each write reaches the backend before the next (the database's SQL);
    ``buffered``: all three meet in a write buffer first, where there is one."""
    at = now()
    newer = stored(fetched_at=at, body=b"[new]")
    older = stored(fetched_at=at - 5, body=b"[older]")
    newest = stored(fetched_at=at + 5, body=b"[newest]")
    write = put if flushed else (lambda t, e: t.set(e, LIFETIME_MS))
    write(tier, newer)
    write(tier, older)
    tier.flush()
    assert tier.get(newer.key_hash, newer.name) == newer
    write(tier, newest)
    tier.flush()
    assert tier.get(newer.key_hash, newer.name) == newest


def test_delete_removes_the_entry_and_a_write_not_yet_written(tier):
    entry = stored()
    other = stored("SKU2")
    put(tier, entry, other)
    tier.set(stored(fetched_at=entry.fetched_at + 5), LIFETIME_MS)  # buffered, where there is one
    tier.delete(entry.key_hash, entry.name)
    tier.flush()
    assert tier.get(entry.key_hash, entry.name) is None
    assert tier.get(other.key_hash, other.name) == other
    tier.delete("never-written", "SKU1")  # deleting what is not there is no error


def test_delete_many_removes_those_keys_only(tier):
    entries = [stored(f"D{i}") for i in range(3)]
    put(tier, *entries)
    gone = [(e.key_hash, e.name) for e in entries[:2]]
    assert tier.delete_many(gone) == 2
    tier.flush()
    assert [tier.get(e.key_hash, e.name) for e in entries] == [None, None, entries[2]]


def test_tagged_lists_the_entries_of_a_tag(tier):
    a = stored("T1", tags=("product:T1", "region:eu"))
    b = stored("T2", tags=("region:eu",))
    c = stored("T3", tags=())
    put(tier, a, b, c)
    listed = {tuple(x) for x in tier.tagged("region:eu")}
    assert listed == {(a.key_hash, a.name, a.endpoint), (b.key_hash, b.name, b.endpoint)}
    assert {tuple(x) for x in tier.tagged("product:T1")} == {(a.key_hash, a.name, a.endpoint)}
    assert list(tier.tagged("product:none")) == []


def test_age_to_makes_entries_no_younger_and_never_younger(tier):
    """The soft purge: younger entries are aged to the time given, older ones kept."""
    at = now()
    young = stored("A1", fetched_at=at)
    old = stored("A2", fetched_at=at - 30)
    put(tier, young, old)
    keys = [(e.key_hash, e.name) for e in (young, old)] + [("never-written", "A3")]
    assert tier.age_to(keys, at - 20) == 1  # only the young one changed
    got_young = tier.get(young.key_hash, young.name)
    assert got_young.fetched_at == at - 20
    assert got_young.body == young.body and got_young.tags == young.tags
    assert tier.get(old.key_hash, old.name) == old
    # A write of what the soft purge aged still wins over it: writes stay monotonic.
    put(tier, young)
    assert tier.get(young.key_hash, young.name) == young
