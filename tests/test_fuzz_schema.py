"""Fuzzing the API from its own OpenAPI schema (schemathesis), against a real server.

``/openapi.json`` of a running ``manage.py serve`` is the schema; schemathesis
sends what it allows (positive) and what it forbids (negative) to every
operation. No input may yield a 500; every error is JSON with a ``detail``;
input the schema forbids is refused with a 4xx. The number of examples is
bounded so that this runs in seconds.
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection

from testkit.servers import manage, serve

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 100


@pytest.fixture(scope="module")
def api_server(_upstream_server, tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.sqlite3"
    env = {
        "PRODUCT_API_BASE": _upstream_server.url,
        "DATABASE_URL": f"sqlite:///{db}",
        "UPSTREAM_TIMEOUT_MS": "2000",
    }
    migrated = manage("migrate", "--noinput", env=env)
    assert migrated.returncode == 0, migrated.stderr
    srv = serve(env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api_schema(api_server):
    return schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")


def test_the_schema_lists_both_endpoints(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {"/products", "/prices"} <= {operation.path for operation in operations}


# schemathesis's own pytest integration (``from_fixture``) does not run under
# pytest 9; its strategies under plain hypothesis do.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_yields_a_500_and_errors_say_why(api_schema, api_server, upstream, mode):
    statuses: list[int] = []

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=api_schema.as_strategy(generation_mode=mode))
    def fuzz(case):
        response = case.call(base_url=api_server.url, timeout=10)
        statuses.append(response.status_code)
        # The upstream is healthy: an answer is the data, or a 400 that says why.
        assert response.status_code in (200, 400), (
            case.as_curl_command(),
            response.status_code,
            response.text[:300],
        )
        if case.method.upper() == "HEAD":
            assert response.content == b""  # answered like GET, without the body
            return
        body = json.loads(response.content)
        if response.status_code == 400:
            assert isinstance(body, dict) and isinstance(body.get("detail"), str)
            assert body["detail"]
        # What the schema forbids, the API refuses (schemathesis knows which of its
        # mutations the schema cannot tell from valid input, such as an extra parameter).
        case.validate_response(response, checks=[not_a_server_error, negative_data_rejection])

    fuzz()
    assert len(statuses) >= MAX_EXAMPLES // 2
    if mode is GenerationMode.POSITIVE:
        assert 200 in statuses
    else:
        assert 400 in statuses
