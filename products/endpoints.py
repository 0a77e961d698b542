"""The example endpoints: two shapes on one base class.

``products`` is keyed by product and fields and coalesced by product;
``prices`` is keyed by region and product and coalesced by region, the
"by region" routing of the original design.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from django.conf import settings
from ninja import Field, Schema
from pydantic import field_validator

from coalescing import CoalescedEndpoint, UpstreamRequest
from coalescing.server import local_base_url

#: One declaration per parameter: validation and the OpenAPI page both come from it.
ProductId = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="1 to 64 of A-Z a-z 0-9 _ -")
]
FIELDS_PATTERN = r"^([A-Za-z0-9_]{1,64}(,[A-Za-z0-9_]{1,64})*)?$"
MAX_FIELDS = 50
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


class ProductQuery(Schema):
    productId: ProductId
    fields: str = Field(
        "",
        pattern=FIELDS_PATTERN,
        description="comma-separated field names; absent or empty: all fields",
    )

    @field_validator("fields")
    @classmethod
    def _few_enough(cls, value: str) -> str:
        if len(field_set(value)) > MAX_FIELDS:
            raise ValueError(f"at most {MAX_FIELDS} distinct field names")
        return value


def field_set(fields: str) -> tuple[str, ...]:
    """The fields asked for, sorted, duplicates dropped; () means all of them."""
    return tuple(sorted(set(fields.split(",")) - {""}))


class ProductEndpoint(CoalescedEndpoint[ProductQuery]):
    """A product, or some of its fields."""

    name = "products"
    path = "/products"
    summary = "A product by id, with some or all of its fields (coalesced and cached)"
    params_schema = ProductQuery
    refresh_ahead = True

    def coalescing_name(self, params: ProductQuery) -> str:
        return params.productId

    def tags(self, params: ProductQuery) -> list[str]:
        return [f"product:{params.productId}"]  # every fields variant of a product

    def cache_key(self, params: ProductQuery) -> str:
        return f"{params.productId}::{','.join(field_set(params.fields)) or '*'}"

    def upstream_request(self, params: ProductQuery) -> UpstreamRequest:
        url = f"{upstream_base()}/products/{segment(params.productId)}"
        fields = ",".join(field_set(params.fields))
        return UpstreamRequest(url, {"fields": fields} if fields else None)


class PriceQuery(Schema):
    productId: ProductId
    region: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="1 to 32 of A-Z a-z 0-9 _ -")


class PriceEndpoint(CoalescedEndpoint[PriceQuery]):
    """The price of a product in a region."""

    name = "prices"
    path = "/prices"
    summary = "The price of a product in a region (coalesced by region)"
    params_schema = PriceQuery
    refresh_ahead = True

    def coalescing_name(self, params: PriceQuery) -> str:
        return params.region

    def tags(self, params: PriceQuery) -> list[str]:
        return [f"product:{params.productId}", f"region:{params.region}"]

    def cache_key(self, params: PriceQuery) -> str:
        return f"{params.region}::{params.productId}"

    def upstream_request(self, params: PriceQuery) -> UpstreamRequest:
        base = upstream_base()
        return UpstreamRequest(
            f"{base}/prices/{segment(params.region)}/{segment(params.productId)}"
        )
