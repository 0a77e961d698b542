"""Daemon threads that start on first use and again in a forked child.

A forked process (a gunicorn worker) has only the thread that forked: the
alarms, the pub/sub listener, the database writer and readers of its parent
are gone, and the locks they held may be held forever. What a module keeps
of them is forgotten in the child by ``os.register_at_fork``, so that the
next use starts them anew.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

#: Bound methods to call in a forked child, held weakly: an object that is
#: gone needs no reset.
_at_fork: list[weakref.WeakMethod[Callable[[], None]]] = []


def after_fork_in_child(method: Callable[[], None]) -> None:
    """Call ``method`` (a bound method) in every child this process forks."""
    _at_fork.append(weakref.WeakMethod(method))  # type: ignore[arg-type]


def _forked() -> None:
    alive = [ref for ref in _at_fork if ref() is not None]
    _at_fork[:] = alive
    for ref in alive:
        method = ref()
        if method is not None:
            method()


os.register_at_fork(after_in_child=_forked)


class DaemonThread:
    """One daemon thread running ``target``: :meth:`start` starts it unless it
    runs already (in this process); ``on_fork`` runs in a forked child first."""

    def __init__(
        self, target: Callable[[], None], name: str, on_fork: Callable[[], None] | None = None
    ) -> None:
        self.target = target
        self.name = name
        self.on_fork = on_fork
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        after_fork_in_child(self._forget)

    @property
    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> bool:
        """Start the thread if it is not running; whether this call started it."""
        if self.alive:
            return False
        with self._lock:
            if self.alive:
                return False
            self._thread = threading.Thread(target=self.target, name=self.name, daemon=True)
            self._thread.start()
            return True

    def _forget(self) -> None:
        self._thread = None
        self._lock = threading.Lock()  # the parent's holder did not come along
        if self.on_fork is not None:
            self.on_fork()
