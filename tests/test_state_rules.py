"""The state rules, SQL against Python: ``CacheEntry.objects.in_state`` (the
admin's filter, ``purge_stale``) puts a row exactly where ``Policy.state``
(the hit path) puts its entry, on SQLite and PostgreSQL.

Times are whole multiples of 125 ms, so that ``fetched_at_ms / 1000`` is exact
in binary and Python's float age equals the database's integer one: a row
exactly on a window's edge is compared, not skipped. Windows are drawn both
as such multiples (ages land on their edges) and as any millisecond.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from coalescing.entry import Policy, State
from coalescing.models import ROW_STATES, STATES, CacheEntry, listed_state, row_state
from coalescing.policies import current_policies
from tests.conftest import make_entry

pytestmark = pytest.mark.django_db(
    databases=["default", "postgres"] if "postgres" in settings.DATABASES else ["default"]
)

TICK_MS = 125
windows = st.one_of(st.integers(0, 4_000).map(lambda t: t * TICK_MS), st.integers(0, 500_000))
policies = st.builds(Policy, windows, windows, windows, windows)
#: Up to ten days back, and a little ahead (another process's clock).
ages = st.integers(-100, 8_000).map(lambda t: t * TICK_MS) | st.integers(-100, 7_000_000).map(
    lambda t: t * TICK_MS
)
rows = st.lists(st.tuples(st.sampled_from([200, 404]), ages), min_size=1, max_size=12)
#: Epoch ms, a multiple of TICK_MS: from 2001 to 2065.
clocks = st.integers(8_000_000_000, 24_000_000_000).map(lambda t: t * TICK_MS)


def test_edges_are_exact_in_python():
    """The premise of the test below: the age Python computes is the integer one."""
    policy = Policy(1_000, 2_000, 3_000, 500)
    at = 1_700_000_000_125
    for age, expected in ((999, State.FRESH), (1_000, State.STALE), (3_000, State.DEAD)):
        e = make_entry("row-0", endpoint="x", fetched_at=(at - age) / 1000.0)
        assert policy.state(e, at / 1000.0) is expected


@hsettings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(policy=policies, clock=clocks, drawn=rows, registered=st.booleans())
def test_sql_state_is_python_state(db_alias, policy, clock, drawn, registered):
    endpoint = "products" if registered else "gone"  # a registered endpoint, and one no longer
    # The settings refuse a stale window shorter than the fresh one.
    policy = Policy(
        policy.fresh_ms,
        max(policy.fresh_ms, policy.stale_ms),
        policy.stale_if_error_ms,
        policy.negative_ms,
    )
    conf = {
        "FRESH_TTL_MS": policy.fresh_ms,
        "STALE_TTL_MS": policy.stale_ms,
        "STALE_IF_ERROR_MS": policy.stale_if_error_ms,
        "NEGATIVE_TTL_MS": policy.negative_ms,
    }
    entries = [
        make_entry(f"row-{i}", endpoint=endpoint, status=status, fetched_at=(clock - age) / 1000.0)
        for i, (status, age) in enumerate(drawn)
    ]
    objects = CacheEntry.objects.using(db_alias)
    with override_settings(COALESCING=conf):
        objects.all().delete()
        CacheEntry.objects.upsert_many(entries, using=db_alias)
        policies = current_policies()
        found = {
            name: set(objects.in_state(name, policies, now=clock).values_list("pk", flat=True))
            for name in ROW_STATES
        }
        dead = set(objects.dead(policies, now=clock).values_list("key_hash", flat=True))
    assert dead == found["dead"]
    for e in entries:
        name = row_state(policy.state(e, clock / 1000.0), e.negative)
        where = {state for state, keys in found.items() if e.key_hash in keys}
        assert where == {name, listed_state(name)}, (e.status, clock - e.fetched_at * 1000, name)
    # The admin's states partition the rows.
    listed = [found[state] for state in STATES]
    assert sum(map(len, listed)) == len(entries) == len(set().union(*listed))


@hsettings(max_examples=300, deadline=None)
@given(policy=policies, age=ages, status=st.sampled_from([200, 404]))
def test_windows_tile_the_age_axis(policy, age, status):
    """Each class's windows follow each other from -inf to inf; the state is the one
    whose window holds the age."""
    for negative in (False, True):
        ws = [w for w in policy.windows if w.negative is negative]
        assert ws[0].from_ms == float("-inf") and ws[-1].until_ms == float("inf")
        assert all(a.until_ms == b.from_ms for a, b in zip(ws, ws[1:], strict=False))
    at = 1_700_000_000_000
    e = make_entry("row-0", endpoint="x", status=status, fetched_at=(at - age) / 1000.0)
    (holding,) = [
        w for w in policy.windows if w.negative is e.negative and w.from_ms <= age < w.until_ms
    ]
    assert policy.state(e, at / 1000.0) is holding.state
