"""Helpers to validate query parameters strictly: a clear 400 for anything odd."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent
from django.http import HttpRequest

from .errors import BadRequest

QueryLists = Mapping[str, Sequence[str]]


def query_lists(request: HttpRequest) -> QueryLists:
    """The request's query parameters, each name with its values, or a 400.

    Django refuses a query of more than ``DATA_UPLOAD_MAX_NUMBER_FIELDS``
    parameters with an exception that would otherwise become a 500 or an
    HTML page; here it is a client error like any other.
    """
    try:
        return dict(request.GET.lists())
    except TooManyFieldsSent:
        limit = getattr(settings, "DATA_UPLOAD_MAX_NUMBER_FIELDS", None)
        raise BadRequest(f"too many query parameters (at most {limit})") from None


def single(query: QueryLists, name: str, pattern: re.Pattern[str], *, required: bool) -> str | None:
    """One value of ``name``, matching ``pattern`` in full; repeated is an error."""
    values = query.get(name) or []
    if len(values) > 1:
        raise BadRequest(f"{name} must be given once, got {len(values)} values")
    if not values:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    value = values[0]
    if not pattern.fullmatch(value):
        raise BadRequest(f"{name} is invalid: {describe(pattern)}")
    return value


def csv_set(
    query: QueryLists, name: str, item: re.Pattern[str], *, max_items: int
) -> tuple[str, ...]:
    """A comma-separated list: sorted, duplicates dropped; absent or empty is ()."""
    raw = single(query, name, re.compile(r".*", re.DOTALL), required=False)
    if not raw:
        return ()
    items = raw.split(",")
    for value in items:
        if not item.fullmatch(value):
            shown = "an empty item" if value == "" else "an invalid item"
            raise BadRequest(f"{name} has {shown}: each item {describe(item)}")
    unique = sorted(set(items))
    if len(unique) > max_items:
        raise BadRequest(f"{name} has {len(unique)} distinct items, at most {max_items} allowed")
    return tuple(unique)


def describe(pattern: re.Pattern[str]) -> str:
    return f"must match {pattern.pattern}"
