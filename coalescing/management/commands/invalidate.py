"""``manage.py invalidate ENDPOINT param=value ... [--refresh]``.

Removes one entry from every tier and from the memory of every process that
shares the Redis; with ``--refresh``, calls the upstream for it instead, and
exits non-zero when that call failed, even if a stale value is still served.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from coalescing import operations, registry
from coalescing.errors import BadRequest


class Command(BaseCommand):
    help = "Invalidate (or refresh) the cache entry of an endpoint's parameters, everywhere."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("endpoint", help=f"one of: {', '.join(registry.names())}")
        parser.add_argument("params", nargs="*", help="query parameters, as name=value")
        parser.add_argument("--refresh", action="store_true", help="fetch it again now")

    def handle(self, *args, endpoint: str, params: list[str], refresh: bool, **options) -> None:
        query: dict[str, list[str]] = {}
        for item in params:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise CommandError(f"parameters are name=value, got {item!r}")
            query.setdefault(name, []).append(value)
        try:
            if refresh:
                answer = operations.refresh(endpoint, **query)
                if answer.error is not None or answer.entry is None:
                    kept = " (the stale value is still served)" if answer.entry else ""
                    raise CommandError(f"refresh failed: {answer.error}{kept}")
                self.stdout.write(f"Refreshed {answer.entry.key} ({answer.entry.status}).")
            else:
                key_hash = operations.invalidate(endpoint, **query)
                self.stdout.write(f"Invalidated {endpoint} entry {key_hash}.")
        except KeyError as exc:
            raise CommandError(str(exc.args[0])) from exc
        except BadRequest as exc:
            raise CommandError(f"bad parameters: {exc.detail}") from exc
        finally:
            from coalescing.runtime import get_coalescer

            get_coalescer().flush()
