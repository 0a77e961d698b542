"""``naive``: the same endpoint calling the upstream on every request, no cache."""

from django.http import HttpRequest, HttpResponse
from django.urls import path
from ninja import NinjaAPI

from .common import UpstreamFailed, bad_request, fetch, health, json_response, params

api = NinjaAPI(title="naive", urls_namespace="naive")


@api.get("/products")
def products(request: HttpRequest) -> HttpResponse:
    parsed = params(request)
    if parsed is None:
        return bad_request("bad parameters")
    try:
        status, body = fetch(*parsed)
    except UpstreamFailed:
        return json_response(b'{"detail":"upstream failed"}', 502)
    return json_response(body, status)


urlpatterns = [path("health", health), path("", api.urls)]
