"""``manage.py purge_stale`` on SQLite and PostgreSQL: exactly the dead rows go."""

from __future__ import annotations

from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from coalescing.models import CacheEntry
from tests.conftest import make_entry

DATABASES = ["default", "postgres"] if "postgres" in settings.DATABASES else ["default"]
pytestmark = pytest.mark.django_db(databases=DATABASES)

# The windows in force in these tests.
WINDOWS = {
    "FRESH_TTL_MS": 10_000,
    "STALE_TTL_MS": 60_000,
    "STALE_IF_ERROR_MS": 300_000,
    "NEGATIVE_TTL_MS": 5_000,
}
MARGIN_MS = 2_000  # far enough from a window's edge that the test's own run time is no matter


@pytest.fixture(autouse=True)
def windows(settings):
    settings.COALESCING = dict(WINDOWS)


def seed(alias: str) -> set[str]:
    """Rows in every state; returns the names of those that must be purged."""
    live = [
        make_entry("fresh", age_ms=1_000),
        make_entry("stale", age_ms=30_000),
        # past the stale window, but still a fallback on upstream errors
        make_entry("expired", age_ms=60_000 + MARGIN_MS),
        make_entry("last-chance", age_ms=300_000 - MARGIN_MS),
        make_entry("negative", age_ms=5_000 - MARGIN_MS, status=404),
        make_entry("price", age_ms=1_000, endpoint="prices"),
        make_entry(
            "orphan", age_ms=300_000 - MARGIN_MS, endpoint="retired"
        ),  # unregistered: settings apply
    ]
    dead = [
        make_entry("dead", age_ms=300_000 + MARGIN_MS),
        make_entry("ancient", age_ms=86_400_000),
        make_entry("negative-old", age_ms=5_000 + MARGIN_MS, status=404),
        # a 404 never serves as stale-if-error: dead long before a 200 would be
        make_entry("negative-older", age_ms=60_000, status=404),
        make_entry("price-dead", age_ms=400_000, endpoint="prices"),
        make_entry("orphan-dead", age_ms=300_000 + MARGIN_MS, endpoint="retired"),
    ]
    CacheEntry.objects.upsert_many(live + dead, using=alias)
    return {e.name for e in dead}


def names(alias: str) -> set[str]:
    return set(CacheEntry.objects.using(alias).values_list("name", flat=True))


def purge(alias: str, *args: str) -> str:
    out = StringIO()
    call_command("purge_stale", *args, database=alias, stdout=out)
    return out.getvalue()


def test_removes_exactly_the_dead_rows(db_alias):
    dead = seed(db_alias)
    before = names(db_alias)
    assert len(before) == 13

    output = purge(db_alias)

    assert output.strip() == f"Purged {len(dead)} stale cache entries."
    assert names(db_alias) == before - dead
    assert CacheEntry.objects.using(db_alias).count() == 13 - len(dead)


def test_dry_run_removes_nothing_and_says_what_it_would_do(db_alias):
    dead = seed(db_alias)
    output = purge(db_alias, "--dry-run")
    assert output.strip() == f"Would purge {len(dead)} stale cache entries."
    assert CacheEntry.objects.using(db_alias).count() == 13


def test_a_small_batch_size_still_purges_everything_with_a_line_per_batch(db_alias):
    dead = seed(db_alias)
    output = purge(db_alias, "--batch-size", "2", "--verbosity", "2")
    lines = output.strip().splitlines()
    assert lines[-1] == f"Purged {len(dead)} stale cache entries."
    assert lines[:-1] == [
        "Purged 2 in this batch, 2 so far",
        "Purged 2 in this batch, 4 so far",
        "Purged 2 in this batch, 6 so far",
    ]
    assert not names(db_alias) & dead


def test_dry_run_pages_through_the_batches(db_alias):
    dead = seed(db_alias)
    output = purge(db_alias, "--dry-run", "--batch-size", "4", "-v", "2")
    assert output.strip().splitlines() == [
        "Would purge 4 in this batch, 4 so far",
        "Would purge 2 in this batch, 6 so far",
        f"Would purge {len(dead)} stale cache entries.",
    ]


def test_endpoint_limits_the_purge_to_its_rows(db_alias):
    seed(db_alias)
    assert purge(db_alias, "--endpoint", "prices").strip() == "Purged 1 stale cache entries."
    assert "price-dead" not in names(db_alias)
    assert {"dead", "ancient", "orphan-dead"} <= names(db_alias)


def test_windows_come_from_the_settings_in_force(db_alias, settings):
    seed(db_alias)
    # a stale-if-error window shorter than the stale window: dead after 60 s
    settings.COALESCING = {**WINDOWS, "STALE_IF_ERROR_MS": 1_000}
    purge(db_alias)
    assert names(db_alias) == {"fresh", "stale", "negative", "price"}


def test_an_endpoints_own_windows_apply_to_its_rows(db_alias, monkeypatch):
    from coalescing import registry
    from products.endpoints import PriceEndpoint

    class ShortPrices(PriceEndpoint):
        pass

    ShortPrices.name = "prices"
    ShortPrices.stale_if_error_ms = 0  # prices: dead once past the 60 s stale window
    monkeypatch.setitem(registry._endpoints, "prices", ShortPrices)
    CacheEntry.objects.upsert_many(
        [
            make_entry("price-expired", age_ms=60_000 + MARGIN_MS, endpoint="prices"),
            make_entry("kept", age_ms=60_000 + MARGIN_MS),
        ],
        using=db_alias,
    )
    assert purge(db_alias).strip() == "Purged 1 stale cache entries."
    assert names(db_alias) == {"kept"}


def test_an_unknown_endpoint_is_an_error_naming_the_known_ones(db_alias):
    seed(db_alias)
    # The example's names, among the others the suite defines (stock, rates, test functions).
    known = r"unknown endpoint 'nope' \(known: [^)]*prices, products"
    with pytest.raises(CommandError, match=known):
        purge(db_alias, "--endpoint", "nope")
    assert CacheEntry.objects.using(db_alias).count() == 13


@pytest.mark.parametrize("size", ["0", "-5"])
def test_a_batch_size_below_one_is_an_error(size):
    with pytest.raises(CommandError, match="--batch-size must be at least 1"):
        call_command("purge_stale", "--batch-size", size, stdout=StringIO())


def test_an_empty_table_purges_nothing(db_alias):
    assert purge(db_alias).strip() == "Purged 0 stale cache entries."


def test_the_command_exits_0_and_fails_on_a_bad_endpoint(tmp_path):
    from testkit.servers import manage

    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    assert manage("migrate", "-v", "0", env=env).returncode == 0
    done = manage("purge_stale", "--dry-run", env=env)
    assert (done.returncode, done.stdout.strip()) == (0, "Would purge 0 stale cache entries.")
    bad = manage("purge_stale", "--endpoint", "nope", env=env)
    assert bad.returncode == 1
    assert "unknown endpoint 'nope'" in bad.stderr
