"""``manage.py purge_stale``: delete cache entries past every window; the manager does the work.

Safe to run on a schedule next to a server: rows go in short transactions
and on SQLite the freed space is given back to the file system.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from coalescing import registry
from coalescing.conf import get_settings
from coalescing.models import MAX_BATCH_SIZE, CacheEntry
from coalescing.policies import current_policies


class Command(BaseCommand):
    help = (
        "Delete persistent cache entries that can no longer be served in any way "
        "(windows from the settings in force now), in batches."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")
        parser.add_argument("--endpoint", help="only this endpoint's entries")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help=f"rows selected at a time, 1 to {MAX_BATCH_SIZE} (each deleted in short "
            "transactions of a few hundred rows, so a server is never held up for long)",
        )
        parser.add_argument("--database", help="database alias (default: the cache's)")

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run, batch_size = options["dry_run"], options["batch_size"]
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise CommandError(
                f"--batch-size must be at least 1 and at most {MAX_BATCH_SIZE}, got {batch_size}"
            )
        endpoint, using = options["endpoint"], options["database"] or get_settings().database_alias
        if endpoint is not None:
            try:
                registry.get(endpoint)
            except KeyError as exc:
                raise CommandError(exc.args[0]) from None
        if using not in connections:
            raise CommandError(f"unknown database alias {using!r}")
        verb = "Would purge" if dry_run else "Purged"

        def progress(count: int, total: int) -> None:
            if options["verbosity"] >= 2:
                self.stdout.write(f"{verb} {count} in this batch, {total} so far")

        total = CacheEntry.objects.purge_stale(
            current_policies(),
            using=using,
            endpoint=endpoint,
            batch_size=batch_size,
            dry_run=dry_run,
            progress=progress,
        )
        self.stdout.write(f"{verb} {total} stale cache entries.")
