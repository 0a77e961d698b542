"""The built-in demo upstream: a slow product API, so coalescing can be seen.

Served by the same server under ``/demo/`` and the default of
``PRODUCT_API_BASE``. Data is made up from the id, the same on every call;
ids starting with ``MISSING`` do not exist (404). ``stock`` wants the bearer
token of ``PRODUCT_API_TOKEN`` and a POSTed JSON query, as partner APIs do.
"""

from __future__ import annotations

import hashlib
import json
import time

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

#: Latency of every demo answer, so that concurrent requests overlap.
LATENCY_S = 0.05


def _product(product_id: str) -> dict[str, object]:
    digest = hashlib.sha256(product_id.encode()).digest()
    return {
        "id": product_id,
        "name": f"Product {product_id}",
        "price": round(1 + int.from_bytes(digest[:2], "big") / 100, 2),
        "currency": "EUR",
        "stock": digest[2],
        "description": f"A fine product called {product_id}.",
    }


def _json(data: object, status: int = 200) -> HttpResponse:
    return HttpResponse(json.dumps(data), status=status, content_type="application/json")


def product(request: HttpRequest, product_id: str) -> HttpResponse:
    time.sleep(LATENCY_S)  # cooperative once gevent has patched time
    if product_id.startswith("MISSING"):
        return JsonResponse({"detail": "no such product"}, status=404)
    data = _product(product_id)
    wanted = [f for f in request.GET.get("fields", "").split(",") if f]
    if wanted:
        data = {"id": product_id, **{f: data[f] for f in wanted if f in data}}
    return _json(data)


def price(request: HttpRequest, region: str, product_id: str) -> HttpResponse:
    time.sleep(LATENCY_S)
    if product_id.startswith("MISSING"):
        return JsonResponse({"detail": "no such product"}, status=404)
    base = _product(product_id)["price"]
    factor = 1 + (hashlib.sha256(region.encode()).digest()[0] % 20) / 100
    return _json({"id": product_id, "region": region, "price": round(base * factor, 2)})


@csrf_exempt
def stock(request: HttpRequest) -> HttpResponse:
    """A partner's stock API: a POST read with a JSON body, behind a bearer token."""
    time.sleep(LATENCY_S)
    if request.headers.get("Authorization") != f"Bearer {settings.PRODUCT_API_TOKEN}":
        return JsonResponse({"detail": "unauthorized"}, status=401)
    if request.method != "POST":
        return JsonResponse({"detail": "POST a query"}, status=405)
    try:
        query = json.loads(request.body)
        product_id, tenant = str(query["productId"]), str(query.get("tenant") or "public")
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"detail": "a JSON body with productId"}, status=400)
    count = hashlib.sha256(f"{tenant}/{product_id}".encode()).digest()[0]
    return _json({"id": product_id, "tenant": tenant, "in_stock": count})


def rate(request: HttpRequest, currency: str) -> HttpResponse:
    time.sleep(LATENCY_S)
    factor = 0.5 + hashlib.sha256(currency.encode()).digest()[0] / 128
    return _json({"from": "EUR", "to": currency, "rate": round(factor, 4)})


urlpatterns = [
    path("products/<str:product_id>", product),
    path("prices/<str:region>/<str:product_id>", price),
    path("stock", stock),
    path("rates/<str:currency>", rate),
]
