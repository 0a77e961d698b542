from __future__ import annotations

from coalescing.entry import Entry
from coalescing.tiers.memory import MemoryTier
from tests.conftest import make_entry


def test_lru_evicts_least_recently_used_within_the_byte_budget():
    one = make_entry(key_hash="a").size
    tier = MemoryTier(max_bytes=one * 3)
    for key in "abc":
        tier.set(make_entry(key_hash=key))
    assert tier.get("a") is not None  # a is now the most recent
    tier.set(make_entry(key_hash="d"))
    assert tier.get("b") is None
    assert {k for k in "acd" if tier.get(k)} == set("acd")
    assert tier.bytes_used <= tier.max_bytes


def test_budget_is_measured_in_stored_bytes():
    tier = MemoryTier(max_bytes=10_000)
    for i in range(100):
        tier.set(make_entry(key_hash=f"k{i}", body_size=1000))
    assert tier.bytes_used <= 10_000
    assert len(tier) == 10_000 // make_entry(key_hash="k10", body_size=1000).size


def test_an_entry_larger_than_the_budget_is_not_stored():
    tier = MemoryTier(max_bytes=500)
    tier.set(make_entry(key_hash="big", body_size=1000))
    assert tier.get("big") is None and tier.bytes_used == 0


def test_a_replaced_entry_is_counted_once():
    """Monotonic writes are the contract suite's; here, the bytes they leave counted."""
    tier = MemoryTier(max_bytes=10_000)
    tier.set(make_entry(key_hash="k", fetched_at=2000.0))
    tier.set(make_entry(key_hash="k", fetched_at=1000.0))  # older: not taken
    tier.set(make_entry(key_hash="k", body_size=50, fetched_at=3000.0))
    assert tier.bytes_used == make_entry(key_hash="k", body_size=50).size


def test_delete_frees_bytes():
    tier = MemoryTier(max_bytes=10_000)
    tier.set(make_entry(key_hash="k"))
    tier.delete("k")
    assert tier.get("k") is None and tier.bytes_used == 0


def test_the_budget_bounds_what_the_process_really_holds():
    """The accounted size is not below what CPython allocates for an entry."""
    import tracemalloc

    tier = MemoryTier(max_bytes=10**9)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(2000):
        tier.set(
            Entry(
                f"{i:032x}",
                f"products:SKU{i}::name,price",
                "products",
                f"SKU{i}",
                200,
                bytes(1024),
                "application/json",
                1000.0,
                f"http://127.0.0.1:9999/products/SKU{i}?fields=name,price",
            )
        )
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # What this thread's loop allocated: other threads of the suite (listeners,
    # writers of earlier tests) allocate meanwhile, elsewhere.
    held = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if stat.traceback[0].filename.endswith(
            ("test_memory_tier.py", "entry.py", "memory.py", "<string>")
        )
    )
    assert 0.9 * held <= tier.bytes_used <= 1.25 * held
