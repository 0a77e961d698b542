"""The database tier's reader threads, on their own."""

from __future__ import annotations

import threading
import time

import pytest

from coalescing.tiers.readers import Readers, ReadersBusy, ReadTimeout


@pytest.fixture
def readers():
    events: list[str] = []
    pool = Readers(
        2, 3, on_error=lambda: events.append("error"), on_exit=lambda: events.append("exit")
    )
    pool.events = events
    yield pool
    pool.close()


def test_a_result_and_an_error_reach_the_caller(readers):
    assert readers.run(lambda: 42, 1.0) == 42
    with pytest.raises(ZeroDivisionError):
        readers.run(lambda: 1 / 0, 1.0)
    assert readers.events == ["error"]  # in the reader: drop its broken connection


def test_a_slow_read_is_given_up_on_and_the_reader_goes_on(readers):
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(ReadTimeout):
        readers.run(lambda: release.wait(5), 0.1)
    assert time.monotonic() - started < 1.0
    release.set()
    assert readers.run(lambda: "next", 1.0) == "next"


def test_reads_past_the_queue_bound_fail_at_once(readers):
    release = threading.Event()
    blockers = [
        threading.Thread(target=lambda: readers.run(lambda: release.wait(5), 5)) for _ in range(5)
    ]
    for t in blockers:
        t.start()
    deadline = time.monotonic() + 5
    while readers._jobs.qsize() < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        with pytest.raises(ReadersBusy):
            readers.run(lambda: None, 1.0)
    finally:
        release.set()
        for t in blockers:
            t.join(5)


def test_close_stops_the_readers_and_lets_go_of_their_connections(readers):
    assert readers.run(lambda: 1, 1.0) == 1
    readers.close()
    deadline = time.monotonic() + 5
    while readers.events.count("exit") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # Each of the two threads ran its exit hook (closing its connection) and stopped.
    assert readers.events.count("exit") == 2
    assert readers._threads == 0
    with pytest.raises(ReadersBusy):
        readers.run(lambda: 1, 1.0)
