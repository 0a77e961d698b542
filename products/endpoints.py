"""The example endpoints: two shapes on one base class.

``products`` is keyed by product and fields and coalesced by product;
``prices`` is keyed by region and product and coalesced by region, the
"by region" routing of the original design.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import quote

from django.conf import settings

from coalescing import CoalescedEndpoint, UpstreamRequest
from coalescing.params import QueryLists, csv_set, single
from coalescing.server import local_base_url

PRODUCT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FIELD = re.compile(r"[A-Za-z0-9_]{1,64}")
REGION = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_FIELDS = 50
PRODUCT_ID_PARAMETER = {
    "name": "productId",
    "in": "query",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
}
#: Where the demo upstream is served when this process's address is unknown.
DEMO_PATH = "/demo"


def upstream_base() -> str:
    """``PRODUCT_API_BASE``, else the built-in demo upstream of this very server."""
    base = getattr(settings, "PRODUCT_API_BASE", "")
    if base:
        return base.rstrip("/")
    return (local_base_url() or "http://127.0.0.1:8787") + DEMO_PATH


def segment(value: str) -> str:
    """A path segment, quoted so it can never climb or leave the base path."""
    return quote(value, safe="")


@dataclasses.dataclass(frozen=True, slots=True)
class ProductParams:
    product_id: str
    fields: tuple[str, ...]  # sorted and unique; () means all fields


class ProductEndpoint(CoalescedEndpoint[ProductParams]):
    """A product, or some of its fields."""

    name = "products"
    path = "/products"
    summary = "A product by id, with some or all of its fields (coalesced and cached)"
    openapi_parameters = [
        PRODUCT_ID_PARAMETER,
        {
            "name": "fields",
            "in": "query",
            "required": False,
            "description": "comma-separated field names; absent or empty: all fields",
            "schema": {"type": "string"},
        },
    ]

    def parse(self, query: QueryLists) -> ProductParams:
        product_id = single(query, "productId", PRODUCT_ID, required=True)
        fields = csv_set(query, "fields", FIELD, max_items=MAX_FIELDS)
        return ProductParams(product_id, fields)  # type: ignore[arg-type]

    def coalescing_name(self, params: ProductParams) -> str:
        return params.product_id

    def cache_key(self, params: ProductParams) -> str:
        return f"{params.product_id}::{','.join(params.fields) or '*'}"

    def upstream_request(self, params: ProductParams) -> UpstreamRequest:
        url = f"{upstream_base()}/products/{segment(params.product_id)}"
        return UpstreamRequest(url, {"fields": ",".join(params.fields)} if params.fields else None)


@dataclasses.dataclass(frozen=True, slots=True)
class PriceParams:
    product_id: str
    region: str


class PriceEndpoint(CoalescedEndpoint[PriceParams]):
    """The price of a product in a region."""

    name = "prices"
    path = "/prices"
    summary = "The price of a product in a region (coalesced by region)"
    openapi_parameters = [
        PRODUCT_ID_PARAMETER,
        {
            "name": "region",
            "in": "query",
            "required": True,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"},
        },
    ]

    def parse(self, query: QueryLists) -> PriceParams:
        product_id = single(query, "productId", PRODUCT_ID, required=True)
        region = single(query, "region", REGION, required=True)
        return PriceParams(product_id, region)  # type: ignore[arg-type]

    def coalescing_name(self, params: PriceParams) -> str:
        return params.region

    def cache_key(self, params: PriceParams) -> str:
        return f"{params.region}::{params.product_id}"

    def upstream_request(self, params: PriceParams) -> UpstreamRequest:
        url = f"{upstream_base()}/prices/{segment(params.region)}/{segment(params.product_id)}"
        return UpstreamRequest(url)
