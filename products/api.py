"""The products API: each endpoint registered in one line."""

from ninja import NinjaAPI

from .endpoints import PriceEndpoint, ProductEndpoint

api = NinjaAPI(title="Products (coalesced)", version="1.0.0", urls_namespace="products")

ProductEndpoint.register(api)
PriceEndpoint.register(api)
