"""Prometheus metrics, every name prefixed ``coalescing_``.

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (an empty
directory, shared by the workers) and ``/metrics`` adds up every worker's
figures through prometheus-client's multiprocess mode.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("coalescing_requests", "Answers of coalesced endpoints.", ["endpoint", "cache"])
TIER_HITS = Counter("coalescing_tier_hits", "Entries found per tier.", ["endpoint", "tier"])
TIER_ERRORS = Counter(
    "coalescing_tier_errors", "Tier operations that failed (counted as misses).", ["tier", "op"]
)
COALESCED = Counter(
    "coalescing_coalesced_waiters", "Requests that waited on a call another started.", ["endpoint"]
)
STALE_SERVED = Counter("coalescing_stale_served", "Stale answers served.", ["endpoint", "reason"])
REFRESHES = Counter(
    "coalescing_background_refreshes", "Background refreshes started.", ["endpoint"]
)
UPSTREAM_CALLS = Counter(
    "coalescing_upstream_calls", "Upstream calls by outcome.", ["endpoint", "status"]
)
UPSTREAM_LATENCY = Histogram(
    "coalescing_upstream_latency_seconds",
    "Upstream call latency.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LEASE_TAKEOVERS = Counter(
    "coalescing_lease_takeovers", "Leases taken over after their holder lapsed.", ["endpoint"]
)
WAIT_TIMEOUTS = Counter(
    "coalescing_wait_timeouts", "Waiters that gave up on a call in progress.", ["endpoint"]
)
