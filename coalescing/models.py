"""The persistent tier's rows. The manager owns every query on them."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connections, models

from .entry import Entry


class CacheEntryManager(models.Manager["CacheEntry"]):
    def get_entry(self, key_hash: str, using: str = "default") -> Entry | None:
        row = (
            self.using(using)
            .filter(key_hash=key_hash)
            .values_list(
                "key",
                "endpoint",
                "name",
                "status",
                "body",
                "content_type",
                "fetched_at_ms",
                "upstream_url",
            )
            .first()
        )
        if row is None:
            return None
        key, endpoint, name, status, body, content_type, fetched_at_ms, upstream_url = row
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
        columns = [
            "key_hash",
            "key",
            "endpoint",
            "name",
            "status",
            "body",
            "content_type",
            "fetched_at_ms",
            "size",
            "upstream_url",
        ]
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
                len(e.body),
                e.upstream_url,
            ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)

    def delete_key(self, key_hash: str, using: str = "default") -> int:
        deleted, _ = self.using(using).filter(key_hash=key_hash).delete()
        return deleted


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
