"""``@coalesced``: any function gets the endpoints' machinery."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from coalescing import CallFailed, coalesced, runtime
from coalescing.models import CacheEntry
from coalescing.policies import current_policies
from testkit.servers import ROOT, server_env
from tests.conftest import Clock

pytestmark = pytest.mark.django_db(transaction=True)


class Source:
    """What the functions below call: counts calls, can be slow or failing."""

    def __init__(self) -> None:
        self.calls = 0
        self.delay = 0.0
        self.fail = False
        self.lock = threading.Lock()

    def __call__(self, currency: str) -> dict:
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("rates service down")
        return {"currency": currency, "n": n}


source = Source()


@coalesced("test-rates", key=lambda currency: currency, fresh_ttl_ms=10_000, stale_ttl_ms=60_000)
def rate(currency: str) -> dict:
    return source(currency)


@coalesced("test-rates-async", key=lambda currency: currency)
async def arate(currency: str) -> dict:
    await asyncio.sleep(source.delay)
    source.delay, delay = 0.0, source.delay
    try:
        return source(currency)
    finally:
        source.delay = delay


@coalesced("test-blob")
def blob(size: int) -> bytes:
    source("blob")
    return b"\x00\xff" * size


@pytest.fixture
def clock(settings):
    settings.COALESCING = {"STALE_IF_ERROR_MS": 300_000, "UPSTREAM_TIMEOUT_MS": 2000}
    runtime.reset()
    source.__init__()
    clock = Clock()
    coalescer = runtime.get_coalescer()
    coalescer.clock = clock
    yield clock
    deadline = time.monotonic() + 10
    while len(coalescer.flights) and time.monotonic() < deadline:
        time.sleep(0.02)
    runtime.reset()


def test_threads_make_one_call_and_each_gets_its_own_copy(clock):
    source.delay = 0.3
    with ThreadPoolExecutor(200) as pool:
        values = list(pool.map(lambda _: rate("EUR"), range(200)))
    assert source.calls == 1
    assert values == [{"currency": "EUR", "n": 1}] * 200
    values[0]["n"] = "changed"
    assert rate("EUR") == {"currency": "EUR", "n": 1}  # a copy: the cache is not shared state


def test_asyncio_tasks_make_one_call(clock):
    source.delay = 0.3

    async def main():
        return await asyncio.gather(*(arate("USD") for _ in range(200)))

    values = asyncio.run(main())
    assert source.calls == 1
    assert {v["n"] for v in values} == {1}


def test_greenlets_make_one_call(tmp_path):
    """Under gevent (as under serve and gunicorn), in a process of its own."""
    script = """
from gevent import monkey; monkey.patch_all()
import django, gevent, time
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from tests.test_functions import rate, source
source.delay = 0.3
values = gevent.joinall([gevent.spawn(rate, "GBP") for _ in range(200)])
assert all(g.value == {"currency": "GBP", "n": 1} for g in values), values[0].value
print("calls", source.calls)
"""
    env = server_env(
        {"DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": f"sqlite:///{tmp_path}/g.db"}
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "calls 1" in done.stdout


def test_stale_while_revalidate_and_stale_if_error(clock):
    assert rate("CHF")["n"] == 1
    clock.now += 20  # stale: served at once, one refresh in the background
    assert rate("CHF")["n"] == 1
    deadline = time.monotonic() + 5
    while rate("CHF")["n"] != 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert source.calls == 2
    source.fail = True
    clock.now += 120  # expired: the call fails, the old value is served instead
    assert rate("CHF")["n"] == 2
    clock.now += 1000  # past every window: the failure reaches the caller
    with pytest.raises(CallFailed, match="rates service down"):
        rate("CHF")


def test_bytes_are_kept_as_bytes(clock):
    assert blob(3) == b"\x00\xff" * 3
    assert blob(3) == b"\x00\xff" * 3
    assert source.calls == 1


def test_invalidate_and_refresh(clock):
    assert rate("JPY")["n"] == 1
    rate.invalidate("JPY")
    assert rate("JPY")["n"] == 2
    assert rate.refresh("JPY")["n"] == 3
    call_command("invalidate", "test-rates", "currency=JPY")
    assert rate("JPY")["n"] == 4


def test_entries_are_in_the_admin_and_go_with_purge_stale(clock):
    rate("SEK")
    coalescer = runtime.get_coalescer()
    coalescer.flush()
    client = Client()
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw"))
    page = client.get("/admin/coalescing/cacheentry/", {"endpoint": "test-rates"})
    assert page.status_code == 200 and "test-rates:SEK" in page.content.decode()
    (key_hash,) = CacheEntry.objects.filter(endpoint="test-rates").values_list("pk", flat=True)
    client.post(
        "/admin/coalescing/cacheentry/", {"action": "refresh_now", "_selected_action": [key_hash]}
    )
    assert source.calls == 2  # the admin's refresh called the function again
    coalescer.flush()
    far = round((time.time() + 10_000) * 1000)
    assert CacheEntry.objects.purge_stale(current_policies(), endpoint="test-rates", now=far) == 1
    assert not CacheEntry.objects.filter(endpoint="test-rates").exists()


def test_a_name_is_one_namespace_with_the_endpoints():
    with pytest.raises(ValueError, match="two endpoints are named 'products'"):

        @coalesced("products")
        def clash() -> None: ...
