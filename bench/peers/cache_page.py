"""``cache_page``: Django's own per-view cache on django-redis.

The view is the ``naive`` one; ``cache_page`` stores its whole response for
``FRESH_TTL_MS`` (whole seconds: that is what it takes). It has no lock and
no stale window: every request that misses calls the upstream.
"""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.cache import cache_page
from ninja import NinjaAPI
from ninja.decorators import decorate_view

from .common import UpstreamFailed, bad_request, fetch, health, json_response, params

api = NinjaAPI(title="cache_page", urls_namespace="cache_page")


@api.get("/products")
@decorate_view(cache_page(max(1, round(settings.BENCH_FRESH_S))))
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
