"""The app in a project of its own: INSTALLED_APPS, migrate, one endpoint."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from testkit.servers import manage, serve

pytestmark = pytest.mark.e2e


def test_a_minimal_project_gets_coalescing_and_caching(tmp_path, upstream):
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.minimal_project.settings",
        "MINIMAL_DB": str(tmp_path / "minimal.sqlite3"),
        "WEATHER_API": upstream.url,
    }
    migrated = manage("migrate", "--noinput", env=env)
    assert migrated.returncode == 0, migrated.stderr
    shown = manage("showmigrations", "coalescing", env=env).stdout
    assert "[X] 0001_initial" in shown
    upstream.delay = 0.3
    srv = serve(env)
    try:
        with ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(lambda _: srv.get("/weather?city=paris"), range(30)))
        assert {a.status_code for a in answers} == {200}
        assert upstream.count == 1
        assert upstream.calls[0]["path"] == "/weather/paris"
        assert srv.get("/weather?city=paris").headers["X-Cache"] == "HIT"
        assert srv.get("/weather?city=Paris").status_code == 400
    finally:
        srv.stop()
