"""gunicorn server hooks for the app: ``gunicorn -c python:coalescing.gunicorn ...``.

With ``PROMETHEUS_MULTIPROC_DIR`` set (an existing, emptied folder), each
worker writes its metrics there and ``/metrics`` sums them; a worker that
exits is marked dead here, so its live gauges drop out. Unset: nothing
happens. A project with a config file of its own imports the hook into it:
``from coalescing.gunicorn import child_exit``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["child_exit"]


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
