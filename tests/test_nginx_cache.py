"""nginx with ``proxy_cache`` in front of ``manage.py serve``: our headers are enough.

A real nginx, started here on a free port with a config and a cache directory
in the test's temporary directory, caching by nothing but what we send
(``Cache-Control``, ``ETag``): no ``proxy_cache_valid`` that would override it.
It must absorb the hits (the app's own request count stays flat), make no
more upstream calls than one per fresh window together with the app, and
serve stale while the app refreshes.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from testkit.servers import Server, free_port, manage, serve
from tests.conftest import missing_service

pytestmark = pytest.mark.e2e

FRESH_MS, STALE_MS = 1_000, 3_000
PRODUCT = "/products?productId=SKU1&fields=name,price"

NGINX_CONF = """
daemon off;
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format cache '$request_uri $upstream_cache_status $status $upstream_status';
    access_log {tmp}/access.log cache;
    log_subrequest on;  # the background updates, and what the app answered them
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    proxy_cache_path {tmp}/cache levels=1:2 keys_zone=coalescing:1m max_size=16m
                     inactive=10m use_temp_path=off;
    upstream app {{
        server 127.0.0.1:{app_port};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1;
            proxy_cache coalescing;
            # One request per key goes to the app at a time (as our single flight).
            proxy_cache_lock on;
            # Stale while a refresh runs, answered at once: the refresh is a
            # background subrequest.
            proxy_cache_use_stale updating error timeout http_502 http_503 http_504;
            proxy_cache_background_update on;
            # An expired copy is revalidated with our ETag: a 304 renews it.
            proxy_cache_revalidate on;
            add_header X-Nginx-Cache $upstream_cache_status always;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if found is None:
        missing_service("nginx is not installed (apt-get install nginx-light)")
    return found


class Nginx:
    """nginx in the foreground, its whole state under ``tmp``."""

    def __init__(self, binary: str, tmp: Path, app_port: int) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "cache"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        # As root, nginx's worker would switch to an unprivileged user that
        # cannot enter the test's temporary directory: keep this one.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=self.port, app_port=app_port, user=user))
        self.proc = subprocess.Popen(
            [binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"nginx not ready:\n{self.log()}"
                time.sleep(0.05)

    def log(self) -> str:
        path = self.tmp / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> list[str]:
        return (self.tmp / "access.log").read_text().splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def app(upstream, tmp_path) -> Iterator[Server]:
    env = {
        "PRODUCT_API_BASE": upstream.url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'nginx.sqlite3'}",
        "UPSTREAM_TIMEOUT_MS": "5000",
        "FRESH_TTL_MS": str(FRESH_MS),
        "STALE_TTL_MS": str(STALE_MS),
    }
    migrated = manage("migrate", "--noinput", env=env)
    assert migrated.returncode == 0, migrated.stderr
    server = serve(env)
    yield server
    server.stop()


@pytest.fixture
def nginx(app, tmp_path) -> Iterator[Nginx]:
    proxy = Nginx(nginx_binary(), tmp_path / "nginx", app.port)
    yield proxy
    proxy.stop()


def app_requests(app: Server) -> float:
    """How many requests the app answered for ``products``, by its own /metrics."""
    total = 0.0
    for family in text_string_to_metric_families(app.get("/metrics").text):
        for sample in family.samples:
            if (
                sample.name == "coalescing_requests_total"
                and sample.labels.get("endpoint") == "products"
            ):
                total += sample.value
    return total


def through(proxy: Nginx, session: requests.Session) -> requests.Response:
    response = session.get(proxy.url + PRODUCT, timeout=10)
    assert response.status_code == 200, response.text
    return response


def test_nginx_absorbs_the_hits(app, nginx, upstream):
    with requests.Session() as session:
        first = through(nginx, session)
        answers = [through(nginx, session) for _ in range(50)]
    assert first.headers["X-Nginx-Cache"] == "MISS"
    assert first.headers["X-Cache"] == "MISS"
    # Within one fresh window (a second), nginx answers the rest itself.
    hits = [a.headers["X-Nginx-Cache"] for a in answers[:20]]
    assert set(hits) == {"HIT"}, hits
    assert {a.content for a in answers} == {first.content}
    assert all(a.headers["ETag"] == first.headers["ETag"] for a in answers)
    assert app_requests(app) <= 1 + len(answers) // 10  # about one per nginx window
    assert upstream.count <= 2


def test_one_upstream_call_per_fresh_window_across_nginx_and_the_app(app, nginx, upstream):
    duration, started = 6.5, time.monotonic()
    sent = 0
    with requests.Session() as session:
        while time.monotonic() - started < duration:
            through(nginx, session)
            sent += 1
            time.sleep(0.01)
    windows = duration * 1000 / FRESH_MS
    # At most one upstream call per fresh window, nginx and the app together
    # (nginx counts max-age from receipt, not from our Age: it may hold an
    # answer a little longer than we do, never make more calls).
    assert 2 <= upstream.count <= windows + 1, upstream.count
    # The app sees nginx's refreshes only: about one per nginx window.
    served = app_requests(app)
    assert served <= 2 * (windows + 1), (served, sent)
    assert sent > 10 * served  # nginx answered nearly every request itself
    # nginx revalidated with our ETag, and a 304 renewed its copy: the app had
    # the same body still (stale, its own refresh started), no body was sent.
    upstream_statuses = [line.split()[-1] for line in nginx.access_log()]
    assert "304" in upstream_statuses, upstream_statuses


def test_nginx_serves_stale_while_the_app_refreshes(app, nginx, upstream):
    """Stale at once from nginx, one slow refresh behind it.

    Each request on a connection of its own: nginx holds a keep-alive
    connection until its background update is done (nginx tickets 1723 and
    1738, "expected behaviour"), so the next request on that connection
    would wait for the refresh; other clients do not.
    """
    old = requests.get(nginx.url + PRODUCT, timeout=10)
    # Past the app's stale window: the app's refresh is in the foreground,
    # and slow; nginx must not make its clients wait for it.
    time.sleep(STALE_MS / 1000 + 0.3)
    upstream.delay = 1.5
    answered = []
    for _ in range(5):
        t0 = time.monotonic()
        answer = requests.get(nginx.url + PRODUCT, timeout=10)
        answered.append((time.monotonic() - t0, answer.headers["X-Nginx-Cache"], answer))
        time.sleep(0.1)
    for elapsed, state, answer in answered:
        assert elapsed < 0.5, (elapsed, state)
        assert state in ("STALE", "UPDATING"), state
        assert answer.status_code == 200 and answer.content == old.content
    assert answered[0][1] == "STALE"
    # The one refresh lands (the upstream answers 1.5 s after it was asked);
    # nginx then serves the new body.
    deadline = time.monotonic() + 10
    while True:
        new = requests.get(nginx.url + PRODUCT, timeout=10)
        if new.content != old.content:
            break
        assert time.monotonic() < deadline, "nginx never served the refreshed body"
        time.sleep(0.1)
    assert new.headers["X-Nginx-Cache"] == "HIT"
    assert upstream.count == 2  # one refresh, however many clients asked
