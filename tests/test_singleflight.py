"""The single flight alone: with real threads, and with greenlets in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from coalescing.singleflight import FlightTimeout, SingleFlight


def test_concurrent_callers_share_one_call_with_threads():
    flights: SingleFlight[int] = SingleFlight()
    calls = 0
    release = threading.Event()

    def work() -> int:
        nonlocal calls
        calls += 1
        release.wait(5)
        return 42

    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def caller() -> None:
        value = flights.do("k", work, timeout=5)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join(5)
    assert calls == 1
    assert len(results) == 50
    assert all(value == 42 for value, _ in results)
    assert sum(1 for _, shared in results if not shared) == 1  # one leader
    assert not flights.in_flight("k")  # the key is freed afterwards


def test_every_waiter_gets_the_same_exception():
    flights: SingleFlight[int] = SingleFlight()
    release = threading.Event()
    error = ValueError("upstream broke")

    def work() -> int:
        release.wait(5)
        raise error

    seen: list[BaseException] = []

    def caller() -> None:
        try:
            flights.do("k", work, timeout=5)
        except ValueError as exc:
            seen.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    release.set()
    for t in threads:
        t.join(5)
    assert len(seen) == 10
    assert all(exc is error for exc in seen)
    assert len(flights) == 0


def test_a_waiter_timeout_does_not_cancel_the_call():
    flights: SingleFlight[str] = SingleFlight()
    finished = threading.Event()

    def work() -> str:
        time.sleep(0.3)
        finished.set()
        return "done"

    with pytest.raises(FlightTimeout):
        flights.do("k", work, timeout=0.05)
    # A later caller joins the same call, which ran on.
    value, shared = flights.do("k", work, timeout=5)
    assert value == "done"
    assert shared is True
    assert finished.is_set()
    assert not flights.in_flight("k")


def test_distinct_keys_do_not_wait_for_each_other():
    flights: SingleFlight[str] = SingleFlight()
    slow_release = threading.Event()
    flight, _ = flights.start("slow", lambda: (slow_release.wait(5), "slow")[1])
    value, shared = flights.do("fast", lambda: "fast", timeout=1)
    assert (value, shared) == ("fast", False)
    assert not flight.done.is_set()
    slow_release.set()
    assert flight.result(5) == "slow"


def test_after_a_call_a_new_call_starts():
    flights: SingleFlight[int] = SingleFlight()
    counter = iter(range(100))
    first, _ = flights.do("k", lambda: next(counter), timeout=1)
    second, shared = flights.do("k", lambda: next(counter), timeout=1)
    assert (first, second, shared) == (0, 1, False)


GREENLET_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import gevent, time
    from coalescing.singleflight import SingleFlight, FlightTimeout

    flights = SingleFlight()
    calls = []
    def work():
        calls.append(1)
        time.sleep(0.2)  # cooperative: patched
        return "v"
    results = gevent.joinall([gevent.spawn(flights.do, "k", work, 5) for _ in range(500)])
    values = [g.value for g in results]
    assert len(calls) == 1, calls
    assert all(v == ("v", True) or v == ("v", False) for v in values), values[:3]
    assert sum(1 for v in values if v[1] is False) == 1
    assert len(flights) == 0

    # A waiter that times out leaves the call running for the others.
    def slow():
        time.sleep(0.3)
        return "late"
    try:
        flights.do("t", slow, 0.05)
        raise SystemExit("no timeout")
    except FlightTimeout:
        pass
    assert flights.do("t", slow, 5) == ("late", True)

    # The caller's greenlet killed while waiting cancels nothing.
    done = []
    def slow2():
        time.sleep(0.2)
        done.append(1)
        return "x"
    g = gevent.spawn(flights.do, "c", slow2, 5)
    gevent.sleep(0.05)
    g.kill()
    gevent.sleep(0.3)
    assert done == [1]
    print("OK", len(calls))
    """
)


def test_many_greenlets_under_gevent():
    out = subprocess.run(
        [sys.executable, "-c", GREENLET_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK 1"
