"""Serving under WSGI: ``application = coalescing.wsgi.get_wsgi_application()``.

Django's WSGI application with the coalesced endpoints answered in front of
it (:mod:`.front`): a hit skips the middleware, URL dispatch and the request
signals. ``manage.py serve`` and ``gunicorn -k gevent`` both use it when the
project's ``wsgi.py`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["CoalescingWSGIHandler", "get_wsgi_application"]

log = logging.getLogger("coalescing")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def get_wsgi_application() -> WSGIApp:
    from django.core.wsgi import get_wsgi_application as django_wsgi_application

    return CoalescingWSGIHandler(django_wsgi_application())


class CoalescingWSGIHandler:
    def __init__(self, django_app: WSGIApp) -> None:
        from .front import Front

        self.django_app = django_app
        self.front = Front()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            from django.core.handlers.wsgi import WSGIRequest

            # A copy: WSGIRequest writes the decoded path back into its environ,
            # which Django's own request, made from it next, cannot read again.
            request = WSGIRequest(environ.copy())
            target = self.front.endpoint(request, _has_body(environ))
            if target is not None:
                endpoint, path = target
                try:
                    response = self.front.finish(request, endpoint.view(request, **path))
                except Exception:
                    log.exception("coalescing: the front layer failed; Django answers")
                else:
                    status = f"{response.status_code} {response.reason_phrase}"
                    start_response(status, list(response.items()))
                    return [response.content]
            elif self.front.route(request.path_info):
                start_response = self._learning(request.path_info, start_response)
        return self.django_app(environ, start_response)

    def _learning(self, path_info: str, start_response: Callable[..., Any]) -> Callable[..., Any]:
        def learning_start_response(status: str, headers: list[tuple[str, str]], *exc: Any):
            self.front.learn(path_info, headers)
            return start_response(status, headers, *exc)

        return learning_start_response


def _has_body(environ: dict[str, Any]) -> bool:
    length = environ.get("CONTENT_LENGTH") or "0"
    return length.strip() != "0" or "HTTP_TRANSFER_ENCODING" in environ
