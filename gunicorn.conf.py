"""gunicorn settings read from the working directory: prometheus-client's multiprocess mode.

With ``PROMETHEUS_MULTIPROC_DIR`` set (an existing, emptied directory), each
worker writes its metrics there and ``/metrics`` sums them; a worker that
exits is marked dead so its live gauges drop out. Unset: nothing happens.
"""

import os


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
