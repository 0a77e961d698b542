"""What the peers share: the same parameters, the same upstream call, a health URL."""

from __future__ import annotations

import re

import requests
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from requests.adapters import HTTPAdapter

PRODUCT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FIELD = re.compile(r"[A-Za-z0-9_]{1,64}")

_session = requests.Session()
_session.trust_env = False
_session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=1024, max_retries=0))


class UpstreamFailed(Exception):
    pass


def json_response(body: bytes, status: int = 200) -> HttpResponse:
    response = HttpResponse(body, status=status, content_type="application/json")
    response["Content-Length"] = str(len(body))
    return response


def bad_request(detail: str) -> HttpResponse:
    return json_response(b'{"detail":"%s"}' % detail.encode(), 400)


def params(request: HttpRequest) -> tuple[str, str] | None:
    """(productId, sorted fields) as our endpoint validates them, or None."""
    product_id = request.GET.get("productId", "")
    if not PRODUCT_ID.fullmatch(product_id):
        return None
    raw = request.GET.get("fields", "")
    fields = sorted({f for f in raw.split(",") if f}) if raw else []
    if any(not FIELD.fullmatch(f) for f in fields):
        return None
    return product_id, ",".join(fields)


def fetch(product_id: str, fields: str) -> tuple[int, bytes]:
    """One upstream call, as a Django user writes it with requests."""
    url = f"{settings.PRODUCT_API_BASE.rstrip('/')}/products/{product_id}"
    try:
        response = _session.get(url, params={"fields": fields} if fields else None, timeout=5)
    except requests.RequestException as exc:
        raise UpstreamFailed(str(exc)) from exc
    if response.status_code not in (200, 404):
        raise UpstreamFailed(f"upstream answered {response.status_code}")
    return response.status_code, response.content


def health(request: HttpRequest) -> HttpResponse:
    return json_response(b'{"ok":true}')
