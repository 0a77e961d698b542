"""Refresh-ahead: when a hit on a fresh entry starts its refresh early.

XFetch (Vattani et al., VLDB 2015) draws, on each hit, whether to refresh
now, with a probability that grows as the time left shrinks relative to how
long a refresh takes. What matters at a high request rate is where the first
draw can succeed, since coalescing makes that one the only refresh: if it
comes earlier than the refresh's own duration before the entry goes stale,
the key is refreshed more than once per window; if later, the new value
lands after the old one went stale and some requests see ``STALE``.

So the duration used is the one that decides whether the new value lands in
time, measured in this process from the start of the flight to the value
being in its memory tier (tier reads, the lease, the upstream call, the
write; under load each wait also queues behind the other requests of the
process), smoothed with its deviation as TCP smooths round-trip times
(RFC 6298). A refresh may start from ``mean + deviation`` (``MARGIN_S`` at
least over the mean) before the entry goes stale and is certain once only
``mean`` is left; in between it is XFetch's draw. A refresh that needs
more than half the window is not started early at all: refreshing it
earlier would call the upstream more than once per window, and
stale-while-revalidate covers it.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

#: XFetch's beta: how steeply the chance of refreshing grows towards ``mean``.
BETA = 0.5
#: A refresh that needs more than this share of the fresh window is left to
#: stale-while-revalidate.
LATEST = 0.5
#: The least lead over the mean duration (a steady upstream has no deviation).
MARGIN_S = 0.01
#: Assumed until this process has seen a refresh of the endpoint land (its
#: refreshes may all come from another process, through Redis).
DEFAULT_S = 0.1
#: RFC 6298's gains for the mean and the deviation, and the deviation's weight:
#: 1, not TCP's 4. Landing late costs a few STALE answers, landing early a
#: call more than one per window; docs/benchmarks.md has the trade measured.
_ALPHA, _GAIN, _K = 1 / 8, 1 / 4, 1


@dataclasses.dataclass(slots=True)
class _Estimate:
    mean: float
    deviation: float

    @property
    def lead(self) -> float:
        return self.mean + max(_K * self.deviation, MARGIN_S)


class LandingTimes:
    """How long a refresh of each endpoint takes to land in this process."""

    def __init__(self) -> None:
        self._by_endpoint: dict[str, _Estimate] = {}

    def observe(self, endpoint: str, seconds: float) -> None:
        est = self._by_endpoint.get(endpoint)
        if est is None:
            # RFC 6298 starts the deviation at half the sample; a quarter
            # lets refresh-ahead start from the second window of a steady key.
            self._by_endpoint[endpoint] = _Estimate(seconds, seconds / 4)
            return
        est.deviation += _GAIN * (abs(est.mean - seconds) - est.deviation)
        est.mean += _ALPHA * (seconds - est.mean)

    def estimate(self, endpoint: str) -> tuple[float, float]:
        """``(mean, lead)`` in seconds: the expected landing time, and how long
        before staleness a refresh may start."""
        est = self._by_endpoint.get(endpoint) or _ASSUMED
        return est.mean, est.lead


_ASSUMED = _Estimate(DEFAULT_S, DEFAULT_S / 4)


def near_end(left_s: float, fresh_s: float) -> bool:
    """Whether the window is far enough gone for :func:`due` to be asked at all."""
    return left_s <= fresh_s * LATEST


def due(
    left_s: float,
    fresh_s: float,
    mean_s: float,
    lead_s: float,
    draw: Callable[[], float] = random.random,
) -> bool:
    """Whether a hit with ``left_s`` of its ``fresh_s`` window left refreshes now."""
    if not near_end(lead_s, fresh_s) or left_s > lead_s:
        return False
    if left_s <= mean_s:
        return True
    return -BETA * mean_s * math.log(1.0 - draw()) >= left_s - mean_s
