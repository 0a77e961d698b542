"""Requests Django cannot read, answered as the API's other client errors: a JSON 400.

Django turns a ``SuspiciousOperation`` into a 400, but as its technical
traceback page (HTML or plain text) under ``DEBUG``, or an HTML page without,
and it logs a ``DisallowedHost`` with a full traceback on every request.
The two a client can send to any URL are a query of more than
``DATA_UPLOAD_MAX_NUMBER_FIELDS`` parameters (``TooManyFieldsSent``) and a
``Host`` outside ``ALLOWED_HOSTS``.

Why a middleware, first in ``MIDDLEWARE``, rather than a ``handler400``:
Django calls ``handler400`` only with ``DEBUG`` off, and only after another
middleware or the view tripped over the request, with a traceback logged.
Here both are checked before anything else reads the request, the same way
with ``DEBUG`` on or off, under WSGI and ASGI, and a rejected Host is one
warning line on ``django.security.DisallowedHost``. A view that parses a
body itself (``request.POST``) and hits Django's limits gets the same answer
through :meth:`RequestErrorsMiddleware.process_exception`; a form POST that
Django's CSRF check would read first is read here, in ``process_view``, since
an exception raised in another middleware's ``process_view`` skips every
``process_exception``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import (
    DisallowedHost,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import HttpRequest, HttpResponse

from .errors import BadRequest
from .params import query_lists
from .responses import error_response

__all__ = ["RequestErrorsMiddleware"]

host_log = logging.getLogger("django.security.DisallowedHost")

#: What Django raises while reading a request that exceeds its limits.
PARSING_ERRORS = (TooManyFieldsSent, TooManyFilesSent, RequestDataTooBig)


def refusal(request: HttpRequest) -> HttpResponse | None:
    """The 400 that ``request`` deserves before anything reads it, or ``None``."""
    try:
        request.get_host()
    except DisallowedHost as exc:
        host_log.warning("%s (answered 400)", exc)
        return error_response(400, "invalid Host header")
    try:
        query_lists(request)  # parses request.GET once, for everything after
    except BadRequest as exc:
        return error_response(400, exc.detail)
    return None


class RequestErrorsMiddleware:
    """A JSON 400 for an unreadable query or a disallowed Host, on every URL."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.reads_for_csrf = "django.middleware.csrf.CsrfViewMiddleware" in settings.MIDDLEWARE
        # Async under ASGI: no thread hop for a check that never blocks.
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if iscoroutinefunction(self):
            return self._acall(request)
        return refusal(request) or self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        return refusal(request) or await self.get_response(request)  # type: ignore[misc]

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., HttpResponse],
        view_args: tuple[object, ...],
        view_kwargs: dict[str, object],
    ) -> HttpResponse | None:
        """Read a POST body where the CSRF check is about to (same conditions),
        so that Django's limits on it give the JSON 400."""
        if not self.reads_for_csrf or request.method != "POST":
            return None
        if getattr(view_func, "csrf_exempt", False):
            return None
        try:
            request.POST  # noqa: B018 (parsed now, kept on the request for the CSRF check)
        except PARSING_ERRORS as exc:
            return error_response(400, _detail(exc))
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, PARSING_ERRORS):
            return error_response(400, _detail(exception))
        return None


def _detail(exception: Exception) -> str:
    if isinstance(exception, TooManyFieldsSent):
        return f"too many parameters (at most {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS})"
    if isinstance(exception, TooManyFilesSent):
        return f"too many files (at most {settings.DATA_UPLOAD_MAX_NUMBER_FILES})"
    return f"request body too large (at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes)"
