"""Bounded load from threads, and the checks made on every answer.

Every key names what it must get back: the fake upstream's body names the
path and query it was asked for, so an answer with another key's data is
caught ("crossed"). Every answer is timed against the wait bound of
CONTRACT.md (``UPSTREAM_TIMEOUT_MS`` + 1 s).
"""

from __future__ import annotations

import collections
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import requests

#: Error statuses the contract allows: 502/504 (upstream failed, nothing stale),
#: 503 (over the concurrency cap, with Retry-After).
ALLOWED_ERRORS = frozenset({502, 503, 504})
CLIENT_TIMEOUT_S = 20.0
#: What the coalescer answers a waiter it gives up on, and the test of that bug.
GAVE_UP = "still running after the wait bound"
#: A waiter the coalescer gives up on is answered at the bound itself; what a
#: client measures on top (loopback, its own threads on a shared 2-core machine)
#: is forgiven up to this much. Waits past the exact bound are shown anyway.
BOUND_TOLERANCE_S = 0.25


@dataclass(frozen=True, slots=True)
class Key:
    query: str  # what the client asks, path and query string
    expect_path: str  # what the upstream must have been asked for it
    expect_query: str
    warm: bool = False  # has a value that may be served stale


def product_key(product: str, fields: str = "", warm: bool = False) -> Key:
    """``fields`` as the client writes it (any order, duplicates)."""
    query = f"/products?productId={product}"
    expect = ""
    if fields:
        query += f"&fields={fields}"
        expect = "fields=" + ",".join(sorted(set(fields.split(","))))
    return Key(query, f"/products/{product}", expect, warm)


def price_key(product: str, region: str, warm: bool = False) -> Key:
    query = f"/prices?productId={product}&region={region}"
    return Key(query, f"/prices/{region}/{product}", "", warm)


def key_set(prefix: str, n: int, warm: bool) -> list[Key]:
    """``n`` distinct keys of both endpoints, fields in every order."""
    shapes = [
        lambda i: product_key(f"{prefix}{i}", "", warm),
        lambda i: product_key(f"{prefix}{i}", "price,name,price", warm),
        lambda i: product_key(f"{prefix}{i}", "name,stock", warm),
        lambda i: price_key(f"{prefix}{i}", "eu-west", warm),
    ]
    return [shapes[i % len(shapes)](i // len(shapes)) for i in range(n)]


@dataclass(slots=True)
class Sample:
    key: Key
    server: str
    phase: str
    started: float  # time.monotonic()
    elapsed: float
    status: int  # 0: no answer at all (connection error or client timeout)
    x_cache: str
    problem: str  # "" when the answer is acceptable
    retry_after: bool = False
    error: str = ""


def check(key: Key, response: requests.Response) -> str:
    """What is wrong with an answer, or ""."""
    return check_answer(key, response.status_code, response.headers, response.content)


def check_answer(key: Key, status: int, headers: Mapping[str, str], content: bytes | str) -> str:
    """What is wrong with an answer, or "" (``headers`` case-insensitive)."""
    if "Set-Cookie" in headers:
        return "set-cookie"
    try:
        body = json.loads(content)
    except ValueError:
        return f"not JSON ({status})"
    if status == 200:
        if not isinstance(body, dict) or (body.get("path"), body.get("query")) != (
            key.expect_path,
            key.expect_query,
        ):
            return "crossed"
        if headers.get("X-Cache") not in ("HIT", "MISS", "STALE", "COALESCED"):
            return "no X-Cache"
        return ""
    if status in ALLOWED_ERRORS:
        if not isinstance(body, dict) or not body.get("detail"):
            return f"{status} without detail"
        if status == 503 and "Retry-After" not in headers:
            return "503 without Retry-After"
        return ""
    if status >= 500:
        return "500" if status == 500 else f"unexpected {status}"
    return f"unexpected {status}"


class Recorder:
    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self.phase = "fault"

    def add(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    def of_phase(self, *phases: str) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if not phases or s.phase in phases]


def ask(
    session: requests.Session, url: str, key: Key, recorder: Recorder, phase: str | None = None
) -> Sample:
    started = time.monotonic()
    try:
        response = session.get(url + key.query, timeout=CLIENT_TIMEOUT_S)
    except requests.RequestException as exc:
        sample = Sample(
            key,
            url,
            phase or recorder.phase,
            started,
            time.monotonic() - started,
            0,
            "",
            "no answer",
            error=type(exc).__name__,
        )
    else:
        sample = Sample(
            key,
            url,
            phase or recorder.phase,
            started,
            time.monotonic() - started,
            response.status_code,
            response.headers.get("X-Cache", ""),
            check(key, response),
            "Retry-After" in response.headers,
            error=""
            if response.status_code == 200
            else f"{response.headers.get('Cache-Status', '')} {response.text[:160]}",
        )
    recorder.add(sample)
    return sample


def burst(jobs: Sequence[tuple[str, Key]], recorder: Recorder, phase: str = "") -> list[Sample]:
    """Every job at once, from greenlets in a process of its own (:mod:`faults.burst`)."""
    import subprocess
    import sys
    from pathlib import Path

    from requests.structures import CaseInsensitiveDict

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "faults.burst"],
        input=json.dumps([[url, key.query] for url, key in jobs]),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the burst client failed: {done.stderr[-2000:]}")
    samples = []
    for (url, key), answer in zip(jobs, json.loads(done.stdout), strict=True):
        status = answer["status"]
        headers = CaseInsensitiveDict(answer.get("headers", {}))
        problem = check_answer(key, status, headers, answer["body"]) if status else "no answer"
        sample = Sample(
            key,
            url,
            phase or recorder.phase,
            started,
            answer["elapsed"],
            status,
            headers.get("X-Cache", ""),
            problem,
            "Retry-After" in headers,
            answer.get("error", "") if status in (0, 200) else answer["body"][:160],
        )
        recorder.add(sample)
        samples.append(sample)
    return samples


class Load:
    """``threads`` clients, each with keep-alive connections to every server,
    asking keys chosen by ``pick`` until stopped, pausing ``pause`` s between asks."""

    def __init__(
        self,
        urls: Sequence[str],
        pick: Callable[[random.Random], Key],
        recorder: Recorder,
        threads: int = 8,
        pause: float = 0.01,
        seed: int = 1,
    ) -> None:
        self.urls = list(urls)
        self.pick = pick
        self.recorder = recorder
        self.pause = pause
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(seed * 1000 + i,), daemon=True)
            for i in range(threads)
        ]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            n = seed
            while not self._stop.is_set():
                n += 1
                ask(session, self.urls[n % len(self.urls)], self.pick(rng), self.recorder)
                if self.pause:
                    self._stop.wait(self.pause)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(CLIENT_TIMEOUT_S + 5)


def mixed(warm: Sequence[Key], cold: Sequence[Key], cold_share: float) -> Callable:
    def pick(rng: random.Random) -> Key:
        pool = cold if cold and rng.random() < cold_share else warm
        return rng.choice(pool)

    return pick


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Result:
    name: str
    title: str
    fault: str
    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_cache: dict[str, int] = field(default_factory=dict)
    upstream_calls: int = 0
    fault_seconds: float = 0.0
    lost: int = 0  # no answer, or a 500 (or any status the contract does not allow)
    crossed: int = 0
    other_problems: dict[str, int] = field(default_factory=dict)
    max_latency: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    over_bound: int = 0  # past the bound plus the tolerance: a missed target
    over_exact_bound: int = 0  # past the bound itself
    stale_keys_asked: int = 0
    stale_keys_not_200: int = 0
    stale_keys_gave_up: int = 0
    cut_by_kill: int = 0
    retry_after: int = 0
    recovery_s: float | None = None
    tracebacks: int = 0
    rss_mb: dict[str, float] = field(default_factory=dict)
    #: RSS at the end of the fault phase minus RSS before it, per process.
    rss_growth_mb: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str = ""
    #: Whether stale keys must answer 200 here (upstream faults) or every key
    #: must (backend faults, where the upstream is healthy).
    all_must_200: bool = False
    #: Missed targets found by the scenario's own checks.
    failures: list[str] = field(default_factory=list)

    def fill(self, samples: Sequence[Sample], bound_s: float) -> Result:
        self.requests = len(samples)
        statuses = collections.Counter(str(s.status or "no answer") for s in samples)
        self.by_status = dict(sorted(statuses.items()))
        self.by_cache = dict(collections.Counter(s.x_cache for s in samples if s.x_cache))
        latencies = [s.elapsed for s in samples if s.status]
        self.max_latency = max(latencies, default=0.0)
        self.p50, self.p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        self.over_bound = sum(1 for s in samples if s.elapsed > bound_s + BOUND_TOLERANCE_S)
        self.over_exact_bound = sum(1 for s in samples if s.elapsed > bound_s)
        problems = collections.Counter(s.problem for s in samples if s.problem)
        self.crossed = problems.pop("crossed", 0)
        self.lost = problems.pop("no answer", 0) - self.cut_by_kill + problems.pop("500", 0)
        self.other_problems = dict(problems)
        self.retry_after = sum(1 for s in samples if s.retry_after)
        must = [s for s in samples if s.key.warm or self.all_must_200]
        self.stale_keys_asked = len(must)
        not_200 = [s for s in must if s.status != 200 and s.problem != "no answer"]
        self.stale_keys_not_200 = len(not_200)
        # A waiter the coalescer gave up on, for a key whose value sits in Redis
        # and the database: answered 504 though stale was there.
        self.stale_keys_gave_up = sum(
            1 for s in not_200 if s.key.warm and s.status == 504 and GAVE_UP in s.error
        )
        return self

    def checks(self, bound_s: float) -> list[tuple[str, str]]:
        """Every missed target as (tag, text); tags: lost, crossed, bad, bound, not200,
        traceback, and failure for the scenario's own findings."""
        out: list[tuple[str, str]] = [("failure", f) for f in self.failures]
        if self.lost:
            out.append(("lost", f"{self.lost} answers lost (no answer or 500)"))
        if self.crossed:
            out.append(("crossed", f"{self.crossed} answers with another key's data"))
        if self.other_problems:
            out.append(("bad", f"bad answers: {self.other_problems}"))
        if self.over_bound:
            out.append(
                (
                    "bound",
                    f"{self.over_bound} requests waited longer than {bound_s:.1f}s "
                    f"+ {BOUND_TOLERANCE_S:.2f}s (max {self.max_latency:.2f}s)",
                )
            )
        others = self.stale_keys_not_200 - self.stale_keys_gave_up
        if others:
            which = "requests" if self.all_must_200 else "requests for keys with a stale value"
            out.append(("not200", f"{others} {which} did not answer 200"))
        if self.stale_keys_gave_up:
            out.append(
                (
                    "gaveup",
                    f"{self.stale_keys_gave_up} requests for keys with a stale value in Redis "
                    "and the database were given up on (504) instead of served stale",
                )
            )
        if self.tracebacks:
            out.append(("traceback", f"{self.tracebacks} tracebacks in the server logs"))
        return out

    def violations(self, bound_s: float) -> list[str]:
        """Every missed target, as text."""
        if self.skipped:
            return []
        return [text for _, text in self.checks(bound_s)]


class Stampedes:
    """Every ``every`` seconds, ``n`` requests at once for a brand-new key, spread
    over the servers: so that some process is always waiting on another's call."""

    def __init__(
        self, urls: Sequence[str], prefix: str, recorder: Recorder, every: float = 0.35, n: int = 6
    ) -> None:
        self.urls, self.prefix, self.recorder = list(urls), prefix, recorder
        self.every, self.n = every, n
        self.keys: list[Key] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sessions = [requests.Session() for _ in range(n)]

    def _run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.n) as pool:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                key = product_key(f"{self.prefix}{i}", "name,price")
                self.keys.append(key)
                jobs = [
                    pool.submit(
                        ask, self._sessions[j], self.urls[j % len(self.urls)], key, self.recorder
                    )
                    for j in range(self.n)
                ]
                self._stop.wait(self.every)
                for job in jobs:
                    job.result()

    def __enter__(self) -> Stampedes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(CLIENT_TIMEOUT_S + 5)
        for session in self._sessions:
            session.close()
