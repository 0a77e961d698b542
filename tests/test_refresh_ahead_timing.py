"""When refresh-ahead starts a refresh: the landing-time estimate and the draw."""

from __future__ import annotations

import random

import pytest

from coalescing import refresh_ahead
from coalescing.refresh_ahead import LandingTimes, due

FRESH_S = 1.0


def test_the_first_landing_sets_the_mean_and_a_lead_a_quarter_longer():
    times = LandingTimes()
    times.observe("prices", 0.2)
    mean, lead = times.estimate("prices")
    assert mean == pytest.approx(0.2)
    assert lead == pytest.approx(0.25)


def test_a_steady_duration_brings_the_lead_down_to_the_mean_plus_the_margin():
    times = LandingTimes()
    for _ in range(60):
        times.observe("prices", 0.25)
    mean, lead = times.estimate("prices")
    assert mean == pytest.approx(0.25)
    assert lead == pytest.approx(0.25 + refresh_ahead.MARGIN_S, abs=1e-3)


def test_a_jittery_duration_keeps_a_wider_lead_than_a_steady_one():
    steady, jittery = LandingTimes(), LandingTimes()
    rng = random.Random(7)
    for _ in range(200):
        steady.observe("e", 0.2)
        jittery.observe("e", 0.2 + rng.uniform(-0.05, 0.05))
    assert jittery.estimate("e")[1] > steady.estimate("e")[1] + 0.01


def test_endpoints_are_estimated_apart_and_default_before_any_landing():
    times = LandingTimes()
    times.observe("slow", 0.4)
    assert times.estimate("slow")[0] == pytest.approx(0.4)
    assert times.estimate("other")[0] == refresh_ahead.DEFAULT_S


@pytest.mark.parametrize("left", [0.31, 0.5, 0.9])
def test_no_refresh_before_the_lead(left):
    assert not due(left, FRESH_S, 0.2, 0.3, draw=lambda: 0.999999)


@pytest.mark.parametrize("left", [0.2, 0.1, 0.0])
def test_a_refresh_is_certain_once_only_the_mean_is_left(left):
    assert due(left, FRESH_S, 0.2, 0.3, draw=lambda: 0.0)


def test_between_mean_and_lead_it_is_a_draw_that_grows_towards_the_mean():
    rng = random.Random(3)

    def share(left: float) -> float:
        return sum(due(left, FRESH_S, 0.2, 0.3, draw=rng.random) for _ in range(4000)) / 4000

    near_lead, near_mean = share(0.29), share(0.21)
    assert 0.0 < near_lead < near_mean < 1.0


def test_a_refresh_that_needs_over_half_the_window_is_never_started_early():
    # A 0.8 s upstream and a 1 s window: starting early would call it twice a window.
    assert not due(0.0, FRESH_S, 0.8, 0.9, draw=lambda: 0.999999)
    assert due(0.0, FRESH_S, 0.4, 0.5, draw=lambda: 0.0)
