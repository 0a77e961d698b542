"""Validating an endpoint's parameters strictly: a clear 400 for anything odd.

Two ways: a django-ninja ``Schema`` declared on the endpoint (:func:`parse_schema`,
and :func:`openapi_parameters` for ``/docs`` from the same declaration), or
helpers for a hand-written ``parse`` (:func:`single`, :func:`csv_set`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent
from django.http import HttpRequest
from pydantic import BaseModel, ValidationError

from .errors import BadRequest

__all__ = [
    "QueryLists",
    "csv_set",
    "describe",
    "openapi_parameters",
    "parse_schema",
    "query_lists",
    "single",
]

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


def parse_schema(schema: type[BaseModel], query: QueryLists) -> BaseModel:
    """Validate ``query`` against a declared ``Schema``: each field a parameter, given once.

    A parameter is looked up by its alias (the name a client sends); unknown
    parameters are ignored; the first error becomes the 400's detail, naming
    the parameter.
    """
    data: dict[str, str] = {}
    for name, field in schema.model_fields.items():
        alias = field.alias or name
        values = query.get(alias) or []
        if len(values) > 1:
            raise BadRequest(f"{alias} must be given once, got {len(values)} values")
        if values:
            data[alias] = values[0]
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "parameters"
        raise BadRequest(f"{where}: {error['msg']}") from None


def openapi_parameters(schema: type[BaseModel], path_names: Iterable[str]) -> list[dict[str, Any]]:
    """The OpenAPI parameter objects of a declared ``Schema``, from its JSON schema."""
    json_schema = schema.model_json_schema(by_alias=True)
    required = set(json_schema.get("required", ()))
    in_path = set(path_names)
    parameters = []
    for alias, prop in json_schema.get("properties", {}).items():
        prop = dict(prop)
        prop.pop("title", None)
        parameter: dict[str, Any] = {
            "name": alias,
            "in": "path" if alias in in_path else "query",
            "required": alias in required or alias in in_path,
            "schema": prop,
        }
        if "description" in prop:
            parameter["description"] = prop.pop("description")
        parameters.append(parameter)
    return parameters


#: The longest parameters an entry keeps for its refreshes; longer, it keeps
#: none and is refreshed by its next request instead.
MAX_STORED_PARAMS = 8192


def stored_params(query: QueryLists, varied: str | None) -> str:
    """What an entry keeps of its lookup, so that a refresh can make it again."""
    data = {"q": {name: list(values) for name, values in sorted(query.items())}, "v": varied}
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= MAX_STORED_PARAMS else ""


def parse_stored_params(text: str) -> tuple[QueryLists, str | None]:
    """The query and the ``vary`` value :func:`stored_params` kept."""
    try:
        data = json.loads(text)
        query = {str(k): [str(v) for v in values] for k, values in data["q"].items()}
        varied = data.get("v")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadRequest("this entry keeps no parameters to refresh it from") from None
    return query, None if varied is None else str(varied)
