"""``bare``: a django-ninja endpoint that returns a constant body: the framework's limit."""

from django.http import HttpRequest, HttpResponse
from django.urls import path
from ninja import NinjaAPI

from .common import health, json_response

#: About the size of the fake upstream's answers (1 KB).
BODY = b'{"id":"constant","pad":"' + b"x" * 1000 + b'"}'

api = NinjaAPI(title="bare", urls_namespace="bare")


@api.get("/products")
def products(request: HttpRequest) -> HttpResponse:
    return json_response(BODY)


urlpatterns = [path("health", health), path("", api.urls)]
