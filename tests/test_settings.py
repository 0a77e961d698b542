"""Bad settings stop every command at start-up, naming the variable."""

from __future__ import annotations

import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured

from coalescing.conf import build, from_environ
from testkit.servers import manage


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FRESH_TTL_MS": "ten"}, "FRESH_TTL_MS"),
        ({"STALE_TTL_MS": "1.5"}, "STALE_TTL_MS"),
        ({"UPSTREAM_TIMEOUT_MS": "-3"}, "UPSTREAM_TIMEOUT_MS"),
        ({"FRESH_TTL_MS": "20000", "STALE_TTL_MS": "10000"}, "STALE_TTL_MS"),
        ({"DATABASE_URL": "nonsense://"}, "DATABASE_URL"),
        ({"PRODUCT_API_BASE": "ftp://x"}, "PRODUCT_API_BASE"),
        ({"DEBUG": "0", "SECRET_KEY": ""}, "SECRET_KEY"),
        ({"DEBUG": "maybe"}, "DEBUG"),
    ],
)
def test_bad_settings_fail_every_command_naming_the_variable(env, named):
    for command in (["check"], ["migrate", "--plan"]):
        result = manage(*command, env=env, timeout=60)
        assert result.returncode != 0
        assert named in result.stderr
        assert "Traceback" not in result.stderr


def test_good_values_and_defaults():
    values = from_environ({"FRESH_TTL_MS": "1_000", "STALE_TTL_MS": "1000", "OTHER": "x"})
    conf = build(values)
    assert (conf.fresh_ttl_ms, conf.stale_ttl_ms) == (1000, 1000)
    assert conf.stale_if_error_ms == 300_000
    assert conf.memory_cache_max_bytes == 64 * 1024 * 1024


def test_unknown_keys_in_the_setting_are_refused():
    with pytest.raises(ImproperlyConfigured, match="UNKNOWN"):
        build({"UNKNOWN": 1})


def test_redis_cache_must_name_a_django_redis_cache(settings):
    from coalescing.apps import _check_redis_cache

    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "shared": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://x"},
    }
    _check_redis_cache("shared")
    with pytest.raises(ImproperlyConfigured, match=r"REDIS_CACHE.*'nowhere'.*default, shared"):
        _check_redis_cache("nowhere")
    with pytest.raises(ImproperlyConfigured, match=r"REDIS_CACHE.*LocMemCache"):
        _check_redis_cache("default")


@pytest.mark.django_db(transaction=True)
def test_redis_named_through_a_django_redis_cache_is_the_redis_tier(settings, redis_url, upstream):
    from django.test import Client

    from coalescing import runtime
    from coalescing.tiers.redis import RedisTier

    settings.PRODUCT_API_BASE = upstream.url
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "shared": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "OPTIONS": {"CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool"},
        },
    }
    settings.COALESCING = {
        "REDIS_CACHE": "shared",
        "REDIS_PREFIX": f"cache-alias-{uuid.uuid4().hex}",
    }
    runtime.reset()
    try:
        coalescer = runtime.get_coalescer()
        tier = coalescer.guard("redis").tier
        assert isinstance(tier, RedisTier)
        from django_redis import get_redis_connection

        assert tier.client.connection_pool is get_redis_connection("shared").connection_pool
        assert Client().get("/products", {"productId": "ALIAS"}).status_code == 200
        coalescer.flush()
        coalescer.memory.clear()
        again = Client().get("/products", {"productId": "ALIAS"})
        assert again.headers["Cache-Status"].endswith("detail=redis")
        assert upstream.count == 1
    finally:
        runtime.reset()
