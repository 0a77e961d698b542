"""The built-in demo upstream: a slow product API, so coalescing can be seen.

Served by the same server under ``/demo/`` and the default of
``PRODUCT_API_BASE``. Data is made up from the id, the same on every call;
ids starting with ``MISSING`` do not exist (404).
"""

from __future__ import annotations

import hashlib
import json
import time

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

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


urlpatterns = [
    path("products/<str:product_id>", product),
    path("prices/<str:region>/<str:product_id>", price),
]
