"""The front layer under WSGI, in-process: which requests it takes, and what it answers."""

from __future__ import annotations

import io
from urllib.parse import unquote
from wsgiref.util import setup_testing_defaults

import pytest
from django.http import HttpResponseForbidden

from coalescing import runtime
from coalescing.wsgi import CoalescingWSGIHandler

pytestmark = pytest.mark.django_db(transaction=True)


class Count:
    """A middleware that counts the requests Django's stack sees."""

    calls = 0

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        Count.calls += 1
        return self.get_response(request)


class Refuse:
    """A middleware that refuses ``/prices``: the front must leave that route to Django."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path == "/prices":
            return HttpResponseForbidden("no")
        return self.get_response(request)


@pytest.fixture
def app(settings, upstream):
    settings.PRODUCT_API_BASE = upstream.url
    settings.MIDDLEWARE = ["tests.test_front.Count", *settings.MIDDLEWARE]
    Count.calls = 0
    runtime.reset()
    from django.core.wsgi import get_wsgi_application

    yield CoalescingWSGIHandler(get_wsgi_application())
    runtime.reset()


def call(app, path: str, method: str = "GET", host: str = "127.0.0.1", body: bytes = b""):
    """``(status, headers, body)`` of one WSGI call."""
    route, _, query = path.partition("?")
    environ: dict = {
        "REQUEST_METHOD": method,
        "PATH_INFO": route,
        "QUERY_STRING": query,
        "HTTP_HOST": host,
        "wsgi.input": io.BytesIO(body),
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    setup_testing_defaults(environ)
    got: dict = {}

    def start_response(status, headers, exc_info=None):
        got.update(status=int(status.split()[0]), headers=dict(headers))

    content = b"".join(app(environ, start_response))
    return got["status"], got["headers"], content


def test_after_the_first_full_answer_the_front_answers_with_the_same_headers(app, upstream):
    status, full, body = call(app, "/products?productId=F1")
    assert status == 200 and full["X-Cache"] == "MISS"
    assert app.front.learned("coalesced_products")
    assert Count.calls == 1
    status, front, again = call(app, "/products?productId=F1")
    assert Count.calls == 1  # answered before the stack
    assert status == 200 and front["X-Cache"] == "HIT"
    assert set(front) == set(full)
    assert front["X-Frame-Options"] == "DENY"  # the middleware stack's, learned
    assert again == body
    assert upstream.count == 1


def test_a_bad_request_is_the_endpoints_400_either_way(app, upstream):
    call(app, "/products?productId=F2")
    status, headers, body = call(app, "/products?productId=bad!")
    assert status == 400 and b'"detail"' in body


def test_what_is_not_a_coalesced_get_goes_to_django(app, upstream):
    call(app, "/products?productId=F3")
    assert call(app, "/products/")[0] == 404
    assert call(app, "/products?productId=F3", method="POST")[0] == 405
    # A body on a GET: not the front's to guess about.
    assert call(app, "/products?productId=F3", body=b"x")[0] == 200
    assert call(app, "/products?productId=F3", host="evil.example")[0] == 400
    assert call(app, "/metrics")[0] == 200
    assert Count.calls == 6  # every one of them went through Django's stack


def test_a_route_the_middleware_refuses_stays_with_django(app, settings, upstream):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_front.Refuse"]
    Count.calls = 0
    from django.core.wsgi import get_wsgi_application

    app = CoalescingWSGIHandler(get_wsgi_application())
    for _ in range(3):
        assert call(app, "/prices?productId=P1&region=eu")[0] == 403
    assert not app.front.learned("coalesced_prices")
    assert upstream.count == 0
    assert Count.calls == 3


def test_a_path_that_is_not_latin_1_goes_through_both_requests(app, upstream):
    """The front's request must leave the environ as the server gave it."""
    call(app, "/products?productId=F5")
    # What a WSGI server puts in PATH_INFO for /rates/%C4%80: its bytes as latin-1.
    raw = unquote("/rates/%C4%80", encoding="latin-1")
    assert call(app, raw)[0] == 400
