"""Actions run at a deadline, for blocking work that has no time bound of its own.

A socket timeout bounds one read, not a sequence of them: an upstream that
sends its headers one byte every 100 ms never trips it. An :class:`Alarm`
bounds the whole: at its deadline it runs an action (shut the socket down)
unless it was cancelled first. One daemon thread (a greenlet under gevent)
sleeps until the earliest deadline; it is started on first use and again
after a fork, since threads do not survive one.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from .threads import DaemonThread

log = logging.getLogger("coalescing")


class Alarm:
    __slots__ = ("action", "when")

    def __init__(self, when: float, action: Callable[[], None]) -> None:
        self.when = when
        self.action: Callable[[], None] | None = action


class Alarms:
    def __init__(self) -> None:
        self._cond = threading.Condition()  # guards _heap
        # Cancelled alarms stay until their time comes: at most calls/s x budget.
        self._heap: list[tuple[float, int, Alarm]] = []
        self._seq = itertools.count()
        self._thread = DaemonThread(self._run, "coalescing-alarms", on_fork=self._forked)

    def at(self, when: float, action: Callable[[], None]) -> Alarm:
        """Run ``action`` at ``when`` (``time.monotonic()``) unless cancelled."""
        alarm = Alarm(when, action)
        self._thread.start()
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), alarm))
            if self._heap[0][2] is alarm:
                self._cond.notify()
        return alarm

    @staticmethod
    def cancel(alarm: Alarm) -> None:
        alarm.action = None

    def _forked(self) -> None:
        # A forked child inherits the parent's sockets: its alarms are not ours.
        self._cond = threading.Condition()
        self._heap.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].action is None:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        break
                    self._cond.wait(delay)
                alarm = heapq.heappop(self._heap)[2]
                action, alarm.action = alarm.action, None
            if action is not None:
                try:
                    action()
                except Exception:  # an alarm's failure must not stop the others
                    log.exception("coalescing: an alarm's action failed")


#: The process's alarms.
ALARMS = Alarms()
