"""Alarms: an action at a deadline unless cancelled first."""

from __future__ import annotations

import threading
import time

from coalescing.alarms import Alarms


def test_an_alarm_rings_at_its_deadline_and_a_cancelled_one_never():
    alarms = Alarms()
    rang: list[tuple[str, float]] = []
    done = threading.Event()
    start = time.monotonic()
    late = alarms.at(start + 0.3, lambda: (rang.append(("late", time.monotonic())), done.set()))
    cancelled = alarms.at(start + 0.1, lambda: rang.append(("cancelled", time.monotonic())))
    alarms.at(start + 0.2, lambda: rang.append(("early", time.monotonic())))
    alarms.cancel(cancelled)
    assert done.wait(5)
    assert [name for name, _ in rang] == ["early", "late"]
    assert rang[1][1] - start >= 0.3
    assert late.action is None  # rung once, never again


def test_a_failing_action_does_not_stop_the_others():
    alarms = Alarms()
    done = threading.Event()
    alarms.at(time.monotonic() + 0.05, lambda: 1 / 0)
    alarms.at(time.monotonic() + 0.1, done.set)
    assert done.wait(5)
