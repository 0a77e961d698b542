"""Bad settings stop every command at start-up, naming the variable."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from coalescing.conf import build, from_environ
from tests.servers import manage


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
