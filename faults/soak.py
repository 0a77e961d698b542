"""``make soak``: ten minutes of mixed load with faults; is memory flat?

    python -m faults.soak                 # 10 minutes, figures to docs/reliability.md
    python -m faults.soak --minutes 2 --no-write

Threads ask a pool of keys of both endpoints at every server while, every
cycle, one fault is injected for a while and healed (5xx bursts, a slow
upstream, resets mid-body, 50 MB bodies, Redis restarted, PostgreSQL
restarted, clients hanging up). The resident memory of ``serve`` and of each
gunicorn worker is sampled every few seconds; memory is called flat when the
last third of the run grows less than 5 % and less than 10 MiB over the
middle third (the first third is warm-up: caches and pools filling).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import itertools
import socket
import sys
import threading
import time
from pathlib import Path

import requests

from testkit.upstream import FakeUpstream

from . import report
from .cluster import WAIT_BOUND_S, Cluster, describe_machine
from .load import BOUND_TOLERANCE_S, Key, Load, Sample, key_set, mixed
from .run import SHARED_POSTGRES


class Tally:
    """A recorder that counts instead of keeping every sample (a long run)."""

    def __init__(self) -> None:
        self.phase = "soak"
        self._lock = threading.Lock()
        self.requests = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        self.problems: collections.Counter[str] = collections.Counter()
        self.max_latency = 0.0
        self.over_bound = 0
        self.warm_not_200 = 0

    def add(self, sample: Sample) -> None:
        with self._lock:
            self.requests += 1
            self.statuses[str(sample.status or "no answer")] += 1
            if sample.problem:
                self.problems[sample.problem] += 1
            if sample.status:
                self.max_latency = max(self.max_latency, sample.elapsed)
            if sample.elapsed > WAIT_BOUND_S + BOUND_TOLERANCE_S:
                self.over_bound += 1
            if sample.key.warm and sample.status not in (0, 200):
                self.warm_not_200 += 1


def _hang_ups(cluster: Cluster, keys: list[Key], n: int = 40) -> None:
    for i in range(n):
        url = cluster.urls[i % 2]
        host, port = url.split("//", 1)[1].split(":")
        try:
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                key = keys[i % len(keys)]
                sock.sendall(f"GET {key.query} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                time.sleep(0.02)
        except OSError:
            pass


def faults(cluster: Cluster, upstream: FakeUpstream, cold: list[Key]):
    """(name, inject, heal) of each fault of the cycle."""

    def mode(m: str, **kw: object):
        def inject() -> None:
            upstream.mode = m
            for k, v in kw.items():
                setattr(upstream, k, v)

        return inject

    def heal() -> None:
        upstream.mode, upstream.status, upstream.delay, upstream.size = "ok", 200, 0.0, 0

    assert cluster.redis is not None
    redis = cluster.redis
    yield "5xx", mode("status", status=503), heal
    yield "slow upstream", mode("ok", delay=3.5), heal
    yield "reset mid-body", mode("reset"), heal
    yield "50 MB bodies", mode("huge_unsized", size=50_000_000), heal
    yield "Redis restarted", redis.stop, redis.start
    if cluster.postgres is not None:
        pg = cluster.postgres
        yield "PostgreSQL restarted", lambda: pg.stop("fast"), pg.start
    yield "clients hanging up", lambda: _hang_ups(cluster, cold), lambda: None


def soak(minutes: float, threads: int, without: frozenset[str] = frozenset(), log=print) -> dict:
    upstream = FakeUpstream()
    cluster = Cluster(upstream.url, workers=2, shared_postgres_url=SHARED_POSTGRES)
    tally = Tally()
    samples: list[tuple[float, dict[str, int]]] = []
    events: list[str] = []
    try:
        cluster.start()
        warm = key_set("SOAKW", 400, warm=True)
        cold = key_set("SOAKC", 4000, warm=False)
        with requests.Session() as session:
            for i, key in enumerate(warm):  # a value for each, to be served stale later
                session.get(cluster.urls[i % 2] + key.query, timeout=10)
        started = time.monotonic()
        end = started + minutes * 60
        chosen = [f for f in faults(cluster, upstream, cold) if f[0] not in without]
        cycle = itertools.cycle(chosen)
        with Load(cluster.urls, mixed(warm, cold, 0.3), tally, threads=threads, pause=0.01):  # type: ignore[arg-type]
            next_fault = started + 20
            next_sample = started
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_sample:
                    samples.append((now - started, cluster.rss()))
                    next_sample = now + 5
                if now >= next_fault and now + 15 < end:
                    name, inject, heal = next(cycle)
                    events.append(f"{now - started:.0f}s {name}")
                    log(f"{now - started:5.0f}s  {name}; {tally.requests} requests so far")
                    inject()
                    time.sleep(8)
                    heal()
                    next_fault = time.monotonic() + 20
                time.sleep(0.5)
        samples.append((time.monotonic() - started, cluster.rss()))
    finally:
        cluster.stop()
        upstream.close()
    return {"tally": tally, "samples": samples, "events": events, "minutes": minutes}


def flatness(samples: list[tuple[float, dict[str, int]]]) -> dict[str, dict[str, float]]:
    """Per process: RSS (MiB) at the end of warm-up, at two thirds, at the end, and growth."""
    total = samples[-1][0]
    out: dict[str, dict[str, float]] = {}
    names = sorted({name for _, rss in samples for name in rss})
    for name in names:
        series = [(t, rss[name] / 2**20) for t, rss in samples if rss.get(name)]

        def mean_near(at: float, series=series) -> float:
            near = [v for t, v in series if abs(t - at) <= total / 12] or [series[-1][1]]
            return sum(near) / len(near)

        middle, last = mean_near(total / 2), mean_near(total * 11 / 12)
        growth = last - middle
        out[name] = {
            "warm": round(mean_near(total / 3), 1),
            "middle": round(middle, 1),
            "end": round(last, 1),
            "max": round(max(v for _, v in series), 1),
            "growth_mib": round(growth, 1),
            "flat": float(growth < 10 and growth < 0.05 * middle),
        }
    return out


def render(result: dict, elapsed: float) -> str:
    tally: Tally = result["tally"]
    rows = flatness(result["samples"])
    flat = all(r["flat"] for r in rows.values())
    lines = [
        f"Run {datetime.date.today().isoformat()} with `make soak` ({result['minutes']:g} min of "
        f"load, {elapsed / 60:.1f} min in all) on {describe_machine()}; the cluster and "
        "settings of the fault suite above.",
        "",
        f"Memory: **{'flat' if flat else 'NOT flat'}** (growth from the middle of the run to "
        "its end, each the mean of the samples around it; warm-up left out).",
        "",
        "| process | RSS after warm-up | middle | end | max | growth, middle to end |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['warm']} MiB | {r['middle']} MiB | {r['end']} MiB | {r['max']} MiB | "
            f"{r['growth_mib']:+.1f} MiB |"
        )
    lost = tally.problems.get("no answer", 0) + tally.problems.get("500", 0)
    lines += [
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| requests | {tally.requests} |",
        f"| answers by status | {report._counts(dict(sorted(tally.statuses.items())))} |",
        f"| lost (no answer, 500) | {lost} |",
        f"| crossed | {tally.problems.get('crossed', 0)} |",
        f"| other bad answers | {report._counts({k: v for k, v in tally.problems.items() if k not in ('no answer', '500', 'crossed')})} |",  # noqa: E501
        f"| max wait | {tally.max_latency * 1000:.0f} ms; past {WAIT_BOUND_S:.1f} s + "
        f"{BOUND_TOLERANCE_S * 1000:.0f} ms: {tally.over_bound} |",
        f"| keys with a stale value not answered 200 | {tally.warm_not_200} |",
        f"| faults injected (8 s each, 20 s apart) | {', '.join(result['events'])} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--without", default="", help="comma-separated faults to leave out, e.g. '50 MB bodies'"
    )
    parser.add_argument("--doc", default=str(report.DOC))
    args = parser.parse_args(argv)
    started = time.monotonic()
    without = frozenset(n.strip() for n in args.without.split(",") if n.strip())
    result = soak(args.minutes, args.threads, without)
    text = render(result, time.monotonic() - started)
    print(text)
    if not args.no_write:
        report.write_section("soak", text, Path(args.doc))
        print(f"wrote {args.doc}")
    flat = all(r["flat"] for r in flatness(result["samples"]).values())
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
