"""The example project under uvicorn: async waits, a front layer, bounded threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from testkit.servers import Server, free_port, uvicorn

pytestmark = pytest.mark.e2e


async def _get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]), data


def get_many(port: int, paths: list[str]) -> list[tuple[int, bytes]]:
    """Every path asked at once, each on a connection of its own."""

    async def main() -> list[tuple[int, bytes]]:
        return await asyncio.gather(*(_get(port, p) for p in paths))

    return asyncio.run(main())


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


class PeakThreads:
    """Samples a process's thread count while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, threads_of(self.pid))

    def __enter__(self) -> PeakThreads:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def asgi_server(upstream, tmp_path):
    env = {"PRODUCT_API_BASE": upstream.url, "DATABASE_URL": f"sqlite:///{tmp_path / 'db'}"}
    from testkit.servers import manage

    assert manage("migrate", "--noinput", env=env).returncode == 0
    srv = uvicorn(env)
    yield srv
    srv.stop()


def header_names(raw: bytes) -> set[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin1").split("\r\n")[1:]
    return {line.split(":", 1)[0].lower() for line in head}


def header(raw: bytes, name: str) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin1").split("\r\n")[1:]
    for line in head:
        key, _, value = line.partition(":")
        if key.lower() == name:
            return value.strip()
    raise KeyError(name)


def test_a_cold_stampede_makes_one_call_and_holds_no_thread_per_waiter(asgi_server, upstream):
    upstream.delay = 0.5
    idle = threads_of(asgi_server.proc.pid)
    with PeakThreads(asgi_server.proc.pid) as threads:
        answers = get_many(asgi_server.port, ["/products?productId=HERD"] * 1000)
    assert [status for status, _ in answers] == [200] * 1000
    assert upstream.count == 1
    x_cache = [header(raw, "x-cache") for _, raw in answers]
    assert x_cache.count("MISS") == 1
    assert set(x_cache) == {"MISS", "COALESCED"}
    # Django's own ASGI handler held one thread per request (1,012 measured);
    # here: the loop, the flight, the database tier's threads and a few more.
    assert threads.peak <= idle + 40, (idle, threads.peak)


def test_distinct_cold_keys_are_fetched_side_by_side(asgi_server, upstream):
    asgi_server.get("/products?productId=WARM")  # the route's first full answer
    upstream.delay = 0.2
    started = time.monotonic()
    answers = get_many(asgi_server.port, [f"/products?productId=K{i}" for i in range(100)])
    elapsed = time.monotonic() - started
    assert [status for status, _ in answers] == [200] * 100
    assert upstream.count == 101
    # One after the other they would take 20 s; side by side about one latency.
    assert elapsed < 1.5, elapsed
    assert upstream.max_inflight > 50


def test_the_front_answers_with_the_full_paths_headers(asgi_server, upstream):
    ((_, full),) = get_many(asgi_server.port, ["/products?productId=SAME"])
    ((_, front),) = get_many(asgi_server.port, ["/products?productId=SAME"])
    assert header(full, "x-cache") == "MISS"
    assert header(front, "x-cache") == "HIT"
    assert header_names(front) == header_names(full)
    assert header(front, "x-frame-options") == "DENY"  # added by the middleware stack
    assert front.split(b"\r\n\r\n", 1)[1] == full.split(b"\r\n\r\n", 1)[1]


def test_other_requests_are_djangos(asgi_server, upstream):
    get_many(asgi_server.port, ["/products?productId=A"])
    ((status, raw),) = get_many(asgi_server.port, ["/products/"])
    assert status == 404
    ((status, raw),) = get_many(asgi_server.port, ["/products?productId=bad!"])
    assert status == 400 and b'"detail"' in raw
    status, raw = asyncio.run(_get(asgi_server.port, "/products?productId=A", host="evil.example"))
    assert status == 400  # Django refuses the Host, as for any other view
    assert asgi_server.get("/metrics").status_code == 200
    assert asgi_server.get("/admin/login/").status_code == 200


def test_uvicorn_workers_share_one_call_through_redis(upstream, tmp_path, redis_url):
    env = {
        "PRODUCT_API_BASE": upstream.url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db'}",
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"asgi-{free_port()}",
    }
    from testkit.servers import manage

    assert manage("migrate", "--noinput", env=env).returncode == 0
    srv: Server = uvicorn(env, None, "--workers", "2")
    try:
        upstream.delay = 0.5
        answers = get_many(srv.port, ["/prices?productId=P1&region=eu"] * 200)
        assert [status for status, _ in answers] == [200] * 200
        assert upstream.count == 1
    finally:
        srv.stop()
