"""``bare_asgi``: ``bare`` as an async django-ninja view: the framework's limit under ASGI."""

from django.http import HttpRequest, HttpResponse
from django.urls import path
from ninja import NinjaAPI

from .bare import BODY
from .common import health, json_response

api = NinjaAPI(title="bare_asgi", urls_namespace="bare_asgi")


@api.get("/products")
async def products(request: HttpRequest) -> HttpResponse:
    return json_response(BODY)


urlpatterns = [path("health", health), path("", api.urls)]
