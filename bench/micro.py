"""The hit path in-process, without sockets: ours against ``bare``, microseconds each.

``python -m bench.micro`` calls Django's WSGI handler directly (no server, no
client, no scheduler noise) on a warm key of ours and on the ``bare`` view,
interleaved, and prints the cost of each and what cProfile says ours spends
its extra time on. It explains the W3 ratio: what the server adds is the same
for both, so the ratio is set by this difference.
"""

from __future__ import annotations

import atexit
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from typing import Any


def setup() -> Any:
    tmp = tempfile.mkdtemp(prefix="coalescing-micro-")
    atexit.register(shutil.rmtree, tmp, True)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": os.environ.get("MICRO_SETTINGS", "coalesce_project.settings"),
            "DATABASE_URL": f"sqlite:///{tmp}/micro.sqlite3",
            "DEBUG": "0",
            "SECRET_KEY": "bench-only-not-a-secret-0123456789abcdef",
            "LOG_LEVEL": "WARNING",
            "PRODUCT_API_BASE": "http://127.0.0.1:9",
            "FRESH_TTL_MS": "3600000",
            "STALE_TTL_MS": "7200000",
        }
    )
    os.environ.pop("REDIS_URL", None)
    import django
    from django.conf import settings

    django.setup()
    settings.ROOT_URLCONF = "bench.experiments.urls_both"
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.core.handlers.wsgi import WSGIHandler

    from coalescing.entry import Entry
    from coalescing.runtime import get_coalescer
    from products.endpoints import ProductEndpoint

    lk = ProductEndpoint().lookup_query({"productId": ["hot"], "fields": ["name,price"]})
    get_coalescer().memory.set(
        Entry(
            key_hash=lk.key_hash,
            key=lk.key,
            endpoint=lk.endpoint,
            name=lk.name,
            status=200,
            body=b'{"id":"hot","pad":"' + b"x" * 1000 + b'"}',
            content_type="application/json",
            fetched_at=time.time(),
            params=lk.params,
        )
    )
    return WSGIHandler()


def environ(path: str, query: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8787",
        "HTTP_HOST": "127.0.0.1:8787",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
    }


def call(app: Any, env: dict[str, Any]) -> tuple[str, int]:
    got: dict[str, str] = {}

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> None:
        got["status"] = status

    body = b"".join(app(dict(env), start_response))
    return got["status"], len(body)


def main() -> int:
    app = setup()
    ours = environ("/products", "productId=hot&fields=name,price")
    bare = environ("/bare/products", "productId=hot&fields=name,price")
    for env in (ours, bare):
        status, _ = call(app, env)
        assert status.startswith("200"), status
    n = int(os.environ.get("MICRO_N", "20000"))
    timings: dict[str, list[float]] = {"ours": [], "bare": []}
    for _ in range(5):
        for name, env in (("ours", ours), ("bare", bare)):
            started = time.perf_counter()
            for _ in range(n // 5):
                call(app, env)
            timings[name].append((time.perf_counter() - started) / (n // 5) * 1e6)
    best = {name: min(values) for name, values in timings.items()}
    print(f"ours {best['ours']:.1f} µs, bare {best['bare']:.1f} µs per request (best of 5)")
    print(f"ours costs {best['ours'] - best['bare']:.1f} µs more in Django and the endpoint")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(n // 4):
        call(app, ours)
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    # The endpoint's own steps, cumulative (cProfile inflates them all alike).
    stats.sort_stats("cumulative").print_stats(r"coalescing/|products/|prometheus_client/", 25)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
