"""``manage.py invalidate ENDPOINT param=value ... [--refresh]`` and
``manage.py invalidate --tag TAG [--hard]``.

Removes one entry from every tier and from the memory of every process that
shares the Redis; with ``--refresh``, calls the upstream for it instead, and
exits non-zero when that call failed, even if a stale value is still served.
With ``--tag``, every entry of the tag is marked stale everywhere (served
while one refresh each runs), or removed with ``--hard``.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from coalescing import operations, registry
from coalescing.errors import BadRequest


class Command(BaseCommand):
    help = "Invalidate (or refresh) the cache entry of an endpoint's parameters, or a tag's."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("endpoint", nargs="?", help=f"one of: {', '.join(registry.names())}")
        parser.add_argument("params", nargs="*", help="query parameters, as name=value")
        parser.add_argument("--refresh", action="store_true", help="fetch it again now")
        parser.add_argument("--tag", help="every entry labelled TAG (soft: marked stale)")
        parser.add_argument("--hard", action="store_true", help="with --tag: remove them")

    def handle(self, *args, endpoint, params, refresh, tag, hard, **options) -> None:
        from coalescing.runtime import get_coalescer

        try:
            if tag is not None:
                self._tag(tag, endpoint, params, refresh, hard)
            elif endpoint is None:
                raise CommandError("give an endpoint and its parameters, or --tag TAG")
            elif hard:
                raise CommandError("--hard goes with --tag")
            else:
                self._entry(endpoint, params, refresh)
        except KeyError as exc:
            raise CommandError(str(exc.args[0])) from exc
        except BadRequest as exc:
            raise CommandError(f"bad parameters: {exc.detail}") from exc
        finally:
            get_coalescer().flush()

    def _tag(self, tag: str, endpoint, params, refresh: bool, hard: bool) -> None:
        if endpoint is not None or params or refresh:
            raise CommandError("--tag takes no endpoint, parameters or --refresh")
        try:
            count = operations.invalidate_tag(tag, soft=not hard)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        done = "Removed" if hard else "Marked stale"
        self.stdout.write(f"{done} {count} cache entries tagged {tag}.")

    def _entry(self, endpoint: str, params: list[str], refresh: bool) -> None:
        query: dict[str, list[str]] = {}
        for item in params:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise CommandError(f"parameters are name=value, got {item!r}")
            query.setdefault(name, []).append(value)
        if refresh:
            answer = operations.refresh(endpoint, **query)
            if answer.error is not None or answer.entry is None:
                kept = " (the stale value is still served)" if answer.entry else ""
                raise CommandError(f"refresh failed: {answer.error}{kept}")
            self.stdout.write(f"Refreshed {answer.entry.key} ({answer.entry.status}).")
        else:
            key_hash = operations.invalidate(endpoint, **query)
            self.stdout.write(f"Invalidated {endpoint} entry {key_hash}.")
