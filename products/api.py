"""The products API: each endpoint registered in one line."""

from django.http import HttpRequest
from ninja import NinjaAPI

from coalescing import CallFailed

from .endpoints import PriceEndpoint, ProductEndpoint
from .partner import CURRENCY, StockEndpoint, exchange_rate

api = NinjaAPI(title="Products (coalesced)", version="1.0.0", urls_namespace="products")

ProductEndpoint.register(api)
PriceEndpoint.register(api)
StockEndpoint.register(api)


@api.get("/rates/{currency}", summary="The euro's rate to a currency (a @coalesced function)")
def rates(request: HttpRequest, currency: str):
    if not CURRENCY.fullmatch(currency):
        return api.create_response(request, {"detail": "currency is 3 of A-Z"}, status=400)
    try:
        return exchange_rate(currency)
    except CallFailed as exc:
        return api.create_response(request, {"detail": str(exc)}, status=502)
