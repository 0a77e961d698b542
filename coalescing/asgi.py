"""Serving under ASGI: ``application = coalescing.asgi.get_asgi_application()``.

The application answers the coalesced endpoints itself (:mod:`.front`), on
the event loop: a hit never leaves it, and a request waiting on a call in
flight holds no thread (Django's handler would hold one per request for its
signals and sync middleware). Everything else is Django's ASGI handler, where
the endpoints are async views too (registered as such when the URLconf is
loaded, after this module said so).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["CoalescingASGIHandler", "get_asgi_application"]

log = logging.getLogger("coalescing")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_async_views = False
#: How long requests of a new route wait for its first answer before going to Django.
LEARN_WAIT_S = 10.0


def async_views() -> bool:
    """Whether endpoints registered from now on get async views."""
    return _async_views


def get_asgi_application() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """Django's ASGI application with the coalesced endpoints answered in front of it."""
    global _async_views
    _async_views = True
    from django.core.asgi import get_asgi_application as django_asgi_application

    return CoalescingASGIHandler(django_asgi_application())


class CoalescingASGIHandler:
    def __init__(self, django_app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        from .front import Front

        self.django_app = django_app
        self.front = Front()
        #: Routes whose first full answer is on its way: set when it has been sent.
        self._learning_routes: dict[str, asyncio.Event] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            from django.core.handlers.asgi import ASGIRequest

            request = ASGIRequest(scope, io.BytesIO())
            has_body = _has_body(scope)
            url_name = self.front.route(request.path_info)
            learner = None
            if url_name and not has_body and not self.front.learned(url_name):
                learner = self._learning_routes.get(url_name)
                if learner is None:
                    await self._learn(url_name, request.path_info, scope, receive, send)
                    return
            # A cold stampede on a new route joins the flight here, holding no
            # thread, and waits for the first full answer's headers to send.
            target = self.front.endpoint(request, has_body, learned_only=learner is None)
            if target is not None:
                endpoint, path = target
                try:
                    response = await endpoint.aview(request, **path)
                    if learner is not None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(learner.wait(), LEARN_WAIT_S)
                except Exception:
                    log.exception("coalescing: the front layer failed; Django answers")
                else:
                    if self.front.learned(url_name):
                        await _send_response(self.front.finish(request, response), send)
                        return
        await self.django_app(scope, receive, send)

    async def _learn(
        self, url_name: str, path_info: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Let Django answer a route's first request, and note the headers it adds."""
        learner = self._learning_routes[url_name] = asyncio.Event()

        async def learning_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.front.learn(
                    path_info,
                    [(k.decode("latin1"), v.decode("latin1")) for k, v in message["headers"]],
                )
                learner.set()
            await send(message)

        try:
            await self.django_app(scope, receive, learning_send)
        finally:
            learner.set()
            del self._learning_routes[url_name]


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _send_response(response: Any, send: Send) -> None:
    headers = [(k.encode("ascii"), v.encode("latin1")) for k, v in response.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})
