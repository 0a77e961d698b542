"""Faults of the persistent tier (issue 12): each against a ``serve`` of its own.

The cluster shares PostgreSQL; these two need what ``make run`` gives, an
SQLite file (or one that cannot be opened), so each starts its own
``manage.py serve`` next to the cluster, on the same fake upstream, without
Redis, and stops it afterwards.

- ``db_down_big``: the database cannot be opened and every answer is a
  300 kB body under a 16 MiB memory budget, distinct keys: what the process
  keeps must stay within the budget plus the stated overhead (the write
  buffer's eighth, see ``coalescing.tiers.database``) plus the process's own
  slack (:data:`RSS_SLACK_MIB`).
- ``sqlite_locked``: another process holds the SQLite file's write lock
  (``BEGIN IMMEDIATE``) for 8 s under load: the p99 of memory hits stays
  within 3x its unlocked value, and with a healthy upstream nothing answers
  504 (or anything but 200).
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from testkit.servers import manage, serve

from .load import Load, Recorder, Result, Sample, key_set, mixed, percentile, product_key
from .scenarios import Ctx, scenario
from .services import rss_bytes

BUDGET_MIB = 16
BODY_BYTES = 300_000
#: What a process needs beyond the cache's own account: the interpreter's
#: arenas and fragmentation, the bodies in flight (read from the upstream,
#: being answered), greenlet stacks. Measured: see docs/reliability.md.
RSS_SLACK_MIB = 40
#: A hit's p99 may grow to this many times its unlocked value (with a floor,
#: on a shared 2-core machine a p99 of a few ms is noise).
HIT_P99_RATIO = 3.0
HIT_P99_FLOOR_S = 0.005


def _env(ctx: Ctx, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in ctx.cluster.env.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(extra)
    return env


class _Rss:
    """The peak RSS of one process while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.start, self.peak = pid, rss_bytes(pid), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> _Rss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@scenario(
    "db_down_big", "Database down under large bodies (memory bound)", kind="backend", short=False
)
def db_down_big(ctx: Ctx) -> Result:
    title = "Database down under large bodies (memory bound)"
    missing = Path(tempfile.mkdtemp()) / "missing" / "db.sqlite3"
    budget = BUDGET_MIB * 2**20
    env = _env(
        ctx,
        DATABASE_URL=f"sqlite:///{missing}",
        MEMORY_CACHE_MAX_BYTES=str(budget),
        FRESH_TTL_MS="60000",
        STALE_TTL_MS="60000",
    )
    srv = serve(env)
    rec = Recorder()
    ns = ctx.prefix("DDB")
    length = ctx.seconds(30, least=8)
    upstream = ctx.upstream
    upstream.mode, upstream.size = "big", BODY_BYTES
    counter = iter(range(10**9))
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as s:
            while time.monotonic() < until:
                with lock:
                    n = next(counter)
                key = product_key(f"{ns}{n}")
                started = time.monotonic()
                try:
                    r = s.get(srv.url + key.query, timeout=20)
                    status, x_cache = r.status_code, r.headers.get("X-Cache", "")
                    problem = "" if status == 200 and len(r.content) == BODY_BYTES else "bad"
                except requests.RequestException:
                    status, x_cache, problem = 0, "", "no answer"
                rec.add(
                    Sample(
                        key,
                        srv.url,
                        "fault",
                        started,
                        time.monotonic() - started,
                        status,
                        x_cache,
                        problem,
                    )
                )

    try:
        time.sleep(1.0)
        with _Rss(srv.proc.pid) as rss:
            calls_before = upstream.count
            until = time.monotonic() + length
            threads = [threading.Thread(target=client) for _ in range(ctx.threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(length + 30)
        calls = upstream.count - calls_before
        dropped = _metric(srv.url, "coalescing_db_dropped_total", 'reason="buffer"')
    finally:
        upstream.mode, upstream.size = "ok", 0
        srv.stop()
    log = srv.log_path.read_text(errors="replace")
    result = Result("db_down_big", title, "", all_must_200=True)
    result.fill(rec.samples, 60.0)
    result.upstream_calls = calls
    result.fault_seconds = round(length, 1)
    result.fault = (
        f"DATABASE_URL in a directory that does not exist; {ctx.threads} clients ask distinct "
        f"keys, each a {BODY_BYTES // 1000} kB body; MEMORY_CACHE_MAX_BYTES {BUDGET_MIB} MiB"
    )
    growth = (rss.peak - rss.start) / 2**20
    allowed = BUDGET_MIB * 1.125 + RSS_SLACK_MIB
    result.rss_mb = {"serve": round(rss.peak / 2**20, 1)}
    result.rss_growth_mb = {"serve": round(growth, 1)}
    bodies = calls * BODY_BYTES / 2**20
    result.notes.append(
        f"RSS {rss.start / 2**20:.0f} MiB before, peak {rss.peak / 2**20:.0f} MiB: grew "
        f"{growth:.0f} MiB for {bodies:.0f} MiB of bodies fetched (allowed: budget "
        f"{BUDGET_MIB} + buffer {BUDGET_MIB / 8:g} + slack {RSS_SLACK_MIB} = {allowed:g} MiB)"
    )
    result.notes.append(
        f"{dropped:.0f} buffered writes dropped (coalescing_db_dropped{{reason=buffer}}); "
        f"'db failing' logged {log.count('db failing')} time(s), 'db is back' "
        f"{log.count('db is back')}"
    )
    if growth > allowed:
        result.failures.append(f"RSS grew {growth:.0f} MiB, more than {allowed:g} MiB")
    if log.count("db failing") != 1 or log.count("db is back"):
        result.failures.append("the outage was not logged exactly once")
    result.tracebacks = log.count("Traceback (most recent call last)")
    return result


def _metric(url: str, name: str, label: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and label in line
    )


def _hold_lock(path: str, seconds: float) -> subprocess.Popen:
    code = (
        "import sqlite3, time\n"
        f"c = sqlite3.connect({path!r}, isolation_level=None, timeout=10)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        f"time.sleep({seconds})\n"
        "c.execute('COMMIT')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


@scenario(
    "sqlite_locked", "SQLite write lock held 8 s by another process", kind="backend", short=False
)
def sqlite_locked(ctx: Ctx) -> Result:
    title = "SQLite write lock held 8 s by another process"
    path = str(Path(tempfile.mkdtemp()) / "db.sqlite3")
    env = _env(ctx, DATABASE_URL=f"sqlite:///{path}", FRESH_TTL_MS="60000", STALE_TTL_MS="60000")
    migrated = manage("migrate", "--noinput", env=env)
    if migrated.returncode != 0:
        raise RuntimeError(f"migrate failed: {migrated.stderr[-2000:]}")
    srv = serve(env)
    ns = ctx.prefix("SQL")
    warm = key_set(ns + "W", 24, warm=True)
    cold = key_set(ns + "C", 6000, warm=False)
    rec = Recorder()
    lock_s = 8.0
    calls_before = ctx.upstream.count
    try:
        with requests.Session() as s:
            for key in warm:
                s.get(srv.url + key.query, timeout=10)
        time.sleep(0.5)
        random.seed(1)
        with Load([srv.url], mixed(warm, cold, 0.25), rec, ctx.threads):
            rec.phase = "before"
            time.sleep(ctx.seconds(6, least=4))
            rec.phase = "fault"
            started = time.monotonic()
            holder = _hold_lock(path, lock_s)
            holder.wait(lock_s + 10)
            fault_s = time.monotonic() - started
            rec.phase = "after"
            time.sleep(2)
    finally:
        srv.stop()
    log = srv.log_path.read_text(errors="replace")
    result = Result("sqlite_locked", title, "", all_must_200=True)
    result.fill(rec.of_phase("fault"), 60.0)
    result.upstream_calls = ctx.upstream.count - calls_before
    result.fault_seconds = round(fault_s, 1)
    result.fault = (
        f"another process in BEGIN IMMEDIATE on the SQLite file for {lock_s:g} s; "
        f"{ctx.threads} clients, 75 % memory hits, 25 % misses (each a write), upstream healthy"
    )

    def hit_p99(phase: str) -> float:
        return percentile(
            [x.elapsed for x in rec.of_phase(phase) if x.x_cache == "HIT" and x.status == 200], 0.99
        )

    before, during = hit_p99("before"), hit_p99("fault")
    allowed = HIT_P99_RATIO * max(before, HIT_P99_FLOOR_S)
    misses = [x.elapsed for x in rec.of_phase("fault") if x.x_cache == "MISS"]
    result.notes.append(
        f"hit p99 {before * 1000:.1f} ms unlocked, {during * 1000:.1f} ms while locked "
        f"(allowed {allowed * 1000:.1f} ms); miss p99 while locked "
        f"{percentile(misses, 0.99) * 1000:.0f} ms over {len(misses)} misses"
    )
    result.notes.append(
        f"'db failing' logged {log.count('db failing')} time(s), 'db is back' "
        f"{log.count('db is back')} (a write held past its bound is a failure)"
    )
    if during > allowed:
        result.failures.append(f"hit p99 {during * 1000:.1f} ms > {allowed * 1000:.1f} ms")
    gateway = result.by_status.get("504", 0)
    if gateway:
        result.failures.append(f"{gateway} answers 504 with a healthy upstream")
    result.tracebacks = log.count("Traceback (most recent call last)")
    return result


#: The scenarios this module registers (importing it registers them).
DB_SCENARIOS = ("db_down_big", "sqlite_locked")
