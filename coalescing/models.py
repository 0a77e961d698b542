"""The persistent tier's rows. The manager owns every query on them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.db import connections, models
from django.db.models import Q

from .conf import get_settings
from .entry import Entry, Policy, State, Window
from .policies import Group, Policies

#: The values of the admin's ``state`` filter: every row is in exactly one.
#: ``in_state`` also knows ``dead``: past every window in which the entry
#: could be served, which the admin lists among the expired.
STATES = ("fresh", "stale", "expired", "negative")
ROW_STATES = (*STATES, "dead")
NEGATIVE_STATUS = 404


def row_state(state: State, negative: bool) -> str:
    """The name of a row in ``state``: ``fresh``, ``stale``, ``expired``,
    ``negative`` (a fresh 404) or ``dead``."""
    if state is State.DEAD:
        return "dead"
    return "negative" if negative else state.value


def listed_state(name: str) -> str:
    """The :data:`STATES` value a row named ``name`` is listed under: a dead
    row is not servable as is either, so the admin counts it as expired."""
    return "expired" if name == "dead" else name


def _names(window: Window) -> tuple[str, str]:
    """What the rows of a window answer to: their own name and the listed one."""
    name = row_state(window.state, window.negative)
    return name, listed_state(name)


def _state_condition(state: str, policy: Policy, at_ms: int) -> Q:
    """Rows of one policy in ``state`` (a :data:`ROW_STATES` name), as
    conditions on status and fetch time, read from :attr:`Policy.windows`.

    An age of at least ``a`` and below ``b`` is
    ``at_ms - b < fetched_at_ms <= at_ms - a``.
    """
    if state not in ROW_STATES:
        raise ValueError(f"unknown state {state!r} (known: {', '.join(ROW_STATES)})")
    condition: Q | None = None
    for negative in (False, True):
        # The windows of a name are adjacent in a class: one age range each.
        ages = [
            (w.from_ms, w.until_ms)
            for w in policy.windows
            if w.negative is negative and state in _names(w)
        ]
        if not ages:
            continue
        part = Q(status=NEGATIVE_STATUS) if negative else ~Q(status=NEGATIVE_STATUS)
        from_ms, until_ms = ages[0][0], ages[-1][1]
        if from_ms != -math.inf:
            part &= Q(fetched_at_ms__lte=at_ms - from_ms)
        if until_ms != math.inf:
            part &= Q(fetched_at_ms__gt=at_ms - until_ms)
        condition = part if condition is None else condition | part
    assert condition is not None  # every name has a window in some class
    return condition


def now_ms() -> int:
    return round(time.time() * 1000)


def state_q(
    state: str, policies: Policies, *, endpoint: str | None = None, now: int | None = None
) -> Q:
    """The condition of rows in ``state`` (``fresh``, ``stale``, ``expired``,
    ``negative`` or ``dead``), each endpoint with its windows in ``policies``.

    Conditions on ``status`` and ``fetched_at_ms`` only, so the database does
    the work on its age indexes; usable in ``filter()`` and in ``Count(filter=)``.
    """
    at = now_ms() if now is None else now
    condition = Q()
    for i, group in enumerate(policies.groups(endpoint)):
        part = _rows_of(group) & _state_condition(state, group.policy, at)
        condition = part if i == 0 else condition | part
    return condition


def _rows_of(group: Group) -> Q:
    if group.endpoints is not None:
        return Q(endpoint__in=group.endpoints)
    return ~Q(endpoint__in=group.others) if group.others else Q()


#: The columns of an :class:`Entry`, in the order ``get_entry`` and ``upsert_many`` use.
_ENTRY_COLUMNS = (
    "key_hash",
    "key",
    "endpoint",
    "name",
    "status",
    "body",
    "content_type",
    "fetched_at_ms",
    "params",
    "upstream_etag",
    "upstream_modified",
    "tags",
)


def stored_tags(tags: Iterable[str]) -> str:
    """Tags as the column holds them: space-separated, with a space at each end,
    so that ``contains " tag "`` matches a whole tag only."""
    return f" {' '.join(tags)} " if tags else ""


class CacheEntryQuerySet(models.QuerySet["CacheEntry"]):
    def in_state(
        self,
        state: str,
        policies: Policies,
        *,
        endpoint: str | None = None,
        now: int | None = None,
    ) -> CacheEntryQuerySet:
        """Rows in ``state``: one query, see :func:`state_q`."""
        return self.filter(state_q(state, policies, endpoint=endpoint, now=now))

    def dead(
        self, policies: Policies, *, endpoint: str | None = None, now: int | None = None
    ) -> CacheEntryQuerySet:
        """Rows past every window in which they could still be served."""
        return self.in_state("dead", policies, endpoint=endpoint, now=now)


class CacheEntryManager(models.Manager.from_queryset(CacheEntryQuerySet)):  # type: ignore[misc]
    def get_entry(self, key_hash: str, using: str = "default") -> Entry | None:
        # ``[:1]``, not ``.first()``: that adds an ORDER BY to a lookup by primary key.
        found = self.using(using).filter(key_hash=key_hash)
        rows = list(found.values_list(*_ENTRY_COLUMNS[1:])[:1])
        if not rows:
            return None
        row = dict(zip(_ENTRY_COLUMNS[1:], rows[0], strict=True))
        return Entry(
            key_hash=key_hash,
            key=row["key"],
            endpoint=row["endpoint"],
            name=row["name"],
            status=row["status"],
            body=bytes(row["body"]),
            content_type=row["content_type"],
            fetched_at=row["fetched_at_ms"] / 1000.0,
            params=row["params"],
            upstream_etag=row["upstream_etag"],
            upstream_modified=row["upstream_modified"],
            tags=tuple(row["tags"].split()),
        )

    def upsert_many(self, entries: Iterable[Entry], using: str = "default") -> None:
        """Insert or update rows, never replacing a row fetched later (monotonic).

        One statement for SQLite and PostgreSQL: both have ``ON CONFLICT ...
        DO UPDATE ... WHERE``. The ``WHERE`` keeps an older value (from a
        leader that outlived its lease, say) from overwriting a newer one.
        """
        batch = {e.key_hash: e for e in entries}  # one row per key per statement
        if not batch:
            return
        connection = connections[using]
        q = connection.ops.quote_name
        table = q(self.model._meta.db_table)
        columns = [*_ENTRY_COLUMNS, "size"]
        updated = ", ".join(f"{q(c)} = excluded.{q(c)}" for c in columns[1:])
        row = "(" + ", ".join(["%s"] * len(columns)) + ")"
        sql = (
            f"INSERT INTO {table} ({', '.join(q(c) for c in columns)}) "
            f"VALUES {', '.join([row] * len(batch))} "
            f"ON CONFLICT ({q('key_hash')}) DO UPDATE SET {updated} "
            f"WHERE {table}.{q('fetched_at_ms')} < excluded.{q('fetched_at_ms')}"
        )
        params: list[object] = []
        for e in batch.values():
            params += [
                e.key_hash,
                e.key,
                e.endpoint,
                e.name,
                e.status,
                e.body,
                e.content_type,
                round(e.fetched_at * 1000),
                e.params,
                e.upstream_etag,
                e.upstream_modified,
                stored_tags(e.tags),
                len(e.body),
            ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)

    def tagged(self, tag: str, using: str = "default") -> list[tuple[str, str, str]]:
        """``(key hash, name, endpoint)`` of the rows labelled ``tag``.

        A scan of the column (invalidation by tag is rare), checked here
        again because SQLite's ``LIKE`` ignores case.
        """
        rows = self.using(using).filter(tags__contains=f" {tag} ")
        found = rows.values_list("key_hash", "name", "endpoint", "tags")
        return [(k, n, e) for k, n, e, tags in found.iterator() if tag in tags.split()]

    def age_to(self, keys: Iterable[str], fetched_at_ms: int, using: str = "default") -> int:
        """Make these rows no younger than ``fetched_at_ms`` (soft purge); how many changed."""
        aged, keys = 0, list(keys)
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            aged += (
                self.using(using)
                .filter(key_hash__in=batch, fetched_at_ms__gt=fetched_at_ms)
                .update(fetched_at_ms=fetched_at_ms)
            )
        return aged

    def delete_keys(self, keys: Iterable[str], using: str = "default") -> int:
        deleted, keys = 0, list(keys)
        for start in range(0, len(keys), 500):
            count, _ = self.using(using).filter(key_hash__in=keys[start : start + 500]).delete()
            deleted += count
        return deleted

    def delete_key(self, key_hash: str, using: str = "default") -> int:
        deleted, _ = self.using(using).filter(key_hash=key_hash).delete()
        return deleted

    def purge_stale(
        self,
        policies: Policies,
        *,
        using: str | None = None,
        endpoint: str | None = None,
        batch_size: int = 1000,
        dry_run: bool = False,
        now: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Delete the dead rows (see :meth:`CacheEntryQuerySet.dead`); how many.

        In batches, so memory stays bounded on millions of rows: select up to
        ``batch_size`` primary keys in fetch-time order (the age index), delete
        those that are still dead (a row refreshed meanwhile is kept), repeat.
        Each batch is deleted in short transactions (:func:`delete_in_short_transactions`)
        so that the write lock is never held for long: a server writing to the
        same SQLite file waits milliseconds, not seconds. On SQLite the freed
        pages are given back to the file system afterwards.
        ``progress(batch_rows, total_so_far)`` is called after each batch.
        ``endpoint`` unknown: ``KeyError`` naming the known ones.
        """
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH_SIZE}, got {batch_size}")
        alias = using or get_settings().database_alias
        at = now_ms() if now is None else now
        dead = self.using(alias).dead(policies, endpoint=endpoint, now=at)
        total = 0
        for batch in _key_batches(dead, batch_size):
            count = len(batch) if dry_run else delete_in_short_transactions(dead, batch)
            total += count
            if progress is not None:
                progress(count, total)
        if total and not dry_run:
            give_space_back(alias)
        return total

    def storage_bytes(self, using: str = "default") -> int:
        """What the persistent tier takes on disk, as the size bound counts it.

        SQLite: the pages of the file in use (the free pages are given back by
        :func:`give_space_back`). PostgreSQL: the table with its indexes and
        TOAST (space freed by a delete is reused, not returned: see
        :meth:`evict_oldest`'s caller).
        """
        connection = connections[using]
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("PRAGMA page_count")
                pages = cursor.fetchone()[0]
                cursor.execute("PRAGMA freelist_count")
                free = cursor.fetchone()[0]
                cursor.execute("PRAGMA page_size")
                return (pages - free) * cursor.fetchone()[0]
            if connection.vendor == "postgresql":
                cursor.execute("SELECT pg_total_relation_size(%s)", [self.model._meta.db_table])
                return int(cursor.fetchone()[0] or 0)
        return 0

    def evict_oldest(self, free_bytes: int, using: str = "default") -> tuple[int, int]:
        """Delete the oldest rows until about ``free_bytes`` are freed: (rows, bytes).

        Oldest by fetch time (the age index), in short transactions; a row's
        cost is its body plus :data:`ROW_OVERHEAD_BYTES`.
        """
        rows = freed = 0
        everything = self.using(using).all()
        for batch in _key_batches(everything, EVICT_PAGE, with_size=True):
            keys: list[str] = []
            for key_hash, size in batch:
                keys.append(key_hash)
                freed += size + ROW_OVERHEAD_BYTES
                if freed >= free_bytes:
                    break
            rows += delete_in_short_transactions(everything, keys)
            if freed >= free_bytes:
                break
        return rows, freed


#: The largest ``--batch-size``: a page of keys is held in memory, and the
#: databases refuse a LIMIT past a 64-bit integer (that was an IntegrityError).
MAX_BATCH_SIZE = 1_000_000
#: Rows per delete statement, and how long one may hold the write lock
#: before the next is made smaller.
DELETE_CHUNK = 500
DELETE_CHUNK_MIN = 20
DELETE_LOCK_BUDGET_S = 0.05
#: What a row costs on disk beyond its body: key, key hash twice (table and
#: primary key index), URL, the age indexes, the record header.
ROW_OVERHEAD_BYTES = 400
EVICT_PAGE = 500
#: Pages freed per ``PRAGMA incremental_vacuum`` step (each a short write).
VACUUM_STEP_PAGES = 512


def delete_in_short_transactions(rows: models.QuerySet, keys: list[str]) -> int:
    """Delete the rows of ``rows`` whose key is in ``keys``, a few hundred at a time.

    Each delete is one statement in its own transaction: on
    SQLite it holds the file's write lock only while it runs. A delete that
    took longer than :data:`DELETE_LOCK_BUDGET_S` makes the next one
    smaller, and after each one the lock is left free for at least as long
    as it was held, so that other writers get in between.
    """
    total, start, chunk = 0, 0, DELETE_CHUNK
    while start < len(keys):
        part = keys[start : start + chunk]
        began = time.monotonic()
        # One DELETE statement in a transaction of its own (CacheEntry has no
        # relations and no delete signals: Django deletes it in one statement).
        total += rows.filter(key_hash__in=part).delete()[0]
        held = time.monotonic() - began
        start += len(part)
        if held > DELETE_LOCK_BUDGET_S:
            chunk = max(DELETE_CHUNK_MIN, chunk // 2)
        elif held < DELETE_LOCK_BUDGET_S / 4:
            chunk = min(DELETE_CHUNK, chunk * 2)
        if start < len(keys):
            time.sleep(min(held, 0.5))
    return total


def give_space_back(using: str) -> int:
    """On SQLite, return free pages to the file system, a few at a time; pages freed.

    Works on a file in ``auto_vacuum = INCREMENTAL`` mode (migration 0002
    switches an existing file once); on any other file, and on other
    databases, it does nothing (PostgreSQL reuses the space of deleted rows).
    """
    connection = connections[using]
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return 0
    freed = 0
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA auto_vacuum")
        if cursor.fetchone()[0] != 2:  # 2: INCREMENTAL
            return 0
        last = None
        while True:
            cursor.execute("PRAGMA freelist_count")
            free = cursor.fetchone()[0]
            if not free or free == last:  # done, or another writer keeps freeing
                break
            if last is not None:
                freed += last - free
            last = free
            # Through sqlite3's executescript: the pragma frees one page per
            # step, and ``execute`` steps a statement without results only once.
            connection.connection.executescript(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})")
            time.sleep(0.001)  # let another writer in
        if last is not None:
            freed += last - free
            # In WAL mode the file shrinks at a checkpoint; a passive one waits for nobody.
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return freed


def _key_batches(
    rows: models.QuerySet, size: int, *, with_size: bool = False
) -> Iterator[list[Any]]:
    """Primary keys of ``rows`` in batches, oldest first, by keyset pagination
    (with ``with_size``: ``(key_hash, size)`` pairs).

    Keyset (not offset) pagination: each batch starts after the last key seen,
    so a batch costs the same however far along it is, and a dry run, which
    deletes nothing, still moves on.
    """
    after: tuple[int, str] | None = None
    columns = ("fetched_at_ms", "key_hash", "size") if with_size else ("fetched_at_ms", "key_hash")
    while True:
        page = rows.order_by("fetched_at_ms", "key_hash")
        if after is not None:
            page = page.filter(
                Q(fetched_at_ms__gt=after[0]) | Q(fetched_at_ms=after[0], key_hash__gt=after[1])
            )
        keys = list(page.values_list(*columns)[:size])
        if not keys:
            return
        if with_size:
            yield [(key_hash, size_) for _, key_hash, size_ in keys]
        else:
            yield [key_hash for _, key_hash in keys]
        if len(keys) < size:
            return
        after = keys[-1][0], keys[-1][1]


class CacheEntry(models.Model):
    """One cached upstream answer. ``key_hash`` is its identity in every tier."""

    key_hash = models.CharField(primary_key=True, max_length=32, editable=False)
    key = models.TextField(help_text="readable key: endpoint and cache key")
    endpoint = models.CharField(max_length=64)
    name = models.CharField(max_length=255, db_index=True, help_text="single-flight name")
    status = models.PositiveSmallIntegerField(help_text="upstream status: 200, or 404")
    body = models.BinaryField()
    content_type = models.CharField(max_length=100)
    fetched_at_ms = models.BigIntegerField(help_text="when the upstream answered, epoch ms")
    size = models.PositiveIntegerField(help_text="body size in bytes")
    params = models.TextField(
        blank=True, help_text="the endpoint's parameters it came from: how a refresh repeats it"
    )
    upstream_etag = models.CharField(max_length=256, blank=True, default="")
    upstream_modified = models.CharField(max_length=256, blank=True, default="")
    tags = models.TextField(blank=True, default="", help_text="labels for invalidation")

    objects = CacheEntryManager()

    class Meta:
        verbose_name = "cache entry"
        verbose_name_plural = "cache entries"
        indexes = [
            # purge_stale and the admin's state filter: by endpoint, then age.
            models.Index(fields=["endpoint", "fetched_at_ms"], name="coalescing_endpoint_age"),
            models.Index(fields=["fetched_at_ms"], name="coalescing_age"),
        ]

    def __str__(self) -> str:
        return self.key
