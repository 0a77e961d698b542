"""Daemon threads after a fork: the child starts its own on first use."""

from __future__ import annotations

import json
import os
import threading
import time
import warnings

from coalescing.alarms import Alarms
from coalescing.lease import Notifier
from coalescing.threads import DaemonThread


def in_child(fn) -> dict:
    """``fn()`` in a forked child; what it returned (JSON), or its error."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: on purpose
        pid = os.fork()
    if pid == 0:
        try:
            result = {"ok": fn()}
        except BaseException as exc:
            result = {"error": repr(exc)}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def test_a_daemon_thread_runs_again_in_a_forked_child():
    ran = []
    started = threading.Event()

    def target() -> None:
        ran.append(os.getpid())
        started.set()
        time.sleep(30)

    thread = DaemonThread(target, "test-daemon")
    assert thread.start() is True
    assert started.wait(5) and thread.start() is False  # running: not started twice

    def child() -> list:
        started.clear()
        first = thread.start()  # the parent's thread did not come along
        started.wait(5)
        return [first, thread.start(), ran[-1] == os.getpid()]

    assert in_child(child) == {"ok": [True, False, True]}


def test_alarms_fire_in_a_forked_child_and_not_the_parents():
    alarms = Alarms()
    parent_fired = threading.Event()
    alarms.at(time.monotonic() + 60, parent_fired.set)  # pending at the fork

    def child() -> list:
        fired = threading.Event()
        alarms.at(time.monotonic() + 0.05, fired.set)
        return [fired.wait(5), len(alarms._heap)]

    assert in_child(child) == {"ok": [True, 0]}  # the parent's alarm is not the child's
    assert not parent_fired.is_set()


def test_a_forked_notifier_is_another_sender():
    notifier = Notifier(None, None, channel="test", on_evict=lambda key_hash, name: None)
    assert in_child(lambda: notifier.sender)["ok"] != notifier.sender
