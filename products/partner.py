"""The third example: an authenticated upstream, a POST read, answers per tenant,
and a function behind the cache.

``GET /stock/{productId}`` asks a partner's stock API, which wants a bearer
token (``PRODUCT_API_TOKEN``, from the settings) and reads with a POSTed
JSON query. Each tenant (the ``X-Tenant`` header) sees its own stock, so the
endpoint varies by it. ``exchange_rate`` is a plain function made coalesced
and cached with ``@coalesced``; ``GET /rates/{currency}`` serves it.
"""

from __future__ import annotations

import re

import requests
from django.conf import settings
from ninja import Schema

from coalescing import BadRequest, CoalescedEndpoint, UpstreamRequest, coalesced

from .endpoints import ProductId, segment, upstream_base

TENANT = re.compile(r"[a-z0-9-]{1,32}")
CURRENCY = re.compile(r"[A-Z]{3}")


class StockQuery(Schema):
    productId: ProductId


class StockEndpoint(CoalescedEndpoint[StockQuery]):
    """The stock of a product in a partner's warehouse, as the calling tenant sees it."""

    name = "stock"
    path = "/stock/{productId}"
    summary = "A partner's stock of a product, per tenant (X-Tenant), behind a bearer token"
    params_schema = StockQuery

    def vary(self, request) -> str | None:
        tenant = request.headers.get("X-Tenant")
        if tenant is not None and not TENANT.fullmatch(tenant):
            raise BadRequest("X-Tenant must be 1 to 32 of a-z 0-9 -")
        return tenant

    def coalescing_name(self, params: StockQuery) -> str:
        return params.productId

    def cache_key(self, params: StockQuery) -> str:
        return params.productId

    def upstream_request(self, params: StockQuery, tenant: str | None) -> UpstreamRequest:
        return UpstreamRequest(
            f"{upstream_base()}/stock",
            method="POST",
            headers={"Authorization": f"Bearer {settings.PRODUCT_API_TOKEN}"},
            json={"productId": params.productId, "tenant": tenant},
        )


@coalesced("rates", key=lambda currency: currency, fresh_ttl_ms=60_000)
def exchange_rate(currency: str) -> dict:
    """The euro's rate to ``currency``, from the (slow) rates service."""
    response = requests.get(f"{upstream_base()}/rates/{segment(currency)}", timeout=5)
    response.raise_for_status()
    return response.json()
