"""The admin of cache entries: see what is cached, refresh or delete it, watch the counters.

Made for a million rows: no ``count(*)`` over the table (a capped count and
``show_full_result_count = False``), no ``SELECT DISTINCT`` for the endpoint
filter (the names come from the registry), no facets, the bodies left out of
the list, and the default order (newest first) served by the age index. The
state filter is one query on ``status`` and ``fetched_at_ms`` with each
endpoint's windows (:func:`coalescing.models.state_q`).

Entries come from the upstream only: nothing can be added or edited here.
Deleting goes through the invalidation path, so memory tiers forget too.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Case, CharField, Count, QuerySet, Sum, Value, When
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.text import Truncator

from . import metrics, operations, registry
from .conf import get_settings
from .entry import Entry
from .models import STATES, CacheEntry, listed_state, row_state, state_q
from .policies import current_policies
from .runtime import get_coalescer

#: At most this many entries are refreshed by one action: each is an upstream call.
REFRESH_LIMIT = 100
#: A search matching at most this many entries is narrowed to their keys (see
#: ``get_search_results``).
SEARCH_PIN_LIMIT = 1000
#: The body shown on an entry's page is cut after this many characters.
BODY_DISPLAY_LIMIT = 200_000

BADGE_COLOURS = {
    "fresh": "#1b7f3b",
    "stale": "#a15c00",
    "expired": "#5f6368",
    "negative": "#6a1b9a",
}
BADGE_TITLES = {
    "fresh": "served as is",
    "stale": "served at once while one background refresh runs",
    "expired": "fetched again on the next request; kept as a fallback on upstream errors",
    "negative": "a cached upstream 404",
    "dead": "past every window in which it could be served: purge_stale deletes it",
}


class CappedCountPaginator(Paginator):
    """Counts at most ``cap + 1`` rows, so a page costs the same on a million rows.

    Past the cap the list says "more than N" and pages run up to the cap;
    search or filter to reach older rows (or see the summary for totals).
    """

    cap = 10_000

    @cached_property
    def count(self) -> int:
        return self.object_list.order_by()[: self.cap + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.cap


class EndpointFilter(admin.SimpleListFilter):
    title = "endpoint"
    parameter_name = "endpoint"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in registry.names()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(endpoint=value) if value else queryset


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(state, state) for state in STATES]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.in_state(value, current_policies()) if value in STATES else queryset


def entry_state(obj: CacheEntry, now: float | None = None) -> str:
    """``fresh``, ``stale``, ``expired``, ``negative`` or ``dead``, by the endpoint's windows."""
    entry = Entry(
        key_hash=obj.key_hash,
        key=obj.key,
        endpoint=obj.endpoint,
        name=obj.name,
        status=obj.status,
        body=b"",
        content_type="",
        fetched_at=obj.fetched_at_ms / 1000.0,
    )
    policy = current_policies().of(obj.endpoint)
    state = policy.state(entry, time.time() if now is None else now)
    return row_state(state, entry.negative)


def format_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def pretty_body(body: bytes) -> str:
    """JSON indented for reading; anything else as text."""
    try:
        text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        text = bytes(body).decode("utf-8", errors="replace")
    if len(text) > BODY_DISPLAY_LIMIT:
        text = text[:BODY_DISPLAY_LIMIT] + f"\n... (cut: {len(body)} bytes in all)"
    return text


def _keys(queryset: QuerySet, size: int = 500) -> Iterator[tuple[str, str]]:
    """``(key hash, single-flight name)`` of ``queryset``'s rows, in batches (keyset pagination)."""
    after: str | None = None
    while True:
        page = queryset.order_by("pk")
        if after is not None:
            page = page.filter(pk__gt=after)
        keys = list(page.values_list("pk", "name")[:size])
        yield from keys
        if len(keys) < size:
            return
        after = keys[-1][0]


@admin.register(CacheEntry)
class CacheEntryAdmin(admin.ModelAdmin):
    list_display = ("short_key", "endpoint", "name", "status", "state", "age", "size", "fetched")
    list_display_links = ("short_key",)
    list_filter = (EndpointFilter, StateFilter)
    search_fields = ("=key_hash", "=name", "key", "tags")
    search_help_text = "A key hash (from the logs), a single-flight name, or part of a key."
    ordering = ("-fetched_at_ms",)
    list_per_page = 100
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = ("refresh_now", "soft_purge_tags", "delete_entries")
    fields = (
        "key",
        "key_hash",
        "endpoint",
        "name",
        "status",
        "state",
        "age",
        "fetched",
        "size",
        "content_type",
        "params",
        "tags",
        "pretty_body",
    )
    readonly_fields = fields

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        return super().changelist_view(request, {"title": "Cache entries", **(extra_context or {})})

    # -- what may be done ------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # entries come from the upstream only

    def has_change_permission(self, request: HttpRequest, obj: CacheEntry | None = None) -> bool:
        # The list's actions need "change"; an entry's page is read-only.
        return obj is None and super().has_change_permission(request)

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        # ``action_location`` is Django 6.1's (where the actions are shown); 5.2 has none.
        if action_location is None:
            actions = super().get_actions(request)
        else:
            actions = super().get_actions(request, action_location=action_location)
        actions.pop("delete_selected", None)  # it would skip the memory tiers
        return actions

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).using(get_settings().database_alias)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type:
        base = super().get_changelist(request, **kwargs)

        class CacheEntryChangeList(base):  # type: ignore[misc, valid-type]
            def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
                # Up to a megabyte a body: the list has no use for them.
                return super().get_queryset(request, exclude_parameters).defer("body")

        return CacheEntryChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Search as usual, then, if few rows match, by their primary keys.

        A substring search is a scan. Left to itself, a database without
        statistics (SQLite) walks the age index newest first to fill a page
        and looks each row up: fine when many rows match, seconds on a
        million rows when a productId matches three. One scan for the
        matching keys, then a page by primary key, is fast either way.
        """
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        if not search_term.strip():
            return found, may_have_duplicates
        keys = list(found.order_by().values_list("pk", flat=True)[: SEARCH_PIN_LIMIT + 1])
        if len(keys) > SEARCH_PIN_LIMIT:
            return found, may_have_duplicates
        return queryset.filter(pk__in=keys), False

    # -- columns -----------------------------------------------------------------

    @admin.display(description="key", ordering="key")
    def short_key(self, obj: CacheEntry) -> str:
        return Truncator(obj.key).chars(80)

    @admin.display(description="state")
    def state(self, obj: CacheEntry) -> str:
        state = entry_state(obj)
        shown = listed_state(state)
        return format_html(
            '<span title="{}" style="display:inline-block;padding:1px 8px;border-radius:9px;'
            'color:#fff;background:{};font-weight:600;font-size:11px">{}</span>{}',
            BADGE_TITLES[state],
            BADGE_COLOURS[shown],
            shown,
            format_html(' <small title="{}">purgeable</small>', BADGE_TITLES[state])
            if state == "dead"
            else "",
        )

    @admin.display(description="age", ordering="-fetched_at_ms")
    def age(self, obj: CacheEntry) -> str:
        age = format_age(time.time() - obj.fetched_at_ms / 1000.0)
        return format_html('<span style="white-space:nowrap">{}</span>', age)

    @admin.display(description="last fetched", ordering="fetched_at_ms")
    def fetched(self, obj: CacheEntry) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(obj.fetched_at_ms / 1000.0, tz=datetime.UTC)

    @admin.display(description="body")
    def pretty_body(self, obj: CacheEntry) -> str:
        return format_html(
            '<pre style="max-height:40em;overflow:auto;white-space:pre-wrap;margin:0">{}</pre>',
            pretty_body(obj.body),
        )

    # -- actions -----------------------------------------------------------------

    @admin.action(description="Refresh now (one upstream call each)", permissions=["change"])
    def refresh_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        keys = list(queryset.order_by().values_list("pk", flat=True)[: REFRESH_LIMIT + 1])
        if len(keys) > REFRESH_LIMIT:
            self.message_user(
                request,
                f"Only the first {REFRESH_LIMIT} entries are refreshed: each is an upstream call.",
                messages.WARNING,
            )
            keys = keys[:REFRESH_LIMIT]
        refreshed, failures = 0, []
        for key_hash in keys:
            try:
                answer = operations.refresh_key(key_hash)
            except KeyError as exc:  # its endpoint is no longer registered
                failures.append(f"{key_hash}: {exc.args[0]}")
                continue
            if answer is None:
                failures.append(f"{key_hash}: gone, or it keeps no parameters to repeat")
            elif answer.error is not None or answer.entry is None:
                failures.append(f"{key_hash}: {answer.error}")
            else:
                refreshed += 1
        get_coalescer().flush()  # so the list shows the new rows at once
        if refreshed:
            self.message_user(request, f"Refreshed {refreshed} cache entries.", messages.SUCCESS)
        if failures:
            shown = "; ".join(failures[:5]) + (" ..." if len(failures) > 5 else "")
            self.message_user(request, f"{len(failures)} not refreshed: {shown}", messages.ERROR)

    @admin.action(description="Mark stale everywhere, by their tags", permissions=["change"])
    def soft_purge_tags(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Every entry sharing a tag with the selected ones is marked stale (soft purge)."""
        tags = sorted(
            {
                t
                for tags in queryset.values_list("tags", flat=True)[:REFRESH_LIMIT]
                for t in tags.split()
            }
        )
        if not tags:
            self.message_user(request, "The selected entries have no tags.", messages.WARNING)
            return
        counts = ", ".join(f"{tag}: {operations.invalidate_tag(tag, soft=True)}" for tag in tags)
        self.message_user(request, f"Marked stale, by tag: {counts}.", messages.SUCCESS)

    @admin.action(description="Delete from every tier", permissions=["delete"])
    def delete_entries(self, request: HttpRequest, queryset: QuerySet) -> None:
        deleted = 0
        for key_hash, name in _keys(queryset):
            operations.invalidate_key(key_hash, name)
            deleted += 1
        self.message_user(request, f"Deleted {deleted} cache entries.", messages.SUCCESS)

    def delete_model(self, request: HttpRequest, obj: CacheEntry) -> None:
        operations.invalidate_key(obj.key_hash, obj.name)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for key_hash, name in _keys(queryset):
            operations.invalidate_key(key_hash, name)

    # -- the summary ---------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        summary = path(
            "summary/",
            self.admin_site.admin_view(self.summary_view),
            name="coalescing_cacheentry_summary",
        )
        return [summary, *super().get_urls()]

    def summary_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Cache summary",
            "states": STATES,
            "rows": entry_counts(),
            "chart": bar_chart(counter_bars()),
            "multiprocess": metrics.multiprocess_mode(),
        }
        return TemplateResponse(request, "admin/coalescing/cacheentry/summary.html", context)


def entry_counts() -> list[dict[str, Any]]:
    """Entries per endpoint and state: one query, a ``CASE`` per row, grouped.

    Grouped by an expression of ``endpoint``, not the bare column: SQLite
    would walk the endpoint index to save a sort and look every row up,
    seconds on a million rows; with the expression it is one plain scan and
    a sort (PostgreSQL plans either the same). Endpoints no longer registered
    keep their rows (``purge_stale`` fodder) and get a line of their own.
    """
    now, policies = round(time.time() * 1000), current_policies()
    state = Case(
        *(
            When(state_q(name, policies, now=now), then=Value(name))
            for name in ("fresh", "stale", "negative", "dead")
        ),
        default=Value("expired"),
        output_field=CharField(),
    )
    groups = (
        CacheEntry.objects.using(get_settings().database_alias)
        .annotate(state=state, group=Coalesce("endpoint", Value("")))
        .values("state", "group")
        .annotate(n=Count("pk"), bytes=Sum("size"))
        .order_by()
    )
    names = registry.names()
    table = {
        name: {"endpoint": name, "registered": True, "purgeable": 0, "total": 0, "bytes": 0}
        for name in names
    }
    for group in groups:
        row = table.setdefault(
            group["group"],
            {"endpoint": group["group"], "registered": False, "purgeable": 0, "total": 0},
        )
        row.setdefault("bytes", 0)
        shown = listed_state(group["state"])  # as the filter does
        row[shown] = row.get(shown, 0) + group["n"]
        row["purgeable"] += group["n"] if group["state"] == "dead" else 0
        row["total"] += group["n"]
        row["bytes"] += group["bytes"] or 0
    rows = [table[name] for name in names]
    rows += [row for name, row in sorted(table.items()) if name not in names]
    for row in rows:
        row["by_state"] = [row.get(name, 0) for name in STATES]
    return rows


def counter_bars() -> list[tuple[str, str, float]]:
    """``(group, label, value)`` for the chart, from the counters of :mod:`metrics`."""
    t = metrics.totals()
    calls = t["coalescing_upstream_calls"]
    ok = calls["status=200"] + calls["status=404"]
    bars: list[tuple[str, str, float]] = []
    for outcome in ("HIT", "STALE", "MISS", "COALESCED", "ERROR"):
        bars.append(("answers", outcome.lower(), t["coalescing_requests"][f"cache={outcome}"]))
    for tier in ("memory", "redis", "db"):
        bars.append(("hits by tier", tier, t["coalescing_tier_hits"][f"tier={tier}"]))
    bars += [
        ("coalescing", "coalesced waiters", t["coalescing_coalesced_waiters"][""]),
        ("coalescing", "stale served", t["coalescing_stale_served"][""]),
        ("coalescing", "background refreshes", t["coalescing_background_refreshes"][""]),
        ("coalescing", "lease takeovers", t["coalescing_lease_takeovers"][""]),
        ("coalescing", "wait timeouts", t["coalescing_wait_timeouts"][""]),
        ("upstream", "calls", calls[""]),
        ("upstream", "errors", calls[""] - ok),
        ("tiers", "tier errors", t["coalescing_tier_errors"][""]),
    ]
    return bars


def bar_chart(bars: list[tuple[str, str, float]], width: int = 640) -> dict[str, Any]:
    """The geometry of a horizontal bar chart, drawn as SVG by the template."""
    label_w, value_w, row_h, gap = 170, 70, 22, 14
    bar_room = width - label_w - value_w
    top = max((value for _, _, value in bars), default=0) or 1
    rows, y, group = [], 0, None
    for name, label, value in bars:
        if name != group:
            y += gap if group is not None else 0
            rows.append({"heading": name, "y": y + 14})
            y += row_h
            group = name
        rows.append(
            {
                "label": label,
                "value": f"{value:.0f}",
                "y": y,
                "text_y": y + 15,
                "bar_w": max(1 if value else 0, round(bar_room * value / top)),
                "bar_x": label_w,
                "value_x": label_w + max(1 if value else 0, round(bar_room * value / top)) + 6,
            }
        )
        y += row_h
    return {"rows": rows, "width": width, "height": y + 4, "label_x": label_w - 8}
