"""Under gevent the database tier blocks nobody but itself (issue 12, findings 2, 8, 9).

sqlite3 is C and not cooperative: a call made in a greenlet holds the whole
hub. The probes run in a gevent-patched process of their own (this file,
run as a script) with a real SQLite file, and measure the longest stall of
the hub (a greenlet that ticks every 10 ms) while

- another process holds the file's write lock and the tier must write
  (finding 2: its busy wait froze the process);
- a reader thread runs a slow SQLite query (finding 8: every SQLite call of
  the readers held the process).

The end-to-end tests do the same through ``manage.py serve``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.servers import ROOT, manage, serve

#: A query that keeps SQLite busy in C for a while (a few hundred ms here).
SLOW_QUERY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
    "SELECT count(*) FROM c"
)


def lock_holder(path: str, seconds: float) -> subprocess.Popen:
    """Another process in ``BEGIN IMMEDIATE`` on ``path`` for ``seconds``; ready once started."""
    code = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({path!r}, isolation_level=None, timeout=10)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        f"time.sleep({seconds})\n"
        "c.execute('COMMIT')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def migrated_sqlite(tmp_path: Path) -> str:
    path = str(tmp_path / "db.sqlite3")
    done = manage("migrate", "-v", "0", env={"DATABASE_URL": f"sqlite:///{path}"})
    assert done.returncode == 0, done.stderr
    return path


def probe(kind: str, path: str) -> dict:
    code = (
        "from gevent import monkey; monkey.patch_all()\n"  # before anything else is imported
        "import sys; from tests.test_db_gevent import _main; _main(sys.argv[1], sys.argv[2])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, kind, path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "coalesce_project.settings"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_write_lock_held_by_another_process_stalls_only_the_writer(tmp_path):
    result = probe("lock", migrated_sqlite(tmp_path))
    # The lock is held 3 s; the writer waited on it in its thread, the hub went on.
    assert result["max_gap_s"] < 0.5, result
    assert result["read_s"] < 0.5, result  # a read under the lock (WAL) is not held up
    assert result["written"], result  # and the write got through once the lock was gone


def test_a_slow_sqlite_call_of_a_reader_does_not_hold_the_hub(tmp_path):
    result = probe("slow_read", migrated_sqlite(tmp_path))
    assert result["query_s"] > 0.2, result  # it was slow...
    assert result["max_gap_s"] < result["query_s"] / 3, result  # ...for its reader alone


@pytest.mark.e2e
def test_serve_answers_hits_and_misses_while_another_process_holds_the_write_lock(
    tmp_path, upstream
):
    import requests

    path = migrated_sqlite(tmp_path)
    env = {"DATABASE_URL": f"sqlite:///{path}", "PRODUCT_API_BASE": upstream.url}
    srv = serve(env)
    try:
        with requests.Session() as s:
            for i in range(5):
                assert s.get(f"{srv.url}/products?productId=W{i}").status_code == 200
            time.sleep(0.3)  # written behind
            holder = lock_holder(path, 4.0)
            hits, misses = [], []
            started = time.monotonic()
            n = 0
            while time.monotonic() - started < 3.5:
                n += 1
                t0 = time.monotonic()
                r = s.get(f"{srv.url}/products?productId=W{n % 5}")
                hits.append((time.monotonic() - t0, r.status_code))
                t0 = time.monotonic()
                r = s.get(f"{srv.url}/products?productId=C{n}")
                misses.append((time.monotonic() - t0, r.status_code))
            holder.wait(10)
    finally:
        assert srv.stop() == 0
    assert {status for _, status in hits + misses} == {200}
    # A memory hit takes about a millisecond; held by the lock it took seconds.
    assert max(elapsed for elapsed, _ in hits) < 1.0, max(hits)
    assert max(elapsed for elapsed, _ in misses) < 2.0, max(misses)
    assert len(hits) > 50  # the server went on answering during the lock


@pytest.mark.e2e
def test_serve_with_its_database_down_stops_cleanly_and_logs_the_outage_once(tmp_path, upstream):
    """A database that cannot be opened: answers 200 from the upstream, one "failing"
    line, no "back", and a graceful stop without a traceback (finding 9)."""
    import requests

    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'missing' / 'db.sqlite3'}",
        "PRODUCT_API_BASE": upstream.url,
    }
    srv = serve(env)
    try:
        with requests.Session() as s:
            statuses = {s.get(f"{srv.url}/products?productId=D{i}").status_code for i in range(300)}
    finally:
        code = srv.stop()
    log = srv.log_path.read_text(errors="replace")
    assert statuses == {200}
    assert code == 0, log[-3000:]
    assert log.count("db failing") == 1, log[-3000:]
    assert log.count("db is back") == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


# -- the probes, run in a gevent-patched process -------------------------------------


def _main(kind: str, path: str) -> None:
    """In a process that gevent patched first (see :func:`probe`)."""
    import gevent

    os.environ["DATABASE_URL"] = f"sqlite:///{path}"
    import django

    django.setup()
    from coalescing.tiers.database import DatabaseTier
    from tests.conftest import make_entry

    gaps: list[float] = []
    stop = False

    def ticker() -> None:
        last = time.monotonic()
        while not stop:
            gevent.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last - 0.01)
            last = now

    tier = DatabaseTier(flush_interval=0.01)
    tier.set(make_entry("before", key_hash="before"))
    tier.flush()
    out: dict[str, object] = {}
    tick = gevent.spawn(ticker)
    gevent.sleep(0.2)
    if kind == "lock":
        holder = lock_holder(path, 3.0)
        tier.set(make_entry("during", key_hash="during"))  # the writer must wait for the lock
        t0 = time.monotonic()
        out["read_ok"] = tier.get("before") == make_entry("before", key_hash="before")
        out["read_s"] = time.monotonic() - t0
        gevent.sleep(3.3)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while tier.pending and time.monotonic() < deadline:
            gevent.sleep(0.05)
        from coalescing.models import CacheEntry

        out["written"] = CacheEntry.objects.filter(pk="during").exists()
    else:
        from django.db import connections

        def slow() -> float:
            t0 = time.monotonic()
            with connections["default"].cursor() as cursor:
                cursor.execute(SLOW_QUERY)
                cursor.fetchone()
            return time.monotonic() - t0

        out["query_s"] = max(tier._readers.run(slow, 30) for _ in range(3))
    stop = True
    tick.join()
    out["max_gap_s"] = round(max(gaps), 3)
    tier.close()
    print(json.dumps(out))
