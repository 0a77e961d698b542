"""Prometheus metrics, every name prefixed ``coalescing_``.

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` (an empty
directory, shared by the workers) and ``/metrics`` adds up every worker's
figures through prometheus-client's multiprocess mode (``gunicorn.conf.py``
tells it when a worker exits). The directory must exist and be emptied before
the server starts, or figures of an earlier run are added in.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Metric

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
UPSTREAM_REFUSED = Counter(
    "coalescing_upstream_refused",
    "Upstream calls not made: over the concurrency cap, or held back after failures.",
    ["endpoint", "reason"],
)
LEASE_TAKEOVERS = Counter(
    "coalescing_lease_takeovers", "Leases taken over after their holder lapsed.", ["endpoint"]
)
WAIT_TIMEOUTS = Counter(
    "coalescing_wait_timeouts", "Waiters that gave up on a call in progress.", ["endpoint"]
)
DB_DROPPED = Counter(
    "coalescing_db_dropped",
    "Entries the persistent tier did not keep: its write buffer was full (buffer), "
    "or the oldest rows removed to keep DATABASE_MAX_BYTES (size).",
    ["reason"],
)
DB_BUFFER_BYTES = Gauge(
    "coalescing_db_buffer_bytes",
    "Bytes of entries waiting to be written to the database (buffered or being written).",
    multiprocess_mode="livesum",
)


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: Counter, *values: str) -> Any:
    """``metric.labels(*values)``, kept for the next time.

    ``labels()`` builds and checks a tuple and takes a lock on every call:
    on the hit path that was a tenth of our cost over a bare endpoint. Only
    for labels of a bounded set (endpoint names, outcomes, tier names).
    """
    key = (id(metric), values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


PREFIX = "coalescing_"


class _OwnMetrics:
    """The ``coalescing_`` families of a registry, and no others: prometheus-client's
    default process and platform collectors are left out of ``/metrics``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return (f for f in self.registry.collect() if f.name.startswith(PREFIX))


def registry_in_force() -> _OwnMetrics:
    """This process's metrics, or every worker's in multiprocess mode; ``collect()`` them."""
    if multiprocess_mode():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return _OwnMetrics(registry)
    return _OwnMetrics(REGISTRY)


def totals(source: _OwnMetrics | None = None) -> dict[str, dict[str, float]]:
    """Every ``coalescing_`` counter summed by each of its labels.

    ``totals()["coalescing_tier_hits"]["tier=memory"]`` is the memory tier's hits
    over every endpoint; ``[""]`` is the sum over everything. Histograms give
    their ``_count`` and ``_sum``. Figures run since the process (or, in
    multiprocess mode, the server) started.
    """
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in (source or registry_in_force()).collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                name = sample.name[: -len("_total")]
            elif sample.name.endswith(("_count", "_sum")) and family.type == "histogram":
                name = sample.name
            else:
                continue  # _created, _bucket
            out[name][""] += sample.value
            for label, value in sample.labels.items():
                out[name][f"{label}={value}"] += sample.value
    return out
