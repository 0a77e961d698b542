"""The scenarios: one fault each, injected into a running cluster under load.

Each scenario warms some keys (so that they have a value that may be served
stale), lets them go stale, injects its fault while threads ask a mix of
those keys and cold ones at every server, heals the fault, and checks that
every key answers 200 again. The figures of the fault phase become a
:class:`~faults.load.Result`.

``scale`` shortens the phases: 1.0 for ``make faults``, about 0.3 for the
short form that ``make test`` runs.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from testkit.upstream import FakeUpstream

from .cluster import FRESH_S, STALE_S, UPSTREAM_TIMEOUT_S, WAIT_BOUND_S, Cluster
from .load import (
    Key,
    Load,
    Recorder,
    Result,
    Stampedes,
    ask,
    burst,
    key_set,
    mixed,
    product_key,
)
from .services import open_fds, pid_of_local_port, raise_fd_limit

_counter = itertools.count(1)


@dataclass
class Ctx:
    cluster: Cluster
    upstream: FakeUpstream
    scale: float = 1.0
    threads: int = 8

    def seconds(self, full: float, least: float = 1.5) -> float:
        return max(least, full * self.scale)

    def prefix(self, tag: str) -> str:
        """A fresh key prefix: no scenario sees another's entries."""
        return f"{tag}{next(_counter)}x{uuid.uuid4().hex[:4]}"


@dataclass
class Scenario:
    name: str
    title: str
    run: Callable[[Ctx], Result]
    short: bool = True  # part of the short form
    kind: str = "upstream"


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, title: str, *, short: bool = True, kind: str = "upstream"):
    def register(fn: Callable[[Ctx], Result]) -> Callable[[Ctx], Result]:
        SCENARIOS[name] = Scenario(name, title, fn, short, kind)
        return fn

    return register


# -- shared steps ------------------------------------------------------------------


def heal(upstream: FakeUpstream) -> None:
    upstream.mode, upstream.status, upstream.delay, upstream.size = "ok", 200, 0.0, 0


def warm_up(ctx: Ctx, keys: list[Key]) -> None:
    """Each key asked once (stored in every tier), then left to go stale."""
    rec = Recorder()
    with requests.Session() as session:
        for i, key in enumerate(keys):
            sample = ask(session, ctx.cluster.urls[i % 2], key, rec, "warm")
            if sample.status != 200 or sample.problem:
                raise RuntimeError(f"warm-up of {key.query} failed: {sample}")
    time.sleep(0.3)  # the write-behind reaches the database


def settle(upstream: FakeUpstream, timeout: float = 15.0) -> None:
    """Until the upstream has nothing in hand (calls left over from a fault)."""
    deadline = time.monotonic() + timeout
    while upstream.inflight and time.monotonic() < deadline:
        time.sleep(0.1)


def recover(ctx: Ctx, keys: list[Key], deadline_s: float = 20.0) -> float | None:
    """Seconds until every key answers 200 at every server, or None."""
    started = time.monotonic()
    rec = Recorder()
    with requests.Session() as session:
        for key in keys:
            for url in ctx.cluster.urls:
                while ask(session, url, key, rec, "recovery").status != 200:
                    if time.monotonic() - started > deadline_s:
                        return None
                    time.sleep(0.1)
    return time.monotonic() - started


class RssSampler:
    """Peak RSS of every serving process while the block runs."""

    def __init__(self, cluster: Cluster, every: float = 0.25) -> None:
        self.cluster, self.every = cluster, every
        self.peak: dict[str, int] = {}
        self.start: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, rss in self.cluster.rss().items():
                self.peak[name] = max(self.peak.get(name, 0), rss)
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self.start = self.cluster.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def peak_mb(self) -> dict[str, float]:
        return {k: round(v / 2**20, 1) for k, v in sorted(self.peak.items())}


def tracebacks(cluster: Cluster) -> int:
    """Tracebacks in the server logs, but for the database writer's retry warnings
    (it logs one with a traceback for every failed retry while the database is down)."""
    count, previous = 0, ""
    for line in cluster.logs().splitlines():
        if line.startswith("Traceback (most recent call last)"):
            if "will retry" not in previous and "direct cause" not in previous:
                count += 1
        elif line.strip():
            previous = line
    return count


def writer_retries(cluster: Cluster) -> int:
    return cluster.logs().count("database write failed, will retry")


@dataclass
class Run:
    """One scenario's bookkeeping around its fault phase."""

    ctx: Ctx
    name: str
    title: str
    fault: str
    all_must_200: bool = False
    rec: Recorder = field(default_factory=Recorder)
    calls_before: int = 0
    traces_before: int = 0
    retries_before: int = 0
    started: float = 0.0
    ended: float = 0.0

    def __post_init__(self) -> None:
        settle(self.ctx.upstream)
        self.traces_before = tracebacks(self.ctx.cluster)
        self.retries_before = writer_retries(self.ctx.cluster)

    def begin(self) -> None:
        self.calls_before = self.ctx.upstream.count
        self.started = time.monotonic()

    def end(self) -> None:
        self.ended = time.monotonic()
        self.calls = self.ctx.upstream.count - self.calls_before

    def result(self, cut: int = 0, phases: tuple[str, ...] = ("fault",)) -> Result:
        r = Result(self.name, self.title, self.fault, all_must_200=self.all_must_200)
        r.cut_by_kill = cut
        r.fill(self.rec.of_phase(*phases), WAIT_BOUND_S)
        r.upstream_calls = self.calls
        r.fault_seconds = round(self.ended - self.started, 1)
        r.tracebacks = tracebacks(self.ctx.cluster) - self.traces_before
        retries = writer_retries(self.ctx.cluster) - self.retries_before
        if retries:
            r.notes.append(
                f"the database writers logged {retries} retry warnings, each with a traceback"
            )
        if not self.ctx.cluster.alive():
            r.failures.append("a server process died")
        return r


def upstream_fault(
    ctx: Ctx,
    name: str,
    title: str,
    fault: str,
    inject: Callable[[FakeUpstream], None],
    during: Callable[[Ctx, float], None] | None = None,
    seconds: float = 8.0,
    all_must_200: bool = False,
    cold_share: float = 0.25,
) -> Result:
    run = Run(ctx, name, title, fault, all_must_200)
    ns = ctx.prefix(name[:3].upper())
    warm = key_set(ns + "W", 24, warm=True)
    cold = key_set(ns + "C", 16, warm=False)
    warm_up(ctx, warm)
    time.sleep(FRESH_S + 0.1)  # every warm key is stale now; expired STALE_S later
    length = ctx.seconds(seconds, least=STALE_S)  # long enough to see expired keys too
    with RssSampler(ctx.cluster) as rss:
        run.begin()
        inject(ctx.upstream)
        with Load(ctx.cluster.urls, mixed(warm, cold, cold_share), run.rec, ctx.threads):
            if during is None:
                time.sleep(length)
            else:
                during(ctx, time.monotonic() + length)
        run.end()
        heal(ctx.upstream)
    result = run.result()
    result.rss_mb = rss.peak_mb()
    result.rss_growth_mb = {
        name: round((rss_bytes - rss.start.get(name, rss_bytes)) / 2**20, 1)
        for name, rss_bytes in ctx.cluster.rss().items()
    }
    result.recovery_s = recover(ctx, warm + cold)
    if result.recovery_s is None:
        result.failures.append("some key did not answer 200 again within 20 s of the heal")
    calls_per_s = result.upstream_calls / max(result.fault_seconds, 0.1)
    result.notes.append(
        f"{calls_per_s:.0f} upstream calls/s in the fault phase (40 keys, 3 processes)"
    )
    return result


# -- upstream faults -----------------------------------------------------------------


@scenario("baseline", "No fault (reference)", short=False)
def baseline(ctx: Ctx) -> Result:
    return upstream_fault(
        ctx, "baseline", "No fault (reference)", "none", lambda u: None, all_must_200=True
    )


@scenario("slow", "Upstream slower than the timeout")
def slow(ctx: Ctx) -> Result:
    delay = UPSTREAM_TIMEOUT_S + 1.5

    def inject(u: FakeUpstream) -> None:
        u.delay = delay

    return upstream_fault(
        ctx, "slow", "Upstream slower than the timeout", f"every answer after {delay:.1f}s", inject
    )


@scenario("5xx_bursts", "5xx bursts")
def bursts(ctx: Ctx) -> Result:
    def during(ctx: Ctx, until: float) -> None:
        u = ctx.upstream
        for status in itertools.cycle([503, 0, 500, 0, 502, 0]):
            if time.monotonic() >= until:
                break
            u.mode, u.status = ("status", status) if status else ("ok", 200)
            time.sleep(0.5)

    return upstream_fault(
        ctx,
        "5xx_bursts",
        "5xx bursts",
        "503, 500, 502 for 0.5 s each, healthy 0.5 s between",
        lambda u: None,
        during,
    )


@scenario("down", "Upstream down (503 throughout)", short=False)
def down(ctx: Ctx) -> Result:
    def inject(u: FakeUpstream) -> None:
        u.mode, u.status = "status", 503

    title = "Upstream down (503 throughout)"
    return upstream_fault(ctx, "down", title, "503 to every call", inject)


def _mode(mode: str, size: int = 0) -> Callable[[FakeUpstream], None]:
    def inject(u: FakeUpstream) -> None:
        u.mode, u.size = mode, size

    return inject


@scenario("reset", "Connection reset mid-body")
def reset(ctx: Ctx) -> Result:
    return upstream_fault(
        ctx,
        "reset",
        "Connection reset mid-body",
        "headers promise 100 kB, 12 bytes come, the socket closes",
        _mode("reset"),
    )


@scenario("endless", "A body that never ends")
def endless(ctx: Ctx) -> Result:
    return upstream_fault(
        ctx,
        "endless",
        "A body that never ends",
        "one byte every 50 ms, no length",
        _mode("trickle"),
    )


@scenario("slow_headers", "Headers that trickle in", short=False)
def slow_headers(ctx: Ctx) -> Result:
    result = upstream_fault(
        ctx,
        "slow_headers",
        "Headers that trickle in",
        "a header one byte every 50 ms for 10 s, then the body",
        _mode("slow_headers", 200),
    )
    return result


@scenario("invalid_json", "Invalid JSON", short=False)
def invalid_json(ctx: Ctx) -> Result:
    return upstream_fault(
        ctx, "invalid_json", "Invalid JSON", "200 with an HTML body", _mode("invalid")
    )


def _kept_memory(result: Result) -> Result:
    """Memory that stays after the fault: the bodies read up to the cap are kept."""
    grown = max(result.rss_growth_mb.values(), default=0.0)
    if grown > 64:
        result.failures.append(f"a server's memory grew by {grown:.0f} MiB and stayed")
    return result


@scenario("big_body", "50 MB body, no Content-Length")
def big_body(ctx: Ctx) -> Result:
    return _kept_memory(
        upstream_fault(
            ctx,
            "big_body",
            "50 MB body, no Content-Length",
            "200 streaming 50 MB, ends when the socket closes (cap: 1 MiB)",
            _mode("huge_unsized", 50_000_000),
        )
    )


@scenario("big_declared", "50 MB body, Content-Length declared", short=False)
def big_declared(ctx: Ctx) -> Result:
    return upstream_fault(
        ctx,
        "big_declared",
        "50 MB body, Content-Length declared",
        "200 with Content-Length: 50000000, streamed",
        _mode("huge", 50_000_000),
    )


@scenario("gzip_bomb", "gzip bomb", short=False)
def gzip_bomb(ctx: Ctx) -> Result:
    return _kept_memory(
        upstream_fault(
            ctx,
            "gzip_bomb",
            "gzip bomb",
            "49 kB of gzip (unasked for) inflating to 50 MB",
            _mode("gzip_bomb", 50_000_000),
        )
    )


@scenario("set_cookie", "Set-Cookie and hop-by-hop headers")
def set_cookie(ctx: Ctx) -> Result:
    result = upstream_fault(
        ctx,
        "set_cookie",
        "Set-Cookie and hop-by-hop headers",
        "200 with Set-Cookie, Connection, Keep-Alive, Upgrade, Vary, a private header",
        _mode("hop"),
        all_must_200=True,
    )
    sent_cookies = sum(
        1 for c in list(ctx.upstream.calls) if "cookie" in {h.lower() for h in c["headers"]}
    )
    if sent_cookies:
        result.failures.append(f"{sent_cookies} upstream calls carried a Cookie header")
    else:
        result.notes.append("no upstream call ever carried a Cookie header")
    return result


# -- backends ---------------------------------------------------------------------------


def backend_fault(
    ctx: Ctx,
    name: str,
    title: str,
    fault: str,
    inject: Callable[[], object],
    restore: Callable[[object], None],
    seconds: float = 9.0,
    upstream_delay: float = 0.2,
) -> tuple[Result, list[Key]]:
    """Load with a healthy (slightly slow) upstream; the fault in the middle third."""
    run = Run(ctx, name, title, fault, all_must_200=True)
    ns = ctx.prefix(name[:3].upper())
    warm = key_set(ns + "W", 24, warm=True)
    cold = key_set(ns + "C", 400, warm=False)  # cold keys keep the single flight busy
    warm_up(ctx, warm)
    length = ctx.seconds(seconds, least=4.5)
    ctx.upstream.delay = upstream_delay  # callers wait on each other across processes
    with RssSampler(ctx.cluster) as rss:
        run.begin()
        load = Load(ctx.cluster.urls, mixed(warm, cold, 0.4), run.rec, ctx.threads)
        with load, Stampedes(ctx.cluster.urls, ns + "S", run.rec):
            time.sleep(length / 3)
            token = inject()
            time.sleep(length / 3)
            restore(token)
            time.sleep(length / 3)
        run.end()
    heal(ctx.upstream)
    result = run.result()
    result.rss_mb = rss.peak_mb()
    result.recovery_s = recover(ctx, warm + cold[:8])
    if result.recovery_s is None:
        result.failures.append("some key did not answer 200 again within 20 s of the fault")
    return result, cold


def coalesced_again(ctx: Ctx, tag: str) -> int:
    """Upstream calls made for one cold key asked at once at every process."""
    ctx.upstream.delay = 0.5
    key = product_key(ctx.prefix(tag), "name")
    rec = Recorder()
    barrier = threading.Barrier(12)

    def one(i: int) -> None:
        barrier.wait(10)
        with requests.Session() as s:
            ask(s, ctx.cluster.urls[i % 2], key, rec, "after")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    heal(ctx.upstream)
    return calls_for(ctx.upstream, key)


@scenario("redis_restart", "Redis stopped and restarted", kind="backend")
def redis_restart(ctx: Ctx) -> Result:
    redis = ctx.cluster.redis
    assert redis is not None

    def restore(_: object) -> None:
        redis.start()

    result, _ = backend_fault(
        ctx,
        "redis_restart",
        "Redis stopped and restarted",
        "redis-server killed (SIGKILL) for a third of the run, then started again empty",
        redis.stop,
        restore,
    )
    time.sleep(2.5)  # the breaker retries within a second; pub/sub reconnects
    calls = coalesced_again(ctx, "RRA")
    result.notes.append(
        f"after the restart, 12 requests for a cold key at 3 processes: {calls} call"
    )
    return result


@scenario("redis_slow", "Redis slow (delaying proxy)", kind="backend")
def redis_slow(ctx: Ctx) -> Result:
    proxy = ctx.cluster.proxy
    assert proxy is not None
    result, _ = backend_fault(
        ctx,
        "redis_slow",
        "Redis slow (delaying proxy)",
        "every chunk to and from Redis delayed 150 ms (a round trip >= 300 ms)",
        lambda: proxy.set_delay(0.15),
        lambda _: proxy.set_delay(0.0),
    )
    return result


@scenario("redis_hung", "Redis hung (DEBUG SLEEP)", short=False, kind="backend")
def redis_hung(ctx: Ctx) -> Result:
    redis = ctx.cluster.redis
    assert redis is not None
    stop = threading.Event()

    def sleeper() -> None:
        client = redis.client()
        while not stop.is_set():
            try:
                client.execute_command("DEBUG", "SLEEP", "1.5")
            except Exception as exc:  # noqa: BLE001 - reported, not raised in a thread
                failures.append(repr(exc))
                return
            stop.wait(0.05)

    failures: list[str] = []

    thread = threading.Thread(target=sleeper, daemon=True)

    def restore(_: object) -> None:
        stop.set()
        thread.join(5)

    result, _ = backend_fault(
        ctx,
        "redis_hung",
        "Redis hung (DEBUG SLEEP)",
        "Redis blocked 1.5 s at a time (DEBUG SLEEP), 50 ms free between",
        thread.start,
        restore,
    )
    if failures:
        result.skipped = f"DEBUG SLEEP failed: {failures[0]}"
    return result


@scenario("pg_restart", "PostgreSQL stopped and restarted", kind="backend")
def pg_restart(ctx: Ctx) -> Result:
    pg = ctx.cluster.postgres
    if pg is None:
        return _skipped("pg_restart", "PostgreSQL stopped and restarted", ctx.cluster.postgres_note)
    marker: dict[str, float] = {}

    def inject() -> None:
        pg.stop("fast")
        marker["down"] = time.monotonic()

    def restore(_: object) -> None:
        pg.start()
        marker["up"] = time.monotonic()

    result, cold = backend_fault(
        ctx,
        "pg_restart",
        "PostgreSQL stopped and restarted",
        "pg_ctl stop -m fast (clients cut) for a third of the run, then pg_ctl start",
        inject,
        restore,
    )
    # Keys first fetched while the database was down must reach it once it is back.
    during = {
        _readable_key(str(c["path"]), str(c["query"]))
        for c in list(ctx.upstream.calls)
        if marker["down"] <= float(c["at"]) <= marker["up"]
        and str(c["path"]) in {k.expect_path for k in cold}
    }
    found: set[str] = set()
    wait_s = 15 if ctx.scale >= 0.5 else 5
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        found = _rows_with_keys(ctx.cluster, during)
        if found >= during:
            break
        time.sleep(0.5)
    result.notes.append(
        f"{len(during)} keys fetched while PostgreSQL was down; {len(found)} of them were in "
        f"it within {wait_s} s of its return"
    )
    if found < during:
        result.failures.append(
            f"{len(during - found)} entries fetched while PostgreSQL was down never reached it"
        )
    return result


def _readable_key(path: str, query: str) -> str:
    """The readable cache key of an upstream call of the products example."""
    parts = path.strip("/").split("/")
    if parts[0] == "prices":
        return f"prices:{parts[1]}::{parts[2]}"
    fields = query.removeprefix("fields=") or "*"
    return f"products:{parts[1]}::{fields}"


def _rows_with_keys(cluster: Cluster, keys: set[str]) -> set[str]:
    import psycopg

    if not keys:
        return set()
    with psycopg.connect(cluster.database_url, connect_timeout=3) as conn:
        rows = conn.execute(
            "SELECT key FROM coalescing_cacheentry WHERE key = ANY(%s)", [list(keys)]
        ).fetchall()
    return {row[0] for row in rows}


@scenario("pg_frozen", "PostgreSQL frozen (SIGSTOP)", short=False, kind="backend")
def pg_frozen(ctx: Ctx) -> Result:
    pg = ctx.cluster.postgres
    if pg is None:
        return _skipped("pg_frozen", "PostgreSQL frozen (SIGSTOP)", ctx.cluster.postgres_note)
    result, _ = backend_fault(
        ctx,
        "pg_frozen",
        "PostgreSQL frozen (SIGSTOP)",
        "every PostgreSQL process stopped (SIGSTOP) for a third of the run: "
        "connections hang instead of failing",
        pg.freeze,
        pg.thaw,  # type: ignore[arg-type]
    )
    return result


def _skipped(name: str, title: str, reason: str) -> Result:
    return Result(name, title, "skipped", skipped=reason or "not available here")


# -- processes and clients ------------------------------------------------------------


@scenario("worker_kill", "A worker killed (SIGKILL) while it leads upstream calls", kind="process")
def worker_kill(ctx: Ctx) -> Result:
    cluster, upstream = ctx.cluster, ctx.upstream
    run = Run(ctx, "worker_kill", SCENARIOS["worker_kill"].title, "", all_must_200=True)
    ns = ctx.prefix("KIL")
    warm = key_set(ns + "W", 16, warm=True)
    warm_up(ctx, warm)
    kills = 1 if ctx.scale < 0.5 else 3
    single, multi = cluster.urls
    kill_times: list[float] = []
    takeovers: list[int] = []
    run.begin()
    with Load(cluster.urls, mixed(warm, [], 0), run.rec, max(2, ctx.threads // 2)):
        for round_ in range(kills):
            upstream.delay = 0.5
            cold = key_set(f"{ns}K{round_}x", 6, warm=False)
            threads = [_asker(multi, key, run.rec) for key in cold]  # leaders: gunicorn
            victim = _leader_pid(upstream, cold, cluster.worker_pids())
            for key in cold:  # followers in other processes
                threads += [_asker(single, key, run.rec), _asker(multi, key, run.rec)]
            time.sleep(0.15)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
                kill_times.append(time.monotonic())
            for t in threads:
                t.join(30)
            takeovers.append(sum(1 for k in cold if calls_for(upstream, k) > 1))
            upstream.delay = 0.0
            cluster.wait_workers()
            time.sleep(0.5)
    run.end()
    cut = 0
    for s in run.rec.of_phase("fault"):
        in_hand = any(s.started - 0.05 <= t <= s.started + s.elapsed + 0.05 for t in kill_times)
        if s.status == 0 and s.server == multi and in_hand:
            cut += 1
    result = run.result(cut=cut)
    result.fault = (
        f"{kills} time(s): 6 cold keys led by gunicorn workers (upstream 0.5 s), the "
        "same keys asked at serve and gunicorn, the leading worker SIGKILLed mid-call"
    )
    if len(kill_times) < kills:
        result.notes.append(f"no leading worker found in {kills - len(kill_times)} round(s)")
    result.notes.append(
        f"{cut} requests in the killed worker's hands were cut (its connections died with it; "
        "a load balancer retries these); keys taken over by another process per round: "
        f"{takeovers}"
    )
    result.notes.append(f"gunicorn replaced the worker(s); {len(cluster.worker_pids())} running")
    return result


def calls_for(upstream: FakeUpstream, key: Key) -> int:
    """Upstream calls made for ``key`` (its path and its query)."""
    return sum(
        1
        for c in list(upstream.calls)
        if c["path"] == key.expect_path and c["query"] == key.expect_query
    )


def _asker(url: str, key: Key, rec: Recorder) -> threading.Thread:
    def one() -> None:
        with requests.Session() as s:
            ask(s, url, key, rec)

    thread = threading.Thread(target=one)
    thread.start()
    return thread


def _leader_pid(upstream: FakeUpstream, keys: list[Key], pids: list[int]) -> int | None:
    """The gunicorn worker whose socket made the first upstream call for ``keys``."""
    wanted = {k.expect_path for k in keys}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for call in list(upstream.calls):
            if call["path"] in wanted:
                pid = pid_of_local_port(call["client"][1], pids)
                if pid is not None:
                    return pid
        time.sleep(0.02)
    return None


def _raw_request(url: str, key: Key) -> bytes:
    host = url.split("//", 1)[1]
    return f"GET {key.query} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode()


def _connect(url: str) -> socket.socket:
    host, port = url.split("//", 1)[1].split(":")
    return socket.create_connection((host, int(port)), timeout=10)


@scenario("disconnects", "Clients that hang up while waiting", kind="process")
def disconnects(ctx: Ctx) -> Result:
    cluster, upstream = ctx.cluster, ctx.upstream
    run = Run(ctx, "disconnects", SCENARIOS["disconnects"].title, "", all_must_200=True)
    ns = ctx.prefix("DIS")
    keys = key_set(ns, 8, warm=False)
    quitters = 10 if ctx.scale < 0.5 else 30
    upstream.delay = 0.8
    hung_up = 0
    lock = threading.Lock()

    def quitter(url: str, key: Key, rst: bool) -> None:
        nonlocal hung_up
        try:
            sock = _connect(url)
            sock.sendall(_raw_request(url, key))
            time.sleep(0.2)
            if rst:  # an abortive close: RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            with lock:
                hung_up += 1
        except OSError:
            pass

    def stayer(url: str, key: Key) -> None:
        with requests.Session() as s:
            ask(s, url, key, run.rec)

    run.begin()
    threads = []
    for key in keys:
        for i in range(quitters):
            args = (cluster.urls[i % 2], key, i % 2 == 0)
            threads.append(threading.Thread(target=quitter, args=args))
        for url in cluster.urls:
            threads.append(threading.Thread(target=stayer, args=(url, key)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    run.end()
    heal(upstream)
    time.sleep(0.5)
    with requests.Session() as session:
        after = [ask(session, url, k, run.rec, "after") for k in keys for url in cluster.urls]
    result = run.result(phases=("fault", "after"))
    calls = [calls_for(upstream, k) for k in keys]
    result.fault = (
        f"{hung_up} clients sent a request for one of 8 cold keys (upstream 0.8 s) and hung up "
        "after 0.2 s, half with a RST; 2 clients per key stayed"
    )
    caches = sorted({s.x_cache for s in after})
    result.notes.append(
        f"upstream calls per key: {min(calls)}-{max(calls)}; the keys asked again afterwards "
        f"answered {sorted({s.status for s in after})} with X-Cache {caches} (stored though "
        "their first askers had gone)"
    )
    if max(calls) > 1:
        result.failures.append("a hang-up cancelled a call: another one was made for its key")
    if {s.status for s in after} != {200}:
        result.failures.append("a key whose askers hung up did not answer 200 afterwards")
    return result


def _read_answer(sock: socket.socket) -> int:
    """Read one HTTP answer with a Content-Length; its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return int(lines[0].split()[1])


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


@scenario("idle_2000", "2,000 idle keep-alive connections", kind="process")
def idle_connections(ctx: Ctx) -> Result:
    cluster = ctx.cluster
    limit = raise_fd_limit(4000)
    n = min(2000, limit - 1000)  # what the hard limit allows; the fault text says how many
    run = Run(ctx, "idle_2000", SCENARIOS["idle_2000"].title, "", all_must_200=True)
    ns = ctx.prefix("IDL")
    warm = key_set(ns + "W", 24, warm=True)
    warm_up(ctx, warm)
    single = cluster.urls[0]
    serve_pid = cluster.server_pids()["serve"]
    length = ctx.seconds(6, least=2.5)
    with Load(cluster.urls, mixed(warm, [], 0), run.rec, ctx.threads):
        run.rec.phase = "before"
        time.sleep(length / 2)
        fds_before = open_fds(serve_pid)
        socks: list[socket.socket] = []
        opened_at = time.monotonic()
        idle_key = product_key(ns + "IDLE", "name")
        try:
            for _ in range(n):
                sock = _connect(single)
                sock.sendall(_raw_request(single, idle_key))
                _read_answer(sock)
                socks.append(sock)
            open_s = time.monotonic() - opened_at
            fds_during = open_fds(serve_pid)
            run.rec.phase = "fault"
            run.begin()
            time.sleep(length)
            run.end()
            run.rec.phase = "after"
            still = [s for s in socks if _still_open(s)]
            reused = 0
            for sock in still[:200]:
                sock.sendall(_raw_request(single, idle_key))
                reused += _read_answer(sock) == 200
        finally:
            for sock in socks:
                sock.close()
    result = run.result()
    before = [s.elapsed for s in run.rec.of_phase("before") if s.status]
    from .load import percentile

    result.fault = (
        f"{len(socks)} connections to serve, each with one request answered, then left idle "
        f"(opened in {open_s:.1f} s; our fd limit {limit})"
    )
    result.notes.append(
        f"p99 of the other clients: {percentile(before, 0.99) * 1000:.0f} ms before, "
        f"{result.p99 * 1000:.0f} ms with the idle connections"
    )
    result.notes.append(
        f"serve's open fds: {fds_before} before, {fds_during} with them; "
        f"{len(still)} still open after {length:.0f} s idle; {reused} of "
        f"{min(200, len(still))} reused answered 200"
    )
    if reused < min(200, len(still)):
        result.failures.append("an idle keep-alive connection did not answer when used again")
    return result


@scenario("cold_burst", "A burst of distinct cold keys (load protection)", kind="process")
def cold_burst(ctx: Ctx) -> Result:
    cluster, upstream = ctx.cluster, ctx.upstream
    run = Run(ctx, "cold_burst", SCENARIOS["cold_burst"].title, "", all_must_200=False)
    n = 250 if ctx.scale >= 0.5 else 120
    keys = key_set(ctx.prefix("BUR"), n, warm=False)
    upstream.delay = 1.2
    single = cluster.urls[0]
    with upstream._lock:
        upstream.max_inflight = upstream.inflight
    run.begin()
    burst([(single, k) for k in keys], run.rec)
    run.end()
    heal(upstream)
    result = run.result()
    result.fault = (
        f"{n} requests for {n} distinct cold keys at once at serve (from gevent, in a process "
        "of its own); upstream 1.2 s"
    )
    result.notes.append(
        f"most upstream calls at once: {upstream.max_inflight}; 503s with Retry-After: "
        f"{result.retry_after}"
    )
    for status in sorted({s.status for s in run.rec.samples}):
        waits = sorted(s.elapsed for s in run.rec.samples if s.status == status)
        result.notes.append(
            f"{status}: {len(waits)} answers, wait {waits[0]:.2f}-{waits[-1]:.2f} s, "
            f"median {waits[len(waits) // 2]:.2f} s"
        )
    return result


def describe(result: Result) -> str:
    return json.dumps(result.__dict__, default=str)
