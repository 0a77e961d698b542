"""A burst of requests all at once, from gevent in a process of its own.

Hundreds of client threads in the driver would compete for one interpreter
with the fake upstream and time each other's waits; greenlets here cost
little and send the whole burst at once::

    python -m faults.burst < jobs.json > answers.json

``jobs.json``: ``[[url, path], ...]``. Each answer: ``{"status", "elapsed",
"headers", "body"}`` (status 0 and ``error`` when there was no answer).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402


def one(url: str, path: str, start: gevent.event.Event) -> dict:
    session = requests.Session()
    start.wait()
    began = time.monotonic()
    try:
        response = session.get(url + path, timeout=30)
    except requests.RequestException as exc:
        return {"status": 0, "elapsed": time.monotonic() - began, "error": type(exc).__name__}
    finally:
        session.close()
    return {
        "status": response.status_code,
        "elapsed": time.monotonic() - began,
        "headers": dict(response.headers),
        "body": response.text[:2000],
    }


def main() -> None:
    import gevent.event

    jobs = json.load(sys.stdin)
    start = gevent.event.Event()
    greenlets = [gevent.spawn(one, url, path, start) for url, path in jobs]
    gevent.sleep(0.2)  # every greenlet is waiting at the start line
    start.set()
    gevent.joinall(greenlets)
    json.dump([g.value for g in greenlets], sys.stdout)


if __name__ == "__main__":
    main()
