"""The persistent tier's rows. The manager owns every query on them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from django.db import connections, models
from django.db.models import Q

from . import registry
from .conf import get_settings
from .entry import Entry, Policy

#: The values of the admin's ``state`` filter (CONTRACT.md). ``in_state`` also
#: knows ``dead``: past every window in which the entry could be served.
STATES = ("fresh", "stale", "expired", "negative")
NEGATIVE_STATUS = 404


def default_policy() -> Policy:
    """The windows of the settings, for rows of endpoints no longer registered."""
    conf = get_settings()
    return Policy(
        fresh_ms=conf.fresh_ttl_ms,
        stale_ms=max(conf.fresh_ttl_ms, conf.stale_ttl_ms),
        stale_if_error_ms=conf.stale_if_error_ms,
        negative_ms=conf.negative_ttl_ms,
    )


def endpoint_policy(name: str) -> Policy:
    """The windows of the endpoint ``name``, or the settings' for an unknown name."""
    try:
        return registry.get(name)().policy()
    except KeyError:
        return default_policy()


def policy_groups(endpoint: str | None = None) -> list[tuple[Q, Policy]]:
    """Rows partitioned by the policy that applies to them: ``(which rows, policy)``.

    Endpoints whose windows are the settings' fall into one group with every
    unregistered endpoint, so with no per-endpoint overrides the state
    queries carry no condition on ``endpoint`` at all and use the age index.
    With ``endpoint``, only that endpoint's rows (``KeyError`` if unknown).
    """
    if endpoint is not None:
        return [(Q(endpoint=endpoint), registry.get(endpoint)().policy())]
    default = default_policy()
    special: dict[Policy, list[str]] = {}
    for name in registry.names():
        policy = registry.get(name)().policy()
        if policy != default:
            special.setdefault(policy, []).append(name)
    groups = [(Q(endpoint__in=names), policy) for policy, names in special.items()]
    overridden = [name for names in special.values() for name in names]
    groups.append((~Q(endpoint__in=overridden) if overridden else Q(), default))
    return groups


def _state_condition(state: str, policy: Policy, at_ms: int) -> Q:
    """Rows of one policy in ``state``, as conditions on status and fetch time.

    An age below a window ``w`` is ``fetched_at_ms > at_ms - w``.
    """
    negative = Q(status=NEGATIVE_STATUS)
    positive = ~negative

    def age_below(window_ms: int) -> Q:
        return Q(fetched_at_ms__gt=at_ms - window_ms)

    if state == "fresh":
        return positive & age_below(policy.fresh_ms)
    if state == "stale":
        return positive & ~age_below(policy.fresh_ms) & age_below(policy.stale_ms)
    if state == "expired":  # not servable as is, including rows past every window
        return (positive & ~age_below(policy.stale_ms)) | (
            negative & ~age_below(policy.negative_ms)
        )
    if state == "negative":
        return negative & age_below(policy.negative_ms)
    if state == "dead":
        lifetime = max(policy.stale_ms, policy.stale_if_error_ms)
        return (positive & ~age_below(lifetime)) | (negative & ~age_below(policy.negative_ms))
    raise ValueError(f"unknown state {state!r} (known: {', '.join((*STATES, 'dead'))})")


def now_ms() -> int:
    return round(time.time() * 1000)


def state_q(state: str, *, endpoint: str | None = None, now: int | None = None) -> Q:
    """The condition of rows in ``state`` (``fresh``, ``stale``, ``expired``,
    ``negative`` or ``dead``), each endpoint with its own windows.

    Conditions on ``status`` and ``fetched_at_ms`` only, so the database does
    the work on its age indexes; usable in ``filter()`` and in ``Count(filter=)``.
    """
    at = now_ms() if now is None else now
    condition = Q()
    for i, (rows, policy) in enumerate(policy_groups(endpoint)):
        part = rows & _state_condition(state, policy, at)
        condition = part if i == 0 else condition | part
    return condition


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
    "upstream_url",
)


class CacheEntryQuerySet(models.QuerySet["CacheEntry"]):
    def in_state(
        self, state: str, *, endpoint: str | None = None, now: int | None = None
    ) -> CacheEntryQuerySet:
        """Rows in ``state``: one query, see :func:`state_q`."""
        return self.filter(state_q(state, endpoint=endpoint, now=now))

    def dead(self, *, endpoint: str | None = None, now: int | None = None) -> CacheEntryQuerySet:
        """Rows past every window in which they could still be served."""
        return self.in_state("dead", endpoint=endpoint, now=now)


class CacheEntryManager(models.Manager.from_queryset(CacheEntryQuerySet)):  # type: ignore[misc]
    def get_entry(self, key_hash: str, using: str = "default") -> Entry | None:
        # ``[:1]``, not ``.first()``: that adds an ORDER BY to a lookup by primary key.
        found = self.using(using).filter(key_hash=key_hash)
        rows = list(found.values_list(*_ENTRY_COLUMNS[1:])[:1])
        if not rows:
            return None
        key, endpoint, name, status, body, content_type, fetched_at_ms, upstream_url = rows[0]
        return Entry(
            key_hash=key_hash,
            key=key,
            endpoint=endpoint,
            name=name,
            status=status,
            body=bytes(body),
            content_type=content_type,
            fetched_at=fetched_at_ms / 1000.0,
            upstream_url=upstream_url,
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
                e.upstream_url,
                len(e.body),
            ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)

    def delete_key(self, key_hash: str, using: str = "default") -> int:
        deleted, _ = self.using(using).filter(key_hash=key_hash).delete()
        return deleted

    def purge_stale(
        self,
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
        ``progress(batch_rows, total_so_far)`` is called after each batch.
        ``endpoint`` unknown: ``KeyError`` naming the known ones.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        alias = using or get_settings().database_alias
        at = now_ms() if now is None else now
        dead = self.using(alias).dead(endpoint=endpoint, now=at)
        total = 0
        for batch in _key_batches(dead, batch_size):
            if dry_run:
                count = len(batch)
            else:
                count, _ = dead.filter(key_hash__in=batch).delete()
            total += count
            if progress is not None:
                progress(count, total)
        return total


def _key_batches(rows: models.QuerySet, size: int) -> Iterator[list[str]]:
    """Primary keys of ``rows`` in batches, oldest first, by keyset pagination.

    Keyset (not offset) pagination: each batch starts after the last key seen,
    so a batch costs the same however far along it is, and a dry run, which
    deletes nothing, still moves on.
    """
    after: tuple[int, str] | None = None
    while True:
        page = rows.order_by("fetched_at_ms", "key_hash")
        if after is not None:
            page = page.filter(
                Q(fetched_at_ms__gt=after[0]) | Q(fetched_at_ms=after[0], key_hash__gt=after[1])
            )
        keys = list(page.values_list("fetched_at_ms", "key_hash")[:size])
        if not keys:
            return
        yield [key_hash for _, key_hash in keys]
        if len(keys) < size:
            return
        after = keys[-1]


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
    upstream_url = models.TextField(blank=True, help_text="the upstream call that produced it")

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
