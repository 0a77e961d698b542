"""Proposed changes of ``coalescing``, as patches applied in one process only.

They are measurements, not code to keep: each stands for a change proposed in
docs/benchmarks.md, written as the smallest patch that shows what the change
buys. ``ApplyPatches`` is a middleware only to run once Django is set up; it
applies the patches named in ``BENCH_PATCHES`` and then drops out.

Two patches measured here have landed in ``coalescing`` and are gone from
this file: ``dbpool`` (reads in long-lived threads keeping their connections,
commit ``13a9049``; its figures in ``bench/results/ab-w6-dbpool.json``) and
``fasthits`` (remembered lookups and metric children, commit ``48fca46``;
``ab-w3-fasthits.json``).

- ``backoff``: after a failed refresh of a key, no new refresh of that key
  for one second (stale is served meanwhile).
- ``eager``: the greenlet that leads a flight runs at once, up to its first
  wait (the upstream request is sent), before the caller goes on; without it
  the leader is queued behind every request of a burst that is ready to be read.
- ``trace``: not a proposal; timestamps of one stampede (see
  ``bench.experiments.trace``).
- ``threadfetch``: the upstream call runs in a native thread of gevent's pool,
  so its socket waits do not queue behind a burst in the main loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from django.core.exceptions import MiddlewareNotUsed


def backoff(seconds: float = 1.0) -> None:
    from coalescing.coalescer import Coalescer

    failed: dict[str, float] = {}
    load, refresh = Coalescer._load, Coalescer.refresh

    def patched_load(self: Coalescer, lk: Any, *args: Any, **kwargs: Any) -> Any:
        outcome = load(self, lk, *args, **kwargs)
        if outcome.error is not None:
            failed[lk.key_hash] = time.monotonic()
        else:
            failed.pop(lk.key_hash, None)
        return outcome

    def patched_refresh(self: Coalescer, lk: Any, *args: Any, **kwargs: Any) -> Any:
        when = failed.get(lk.key_hash)
        if when is not None and time.monotonic() - when < seconds:
            return False
        return refresh(self, lk, *args, **kwargs)

    Coalescer._load = patched_load  # type: ignore[method-assign]
    Coalescer.refresh = patched_refresh  # type: ignore[method-assign]


def eager() -> None:
    import gevent
    import greenlet

    from coalescing import singleflight

    def spawn_now(target: Callable[[], None]) -> None:
        hub = gevent.get_hub()
        caller = gevent.getcurrent()
        leader = greenlet.greenlet(run=target, parent=hub)
        # The caller resumes from the loop's next callbacks; the leader runs now.
        hub.loop.run_callback(caller.switch)
        leader.switch()

    init = singleflight.SingleFlight.__init__

    def patched_init(self: Any, spawn: Any = None) -> None:
        init(self, spawn or spawn_now)

    singleflight.SingleFlight.__init__ = patched_init  # type: ignore[method-assign]
    from coalescing import runtime

    runtime.reset()  # a coalescer built before the patch gets the new spawn too


def threadfetch() -> None:
    import gevent

    from coalescing.upstream import UpstreamClient

    original = UpstreamClient.fetch

    def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        return gevent.get_hub().threadpool.apply(original, (self, *args), kwargs)

    UpstreamClient.fetch = fetch  # type: ignore[method-assign]


def trace(marker: str = "trace-") -> None:
    """Print when a request for a product id starting with ``marker`` first
    enters the view, its flight starts, its upstream call starts and ends,
    and its first and 500th answers are done (wall-clock, on stderr)."""
    import sys

    from coalescing import coalescer, endpoint, upstream

    seen: dict[str, float] = {}
    answered = [0]

    def mark(name: str) -> None:
        if name not in seen:
            seen[name] = time.time()
            sys.stderr.write(f"TRACE {name} {seen[name]:.6f}\n")
            sys.stderr.flush()

    view, load, fetch = (
        endpoint.CoalescedEndpoint.view,
        coalescer.Coalescer._load,
        upstream.UpstreamClient.fetch,
    )

    def traced_view(self: Any, request: Any) -> Any:
        ours = marker in request.META.get("QUERY_STRING", "")
        if ours:
            mark("view entered")
        response = view(self, request)
        if ours:
            answered[0] += 1
            mark("first answer done")
            if answered[0] == 500:
                mark("500th answer done")
        return response

    def traced_load(self: Any, lk: Any, *args: Any, **kwargs: Any) -> Any:
        if marker in lk.key:
            mark("flight started")
        return load(self, lk, *args, **kwargs)

    def traced_fetch(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        ours = marker in str(getattr(request, "full_url", request))
        if ours:
            mark("upstream call started")
        result = fetch(self, request, *args, **kwargs)
        if ours:
            mark("upstream call returned")
        return result

    endpoint.CoalescedEndpoint.view = traced_view  # type: ignore[method-assign]
    coalescer.Coalescer._load = traced_load  # type: ignore[method-assign]
    upstream.UpstreamClient.fetch = traced_fetch  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[], None]] = {
    "trace": trace,
    "eager": eager,
    "threadfetch": threadfetch,
    "backoff": backoff,
}


class ApplyPatches:
    def __init__(self, get_response: Callable[..., Any]) -> None:
        for name in filter(None, os.environ.get("BENCH_PATCHES", "").split(",")):
            PATCHES[name.strip()]()
        raise MiddlewareNotUsed
