"""``make bench``: every workload against our server and the peers, in one run.

``python -m bench.run`` starts everything it needs itself (the fake upstream,
our server, the peers), drives load from separate processes (wrk for hit
throughput, :mod:`bench.loadgen` for the rest), repeats and interleaves the
runs, and writes ``bench/results/latest.json``; :mod:`bench.report` then
writes ``docs/benchmarks.md`` and the charts. Every process it starts is
stopped when it ends, on error too.

Environment:

- ``QUICK=1``: a smoke run (a few minutes; figures not comparable), written to
  ``/tmp/coalescing-bench-quick/`` instead of the results and ``docs/``;
- ``BENCH_ONLY=W1,W3``: only these workloads;
- ``BENCH_TARGETS=ours,bare``: only these servers;
- ``BENCH_PLAN='{"w4_keys": 30000}'``: change any field of :class:`Plan`;
- ``BENCH_OUT=path.json``: where the results go (default ``bench/results/latest.json``);
  a run narrowed by ``BENCH_ONLY`` or ``BENCH_TARGETS`` keeps the figures of the
  saved results that it did not measure, marked with their run
  (:mod:`bench.merge`; ``BENCH_MERGE=0``: replace them);
- ``BENCH_KEEP_LOGS=1``: keep the servers' logs (their folder is printed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from bench import merge
from bench.procs import PYTHON, ROOT, Helper, Proc, Procs, http_get
from testkit.ports import free_port

T = TypeVar("T")
RESULTS = ROOT / "bench" / "results"
QUICK_DIR = Path(tempfile.gettempdir()) / "coalescing-bench-quick"
#: Our server's Redis (REDIS_URL) in the multi-process set-up; flushed by the run.
REDIS_BENCH_URL = "redis://127.0.0.1:6379/14"
#: The peers' Redis (cache_page, dogpile), apart, so that each side's keys can be counted.
REDIS_PEERS_URL = "redis://127.0.0.1:6379/13"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_BENCH_DB = "coalescing_bench"
FIELDS = "name,price"
HOUR_MS = 3_600_000
#: Settings a developer's shell may carry that would change what is measured.
STRIPPED_ENV = {
    "DJANGO_SETTINGS_MODULE",
    "REDIS_URL",
    "DATABASE_URL",
    "PRODUCT_API_BASE",
    "FRESH_TTL_MS",
    "STALE_TTL_MS",
    "STALE_IF_ERROR_MS",
    "NEGATIVE_TTL_MS",
    "UPSTREAM_TIMEOUT_MS",
    "MEMORY_CACHE_MAX_BYTES",
    "LOG_LEVEL",
    "DEBUG",
    "SECRET_KEY",
    "PROMETHEUS_MULTIPROC_DIR",
    "BENCH_PEER",
    "BENCH_REDIS_URL",
}
ALL_TARGETS = ("ours", "bare", "naive", "cache_page", "dogpile", "nginx", "ours_asgi", "bare_asgi")
#: Served by uvicorn (one process, httptools, uvloop): they take part in W1
#: (one process) and W3 only, the figures of issue 10.
ASGI_TARGETS = ("ours_asgi", "bare_asgi")
#: Constant answers, no cache: nothing to count in the workloads about the upstream.
BARE_TARGETS = ("bare", "bare_asgi")
#: W3's interleaved pairs: a hit of ours, and the bare endpoint under the same server.
W3_PAIRS = (("ours", "bare"), ("ours_asgi", "bare_asgi"))
UVICORN = ["-m", "uvicorn", "--http", "httptools", "--loop", "uvloop"]
UVICORN += ["--no-access-log", "--log-level", "warning", "--host", "127.0.0.1"]
ALL_WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7")
#: W7's targets: our server alone, nginx in front of it, and the nginx peer.
W7_TARGETS = ("ours", "nginx_ours", "nginx")
#: An answer this slow or slower is counted apart (issue 12: under 1 % in W2).
SLOW_MS = 100.0
#: The fresh window of W2, W5 and W7 (the stale window is 60 s).
W2_FRESH_MS = 1000


@dataclasses.dataclass
class Plan:
    quick: bool
    reps: int  # repetitions of the short workloads (W1, W6)
    latency_ms: float = 200.0
    body_size: int = 1024
    w1_n: int = 1000
    w2_duration: float = 20.0
    w2_baseline_duration: float = 5.0
    w2_reps: int = 3
    w2_conns: int = 64
    w3_duration: float = 5.0
    w3_pairs: int = 5
    w3_peer_reps: int = 3
    w3_conns: int = 32
    w4_keys: int = 200_000
    w4_budget: int = 64 * 1024 * 1024
    w4_conns: int = 64
    w4_batches: int = 10
    w5_keys: int = 20
    w5_conns: int = 64
    w5_pre: float = 3.0
    w5_outage: float = 10.0
    w5_post: float = 3.0
    w5_reps: int = 2
    w6_keys: int = 2000
    w6_conns: int = 64
    w7_duration: float = 5.0
    w7_reps: int = 3
    w7_conns: int = 32

    @classmethod
    def from_env(cls) -> Plan:
        plan = cls._from_quick()
        for name, value in json.loads(os.environ.get("BENCH_PLAN") or "{}").items():
            if not hasattr(plan, name):
                raise SystemExit(f"BENCH_PLAN: no setting {name!r}")
            setattr(plan, name, value)
        return plan

    @classmethod
    def _from_quick(cls) -> Plan:
        if os.environ.get("QUICK", "") not in ("", "0"):
            return cls(
                quick=True,
                reps=1,
                w1_n=200,
                w2_duration=4.0,
                w2_baseline_duration=2.0,
                w2_reps=1,
                w3_duration=2.0,
                w3_pairs=1,
                w3_peer_reps=1,
                w4_keys=6_000,
                w4_budget=2 * 1024 * 1024,
                w4_batches=3,
                w5_keys=5,
                w5_pre=1.5,
                w5_outage=3.0,
                w5_post=1.0,
                w5_reps=1,
                w6_keys=256,
                w7_duration=2.0,
                w7_reps=1,
            )
        return cls(quick=False, reps=3)


# -- the servers ---------------------------------------------------------------


@dataclasses.dataclass
class Deployment:
    """One target as it is served: its front URLs (a request ``i`` goes to
    ``fronts[i % len(fronts)]``), the processes that hold its cache."""

    name: str
    fronts: list[str]
    procs: list[Proc]

    @property
    def base(self) -> str:
        return self.fronts[0]

    def url(self, key: str, front: int = 0) -> str:
        return f"{self.fronts[front]}/products?productId={quote(key)}&fields={FIELDS}"

    def urls(self, key: str) -> list[str]:
        return [self.url(key, i) for i in range(len(self.fronts))]

    def pattern(self) -> str:
        return self.fronts[0] + "/products?productId={i}&fields=" + FIELDS


class Upstream:
    def __init__(self, procs: Procs, latency_ms: float, size: int) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = [PYTHON, "-m", "bench.upstream", "--port", str(port)]
        args += ["--latency-ms", str(latency_ms), "--size", str(size)]
        self.proc = procs.start("upstream", args, clean_env({}))
        self.proc.wait_http(self.url + "/health")

    def control(self, path: str) -> dict[str, Any]:
        status, body = http_get(self.url + path, timeout=60)
        if status != 200:
            raise RuntimeError(f"upstream control {path}: {status}")
        return json.loads(body)

    def configure(self, **values: float) -> None:
        query = "&".join(f"{k}={v}" for k, v in values.items())
        self.control(f"/_bench/config?{query}")

    def calls(self, prefix: str) -> dict[str, int]:
        return self.control(f"/_bench/stats?prefix={quote(prefix)}")["per_key"]

    def calls_detail(self, prefix: str, since: float) -> list[list[Any]]:
        return self.control(f"/_bench/stats?prefix={quote(prefix)}&since={since}&detail=1")["calls"]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
    env.update(
        {
            "LOG_LEVEL": "WARNING",
            "DEBUG": "0",
            "SECRET_KEY": "bench-only-not-a-secret-0123456789abcdef",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(extra)
    return env


class Servers:
    """Starts the targets of a workload group with the settings of that group."""

    def __init__(self, procs: Procs, upstream: Upstream, tmp: Path, tools: dict[str, Any]) -> None:
        self.procs = procs
        self.upstream = upstream
        self.tmp = tmp
        self.tools = tools
        self.started: list[Proc] = []

    def _settings(self, fresh_ms: int, stale_ms: int, extra: dict[str, str]) -> dict[str, str]:
        env = {
            "PRODUCT_API_BASE": self.upstream.url,
            "FRESH_TTL_MS": str(fresh_ms),
            "STALE_TTL_MS": str(stale_ms),
            "BENCH_REDIS_URL": REDIS_PEERS_URL,
        }
        env.update(extra)
        return env

    def _python_server(
        self,
        name: str,
        env: dict[str, str],
        multi: bool,
        health: str,
        wsgi_module: str,
        root: Path = ROOT,
    ) -> Deployment:
        env = clean_env(env)
        if not multi:
            port = free_port()
            proc = self._start(
                f"{name}-serve", [PYTHON, "manage.py", "serve", "--port", str(port)], env, root
            )
            base = f"http://127.0.0.1:{port}"
            proc.wait_http(base + health)
            return Deployment(name, [base], [proc])
        # Three gunicorn gevent workers behind one port, and a second `serve`.
        gport, sport = free_port(), free_port()
        gunicorn = [
            PYTHON,
            "-m",
            "gunicorn",
            "-k",
            "gevent",
            "-w",
            "3",
            "-b",
            f"127.0.0.1:{gport}",
            "--worker-connections",
            "2000",
            "--graceful-timeout",
            "5",
            wsgi_module,
        ]
        g = self._start(f"{name}-gunicorn", gunicorn, env)
        s = self._start(f"{name}-serve2", [PYTHON, "manage.py", "serve", "--port", str(sport)], env)
        gbase, sbase = f"http://127.0.0.1:{gport}", f"http://127.0.0.1:{sport}"
        g.wait_http(gbase + health)
        s.wait_http(sbase + health)
        # 3/4 of the requests to the gunicorn port (its 3 workers), 1/4 to `serve`.
        return Deployment(name, [gbase, gbase, gbase, sbase], [g, s])

    def _uvicorn(self, name: str, env: dict[str, str], app: str, health: str) -> Deployment:
        """One uvicorn process, as issue 10 measures ASGI: httptools and uvloop."""
        port = free_port()
        proc = self._start(
            f"{name}-uvicorn", [PYTHON, *UVICORN, "--port", str(port), app], clean_env(env)
        )
        base = f"http://127.0.0.1:{port}"
        proc.wait_http(base + health)
        return Deployment(name, [base], [proc])

    def _start(self, name: str, args: list[str], env: dict[str, str], cwd: Path = ROOT) -> Proc:
        proc = self.procs.start(name, args, env, cwd)
        self.started.append(proc)
        return proc

    def ours(
        self,
        fresh_ms: int,
        stale_ms: int,
        multi: bool = False,
        memory_bytes: int | None = None,
        db_url: str | None = None,
        settings_module: str | None = None,
        env_extra: dict[str, str] | None = None,
        asgi: bool = False,
        root: Path = ROOT,
    ) -> Deployment:
        """Our server; ``root``: the checkout it runs from (one ``serve``, for
        a before/after of two commits, :mod:`bench.experiments.ab`)."""
        extra = {"DJANGO_SETTINGS_MODULE": settings_module or "coalesce_project.settings"}
        extra.update(env_extra or {})
        if memory_bytes is not None:
            extra["MEMORY_CACHE_MAX_BYTES"] = str(memory_bytes)
        if multi:
            extra["REDIS_URL"] = REDIS_BENCH_URL
            extra["DATABASE_URL"] = db_url or ""
        else:
            db = self.tmp / f"ours-{time.monotonic_ns()}.sqlite3"
            extra["DATABASE_URL"] = db_url or f"sqlite:///{db}"
        env = self._settings(fresh_ms, stale_ms, extra)
        migrate(clean_env(env))
        if asgi:
            return self._uvicorn("ours_asgi", env, "coalesce_project.asgi:application", "/metrics")
        return self._python_server(
            "ours", env, multi, "/metrics", "coalesce_project.wsgi", root=root
        )

    def peer(self, peer: str, fresh_ms: int, stale_ms: int, multi: bool = False) -> Deployment:
        extra = {
            "DJANGO_SETTINGS_MODULE": "bench.peers.settings",
            "BENCH_PEER": peer,
            "DATABASE_URL": f"sqlite:///{self.tmp / 'peers.sqlite3'}",
        }
        env = self._settings(fresh_ms, stale_ms, extra)
        if peer in ASGI_TARGETS:
            return self._uvicorn(peer, env, "bench.peers.asgi:application", "/health")
        return self._python_server(peer, env, multi, "/health", "bench.peers.wsgi")

    def nginx(
        self, fresh_ms: int, stale_ms: int, workers: int = 1, app: Deployment | None = None
    ) -> Deployment:
        """The nginx peer in front of the fake upstream; with ``app``, nginx in
        front of that server instead, caching by its headers (W7)."""
        folder = self.tmp / f"nginx-{time.monotonic_ns()}"
        folder.mkdir()
        # nginx's workers drop root for an unprivileged user: let it into the folder.
        self.tmp.chmod(0o755)
        folder.chmod(0o777)
        port = free_port()
        conf_name = "nginx_front.conf" if app else "nginx.conf"
        conf = (ROOT / "bench" / "peers" / conf_name).read_text()
        upstream_hostport = self.upstream.url.removeprefix("http://")
        for name, value in {
            "@APP@": app.base.removeprefix("http://") if app else "",
            "@WORKERS@": str(workers),
            "@DIR@": str(folder),
            "@PORT@": str(port),
            "@UPSTREAM@": upstream_hostport,
            "@FRESH@": str(max(1, round(fresh_ms / 1000))),
            "@STALE@": str(max(60, round(stale_ms / 1000))),
        }.items():
            conf = conf.replace(name, value)
        (folder / "nginx.conf").write_text(conf)
        name = "nginx_ours" if app else "nginx"
        proc = self._start(
            name,
            [self.tools["nginx"], "-p", str(folder), "-c", str(folder / "nginx.conf")],
            clean_env({}),
        )
        base = f"http://127.0.0.1:{port}"
        proc.wait_http(base + "/health")
        return Deployment(name, [base], [proc, *(app.procs if app else [])])

    def start(
        self, targets: Sequence[str], fresh_ms: int, stale_ms: int, multi: bool = False, **kw: Any
    ) -> dict[str, Deployment]:
        out: dict[str, Deployment] = {}
        for name in targets:
            if name in ("ours", "ours_asgi"):
                asgi = name == "ours_asgi"
                out[name] = self.ours(fresh_ms, stale_ms, multi=multi, asgi=asgi, **kw)
            elif name == "nginx":
                out[name] = self.nginx(fresh_ms, stale_ms, workers=4 if multi else 1)
            else:
                out[name] = self.peer(name, fresh_ms, stale_ms, multi=multi)
        return out

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.procs.stop(proc)
        self.started.clear()


def migrate(env: dict[str, str]) -> None:
    done = subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{done.stdout}\n{done.stderr}")


# -- measuring -------------------------------------------------------------------


def loadgen(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    return json.loads(start_loadgen(spec).result(timeout))


def start_loadgen(spec: dict[str, Any]) -> Helper:
    return Helper([PYTHON, "-m", "bench.loadgen"], json.dumps(spec), clean_env({}))


def warm(dep: Deployment, keys: Sequence[str], conns: int = 32) -> dict[str, Any]:
    """One request per key (every front, for a multi-process target), answered 200."""
    urls = [u for k in keys for u in dep.urls(k)]
    res = loadgen(
        {"mode": "closed", "urls": urls, "order": "once", "connections": conns, "duration": 60},
        timeout=120,
    )
    if res["statuses"].get("200", 0) != len(urls):
        raise RuntimeError(f"warming {dep.name} failed: {res['statuses']}")
    return res


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def wrk(url: str, conns: int, duration: float, tools: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [tools["wrk"], "-t1", f"-c{conns}", f"-d{duration:g}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        start_new_session=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr}")
    return parse_wrk(done.stdout)


def parse_wrk(text: str) -> dict[str, Any]:
    def ms(value: str) -> float:
        for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60_000.0)):
            if value.endswith(unit):
                return float(value[: -len(unit)]) * factor
        return float(value)

    out: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    in_distribution = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Latency Distribution"):
            in_distribution = True
            continue
        if in_distribution:
            parts = line.split()
            if len(parts) == 2 and parts[0].endswith("%"):
                out[f"p{parts[0].rstrip('%')}"] = ms(parts[1])
                continue
            in_distribution = False
        if line.startswith("Requests/sec:"):
            out["rps"] = float(line.split()[1])
        elif line.startswith("Non-2xx or 3xx responses:"):
            out["non_2xx"] = int(line.split()[-1])
        elif line.startswith("Socket errors:"):
            out["socket_errors"] = sum(
                int(part.split()[-1]) for part in line.split(":", 1)[1].split(",")
            )
        elif " requests in " in line:
            out["requests"] = int(line.split()[0])
    if "rps" not in out:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    return out


def median_of(runs: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    return out


def caches(names: Iterable[str]) -> list[str]:
    """The targets with a cache, under WSGI (or nginx): those of the workloads
    about the upstream beyond W1 and W3 (the ASGI targets are issue 10's W1 and W3)."""
    return [n for n in names if n not in BARE_TARGETS and n not in ASGI_TARGETS]


def rotated(items: Sequence[T], by: int) -> list[T]:
    if not items:
        return []
    by %= len(items)
    return list(items[by:]) + list(items[:by])


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the workloads ---------------------------------------------------------------


class Bench:
    def __init__(self, plan: Plan, tools: dict[str, Any], targets: list[str]) -> None:
        self.plan = plan
        self.tools = tools
        self.targets = targets
        self.notes: list[str] = []
        self.results: dict[str, Any] = {}
        self.loadavg: dict[str, list[float]] = {}

    def note(self, text: str) -> None:
        log("note: " + text)
        self.notes.append(text)

    # W1 -------------------------------------------------------------------

    def w1_run(self, up: Upstream, dep: Deployment, key: str) -> dict[str, Any]:
        res = loadgen(
            {"mode": "stampede", "urls": dep.urls(key), "n": self.plan.w1_n, "timeout": 30},
            timeout=120,
        )
        time.sleep(0.3)  # a late call would still be counted
        lat = res["latency_ms"]
        calls = up.calls_detail(key, 0)
        first = min((c[0] for c in calls), default=None)
        return {
            "calls": len(calls),
            # How long after the burst the (first) upstream call began: the
            # time spent taking the burst in before anyone called the upstream.
            "call_start_ms": (first - res["fired_wall"]) * 1000 if first else None,
            "p50_ms": lat.get("p50"),
            "p99_ms": lat.get("p99"),
            "max_ms": lat.get("max"),
            "makespan_ms": res["makespan_ms"],
            "errors": res["errors"] + sum(n for s, n in res["statuses"].items() if s != "200"),
            "statuses": res["statuses"],
            "x_cache": res["x_cache"],
            "connect_errors": res["connect_errors"],
        }

    def w1(self, up: Upstream, deps: dict[str, Deployment], setup: str) -> None:
        names = list(deps) if setup == "single" else caches(deps)
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for rep in range(self.plan.reps):
            for name in rotated(names, rep):
                key = f"w1{setup[0]}-{name}-r{rep}-{time.monotonic_ns() % 10**9}"
                log(f"W1 {setup} {name} rep {rep}")
                runs[name].append(self.w1_run(up, deps[name], key))
        self.results.setdefault("W1", {})[setup] = {
            n: {
                "runs": r,
                "median": median_of(
                    r, ("calls", "call_start_ms", "p50_ms", "p99_ms", "makespan_ms", "errors")
                ),
            }
            for n, r in runs.items()
        }

    # W2 -------------------------------------------------------------------

    def closed_hot(self, dep: Deployment, key: str, duration: float) -> dict[str, Any]:
        return loadgen(
            {
                "mode": "closed",
                "urls": dep.urls(key),
                "connections": self.plan.w2_conns,
                "duration": duration,
                "timeout": 30,
                "slow_ms": SLOW_MS,
            },
            timeout=duration + 90,
        )

    def w2_baseline(self, up: Upstream, deps: dict[str, Deployment]) -> None:
        """Warm-hit p99 of every cache with the W2 client, nothing expiring."""
        names = [n for n in deps if n != "naive" and n not in ASGI_TARGETS]
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for rep in range(self.plan.w2_reps):
            for name in rotated(names, rep):
                key = f"w2b-{name}-r{rep}"
                warm(deps[name], [key])
                log(f"W2 warm-hit baseline {name} rep {rep}")
                res = self.closed_hot(deps[name], key, self.plan.w2_baseline_duration)
                runs[name].append(
                    {
                        "p50_ms": res["latency_ms"].get("p50"),
                        "p99_ms": res["latency_ms"].get("p99"),
                        "rps": res["rps"],
                        "errors": res["errors"],
                        "slow_share": slow_share(res),
                    }
                )
        self.results.setdefault("W2", {})["warm"] = {
            n: {
                "runs": r,
                "median": median_of(r, ("p50_ms", "p99_ms", "rps", "errors", "slow_share")),
            }
            for n, r in runs.items()
        }

    def w2(self, up: Upstream, deps: dict[str, Deployment]) -> None:
        names = caches(deps)
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for rep in range(self.plan.w2_reps):
            for name in rotated(names, rep):
                key = f"w2-{name}-r{rep}"
                warm(deps[name], [key])
                before = up.calls(key).get(key, 0)
                log(f"W2 expiry under load {name} rep {rep}")
                res = self.closed_hot(deps[name], key, self.plan.w2_duration)
                time.sleep(0.3)
                calls = up.calls(key).get(key, 0) - before
                window = per_window(up, key, res["wall_started"], res["elapsed_s"], W2_FRESH_MS)
                runs[name].append(
                    {
                        "calls": calls,
                        "duration_s": res["elapsed_s"],
                        "p50_ms": res["latency_ms"].get("p50"),
                        "p99_ms": res["latency_ms"].get("p99"),
                        "max_ms": res["latency_ms"].get("max"),
                        "rps": res["rps"],
                        "errors": res["errors"],
                        "x_cache": res["x_cache"],
                        "stale_share": stale_share(res["x_cache"]),
                        "slow_share": slow_share(res),
                        **window,
                    }
                )
        keys = ("calls", "p50_ms", "p99_ms", "max_ms", "rps", "errors")
        keys += ("stale_share", "slow_share", "calls_per_window", "max_calls_per_window")
        section = {n: {"runs": r, "median": median_of(r, keys)} for n, r in runs.items()}
        if "ours" in runs and "dogpile" in runs:
            # Side by side: each rep's ours against the dogpile run of the same rep.
            ratios = [
                a["p99_ms"] / b["p99_ms"]
                for a, b in zip(runs["ours"], runs["dogpile"], strict=True)
                if a.get("p99_ms") and b.get("p99_ms")
            ]
            section["ours"]["p99_vs_dogpile"] = {
                "ratios": ratios,
                "median": statistics.median(ratios) if ratios else None,
            }
        self.results.setdefault("W2", {})["expiry"] = section

    # W3 -------------------------------------------------------------------

    def w3(self, up: Upstream, deps: dict[str, Deployment]) -> None:
        if not self.tools.get("wrk"):
            self.note("W3 skipped: wrk is not installed (apt-get install wrk)")
            return
        plan = self.plan
        urls = {}
        for name, dep in deps.items():
            key = f"w3-{name}"
            warm(dep, [key])
            urls[name] = dep.url(key)
            wrk(urls[name], plan.w3_conns, 1.0, self.tools)  # warm-up, not recorded
        pairs = [(a, b) for a, b in W3_PAIRS if a in deps and b in deps]
        paired = {n for pair in pairs for n in pair}
        # A member of a pair whose partner is not selected runs as often, alone.
        lone = [n for pair in W3_PAIRS for n in pair if n in deps and n not in paired]
        peers = [n for n in deps if n not in paired and n not in lone]
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in deps}
        ratios: dict[str, list[float]] = {f"{a}/{b}": [] for a, b in pairs}

        def measure(name: str, what: str) -> dict[str, Any]:
            log(f"W3 hit throughput {name} {what}")
            got = wrk(urls[name], plan.w3_conns, plan.w3_duration, self.tools)
            runs[name].append(got)
            return got

        for rep in range(max(plan.w3_pairs, plan.w3_peer_reps)):
            if rep < plan.w3_pairs:
                for a, b in rotated(pairs, rep):
                    # Each pair back to back, its order alternating: a burst of
                    # someone else's load then lands on both sides of a ratio.
                    order = (a, b) if rep % 2 == 0 else (b, a)
                    got = {n: measure(n, f"pair {rep}") for n in order}
                    ratios[f"{a}/{b}"].append(got[a]["rps"] / got[b]["rps"])
                for name in lone:
                    measure(name, f"rep {rep}")
            if rep < plan.w3_peer_reps:
                for name in rotated(peers, rep):
                    measure(name, f"rep {rep}")
        self.results["W3"] = self._w3_results(up, runs, ratios)

    @staticmethod
    def _w3_results(
        up: Upstream, runs: dict[str, list[dict[str, Any]]], ratios: dict[str, list[float]]
    ) -> dict[str, Any]:
        calls = up.calls("w3-")
        pairs = {
            pair: {"ratios": r, "median": statistics.median(r) if r else None}
            for pair, r in ratios.items()
        }
        ours_bare = pairs.get("ours/bare", {})
        return {
            "targets": {
                n: {
                    "runs": r,
                    "median": median_of(r, ("rps", "p50", "p99", "non_2xx")),
                    "upstream_calls": calls.get(f"w3-{n}", 0),
                }
                for n, r in runs.items()
            },
            "pairs": pairs,
            # The ours/bare pair under its older names, which the report's goals read.
            "pair_ratios": ours_bare.get("ratios", []),
            "ratio_median": ours_bare.get("median"),
        }

    # W4 -------------------------------------------------------------------

    def w4(self, up: Upstream, servers: Servers, **ours: Any) -> None:
        plan = self.plan
        up.configure(latency_ms=0)
        try:
            dep = servers.ours(HOUR_MS, 2 * HOUR_MS, memory_bytes=plan.w4_budget, **ours)
            pid = dep.procs[0].pid
            warmup = 2000 if not plan.quick else 500
            self._w4_batch(dep, "w4warm-", 0, warmup)
            time.sleep(1.0)
            start = rss_kib(pid)
            curve = [{"keys": 0, "rss_mib": start["VmRSS"] / 1024}]
            per_batch = plan.w4_keys // plan.w4_batches
            started = time.monotonic()
            failed = 0
            for batch in range(plan.w4_batches):
                log(f"W4 memory batch {batch + 1}/{plan.w4_batches}")
                res = self._w4_batch(dep, "w4-", batch * per_batch, per_batch)
                failed += res["errors"]
                now = rss_kib(pid)
                curve.append({"keys": (batch + 1) * per_batch, "rss_mib": now["VmRSS"] / 1024})
            elapsed = time.monotonic() - started
            end = rss_kib(pid)
            calls = sum(up.calls("w4-").values())
            self.results["W4"] = {
                "budget_mib": plan.w4_budget / 2**20,
                "keys": per_batch * plan.w4_batches,
                "body_bytes": plan.body_size,
                "rss_start_mib": start["VmRSS"] / 1024,
                "rss_end_mib": end["VmRSS"] / 1024,
                "rss_peak_mib": end["VmHWM"] / 1024,
                "growth_mib": (end["VmRSS"] - start["VmRSS"]) / 1024,
                "peak_growth_mib": (end["VmHWM"] - start["VmRSS"]) / 1024,
                "curve": curve,
                "errors": failed,
                "upstream_calls": calls,
                "keys_per_s": round(per_batch * plan.w4_batches / elapsed, 1),
                "upstream_latency_ms": 0,
            }
        finally:
            up.configure(latency_ms=plan.latency_ms)
            servers.stop_all()

    def _w4_batch(self, dep: Deployment, prefix: str, start: int, count: int) -> dict[str, Any]:
        return loadgen(
            {
                "mode": "closed",
                "pattern": dep.fronts[0] + "/products?productId=" + prefix + "{i}&fields=" + FIELDS,
                "start": start,
                "count": count,
                "order": "once",
                "connections": self.plan.w4_conns,
                "duration": 1200,
                "timeout": 30,
            },
            timeout=1500,
        )

    # W5 -------------------------------------------------------------------

    def w5(self, up: Upstream, deps: dict[str, Deployment]) -> None:
        plan = self.plan
        names = caches(deps)
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for rep in range(plan.w5_reps):
            for name in rotated(names, rep):
                log(f"W5 outage {name} rep {rep}")
                runs[name].append(self.w5_run(up, deps[name], f"w5-{name}-r{rep}-"))
        self.results["W5"] = {
            n: {
                "runs": r,
                "median": median_of(
                    r,
                    ("errors", "outage_errors", "calls_per_key_s", "max_calls_per_key_s", "p99_ms"),
                ),
            }
            for n, r in runs.items()
        }

    def w5_run(self, up: Upstream, dep: Deployment, prefix: str) -> dict[str, Any]:
        plan = self.plan
        keys = [f"{prefix}{i}" for i in range(plan.w5_keys)]
        warm(dep, keys)
        duration = plan.w5_pre + plan.w5_outage + plan.w5_post
        urls = [u for k in keys for u in dep.urls(k)]
        helper = start_loadgen(
            {
                "mode": "closed",
                "urls": urls,
                "connections": plan.w5_conns,
                "duration": duration,
                "timeout": 30,
            }
        )
        try:
            time.sleep(plan.w5_pre + 0.5)  # the client's own start-up
            began = time.time()
            up.configure(status=503)
            time.sleep(plan.w5_outage)
            up.configure(status=200)
            ended = time.time()
            res = json.loads(helper.result(duration + 90))
        finally:
            up.configure(status=200)
            helper.kill()
        calls = [c for c in up.calls_detail(prefix, began) if c[0] <= ended]
        per_key: dict[str, int] = {}
        for _t, key, _status in calls:
            per_key[key] = per_key.get(key, 0) + 1
        window = ended - began
        # The client's timeline is in seconds since it started; the outage, in wall time.
        offset = began - res["wall_started"]
        outage_errors = sum(
            s["errors"] for s in res["timeline"] if offset - 1 <= s["t"] <= offset + window
        )
        return {
            "errors": res["errors"],
            "outage_errors": outage_errors,
            "requests": res["requests"],
            "outage_calls": len(calls),
            "calls_per_key_s": len(calls) / (len(keys) * window),
            "max_calls_per_key_s": max(per_key.values(), default=0) / window,
            "p99_ms": res["latency_ms"].get("p99"),
            "statuses": res["statuses"],
            "x_cache": res["x_cache"],
        }

    # W6 -------------------------------------------------------------------

    def w6(self, up: Upstream, deps: dict[str, Deployment]) -> None:
        plan = self.plan
        names = caches(deps)
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for name in names:
            # Not recorded: fills the connection pools (to the upstream, to Redis),
            # so that the runs measure misses, not first connections.
            warm(
                deps[name], [f"w6warm-{name}-{i}" for i in range(plan.w6_conns * 2)], plan.w6_conns
            )
        for rep in range(plan.reps):
            for name in rotated(names, rep):
                log(f"W6 cold misses {name} rep {rep}")
                prefix = f"w6-{name}-r{rep}-"
                res = loadgen(
                    {
                        "mode": "closed",
                        "pattern": deps[name].fronts[0]
                        + "/products?productId="
                        + prefix
                        + "{i}&fields="
                        + FIELDS,
                        "count": plan.w6_keys,
                        "order": "once",
                        "connections": plan.w6_conns,
                        "duration": 300,
                        "timeout": 30,
                    },
                    timeout=400,
                )
                lat = res["latency_ms"]
                runs[name].append(
                    {
                        "p50_ms": lat.get("p50"),
                        "p99_ms": lat.get("p99"),
                        "added_p50_ms": (lat["p50"] - plan.latency_ms) if lat.get("p50") else None,
                        "added_p99_ms": (lat["p99"] - plan.latency_ms) if lat.get("p99") else None,
                        "errors": res["errors"],
                        "rps": res["rps"],
                        "calls": sum(up.calls(prefix).values()),
                    }
                )
        self.results["W6"] = {
            n: {
                "runs": r,
                "median": median_of(
                    r, ("added_p50_ms", "added_p99_ms", "p50_ms", "p99_ms", "errors", "calls")
                ),
            }
            for n, r in runs.items()
        }

    # W7 -------------------------------------------------------------------

    def w7(self, up: Upstream, deps: dict[str, Deployment]) -> None:
        """Hits through nginx in front of ours, beside ours alone and the nginx peer."""
        if not self.tools.get("wrk"):
            self.note("W7 skipped: wrk is not installed (apt-get install wrk)")
            return
        plan = self.plan
        names = [n for n in W7_TARGETS if n in deps]
        app = deps["ours"]
        for name in names:
            # Not recorded: fills the connection pools (nginx to the app, to the upstream).
            key = f"w7warm-{name}"
            warm(deps[name], [key])
            wrk(deps[name].url(key), plan.w7_conns, 1.0, self.tools)
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for rep in range(plan.w7_reps):
            for name in rotated(names, rep):
                key = f"w7-{name}-r{rep}"
                warm(deps[name], [key])
                log(f"W7 hits through nginx {name} rep {rep}")
                app_before = app_requests(app) if name != "nginx" else None
                began = time.time()
                got = wrk(deps[name].url(key), plan.w7_conns, plan.w7_duration, self.tools)
                elapsed = time.time() - began
                time.sleep(0.3)
                got.update(per_window(up, key, began, elapsed, W2_FRESH_MS))
                if app_before is not None:
                    passed = app_requests(app) - app_before
                    got["app_requests"] = passed
                    got["app_requests_per_s"] = passed / elapsed
                    if name == "nginx_ours" and got.get("requests"):
                        # wrk does not count the answers in flight at its end.
                        got["absorbed_share"] = max(0.0, 1 - passed / got["requests"])
                runs[name].append(got)
        keys = ("rps", "p50", "p99", "non_2xx", "calls_per_window", "max_calls_per_window")
        keys += ("app_requests_per_s", "absorbed_share")
        section: dict[str, Any] = {
            n: {"runs": r, "median": median_of(r, keys)} for n, r in runs.items()
        }
        pairs = {}
        for other in ("ours", "nginx"):
            if "nginx_ours" in runs and other in runs:
                ratios = [
                    a["rps"] / b["rps"]
                    for a, b in zip(runs["nginx_ours"], runs[other], strict=True)
                    if b.get("rps")
                ]
                pairs[f"nginx_ours/{other}"] = {
                    "ratios": ratios,
                    "median": statistics.median(ratios) if ratios else None,
                }
        section["pairs"] = pairs
        self.results["W7"] = section


def stale_share(x_cache: dict[str, int]) -> float | None:
    """The share of answers served stale (ours: STALE; nginx: STALE or UPDATING);
    None for a target that says nothing (no ``X-Cache``)."""
    total = sum(x_cache.values())
    if not total or set(x_cache) <= {"-"}:
        return None
    return (x_cache.get("STALE", 0) + x_cache.get("UPDATING", 0)) / total


def slow_share(res: dict[str, Any]) -> float | None:
    """The share of good answers that took ``SLOW_MS`` or more."""
    n = res["latency_ms"].get("n", 0)
    return res.get("slow", 0) / n if n else None


def per_window(
    up: Upstream, key: str, began: float, elapsed: float, fresh_ms: int
) -> dict[str, float]:
    """The upstream calls for ``key`` while the load ran, per fresh window:
    the mean, and the most in one window (windows counted from the start)."""
    fresh_s = fresh_ms / 1000
    calls = [c[0] for c in up.calls_detail(key, began) if c[1] == key and c[0] <= began + elapsed]
    per: dict[int, int] = {}
    for t in calls:
        per[int((t - began) / fresh_s)] = per.get(int((t - began) / fresh_s), 0) + 1
    return {
        "calls_during": len(calls),
        "calls_per_window": len(calls) / (elapsed / fresh_s) if elapsed else 0.0,
        "max_calls_per_window": max(per.values(), default=0),
    }


def app_requests(dep: Deployment) -> float:
    """The answers of the products endpoint that our server counted (its /metrics)."""
    status, body = http_get(dep.base + "/metrics", timeout=30)
    if status != 200:
        raise RuntimeError(f"{dep.name} /metrics: {status}")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("coalescing_requests_total{") and 'endpoint="products"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- the run ---------------------------------------------------------------------


def find_tools() -> dict[str, Any]:
    return {
        "wrk": shutil.which("wrk"),
        "nginx": shutil.which("nginx") or (Path("/usr/sbin/nginx").exists() and "/usr/sbin/nginx"),
    }


def redis_ok() -> bool:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_BENCH_URL, socket_timeout=2)
        client.ping()
        return True
    except Exception:
        return False


def flush_redis() -> None:
    import redis

    for url in (REDIS_BENCH_URL, REDIS_PEERS_URL):
        redis.Redis.from_url(url, socket_timeout=5).flushdb()


def redis_keys() -> int:
    import redis

    return int(redis.Redis.from_url(REDIS_BENCH_URL, socket_timeout=5).dbsize())


def postgres_database() -> str | None:
    """A fresh PostgreSQL database for the multi-process set-up, or None."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {POSTGRES_BENCH_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {POSTGRES_BENCH_DB}")
    except Exception as exc:
        log(f"PostgreSQL not usable: {exc}")
        return None
    return f"postgres://postgres@127.0.0.1:5432/{POSTGRES_BENCH_DB}"


def drop_postgres_database() -> None:
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {POSTGRES_BENCH_DB} WITH (FORCE)")


def machine(tools: dict[str, Any]) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(args: list[str]) -> str:
        with contextlib.suppress(Exception):
            done = subprocess.run(args, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        return ""

    def dist(name: str) -> str:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
        return ""

    commit = version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    # The run measures the working tree: what differs from the commit, outside bench/.
    uncommitted: list[str] = []
    with contextlib.suppress(Exception):
        done = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        uncommitted = [
            line[3:] for line in done.stdout.splitlines() if not line[3:].startswith("bench/")
        ]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "commit": commit,
        "uncommitted": uncommitted,
        "versions": {
            name: dist(name)
            for name in (
                "Django",
                "django-ninja",
                "gevent",
                "gunicorn",
                "uvicorn",
                "httptools",
                "uvloop",
                "redis",
                "dogpile.cache",
            )
        }
        | {
            "django-redis": dist("django-redis"),
            "nginx": version([tools["nginx"], "-v"]).rpartition("nginx/")[2]
            if tools.get("nginx")
            else "",
            "wrk": version([tools["wrk"], "-v"]).split(" [")[0].removeprefix("wrk ")
            if tools.get("wrk")
            else "",
        },
    }


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    with contextlib.suppress(ValueError, OSError):
        if hard != resource.RLIM_INFINITY and hard < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        elif soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def selection(name: str, allowed: Sequence[str]) -> list[str]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return list(allowed)
    chosen = [x.strip() for x in raw.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in allowed]
    if unknown:
        raise SystemExit(f"{name}: unknown {unknown}; choose from {list(allowed)}")
    return [x for x in allowed if x in chosen]


#: What the bench needs beyond the project: the ``bench`` extra of pyproject.toml.
BENCH_MODULES = {"matplotlib": "matplotlib", "dogpile.cache": "dogpile.cache"}


def preflight() -> None:
    missing = []
    for module, dist in BENCH_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise SystemExit(
            f"bench: missing {', '.join(missing)}: pip install -e '.[bench]' "
            "(or `make bench`, which does)"
        )


def main() -> int:
    preflight()
    plan = Plan.from_env()
    workloads = selection("BENCH_ONLY", ALL_WORKLOADS)
    targets = selection("BENCH_TARGETS", ALL_TARGETS)
    default_out = QUICK_DIR / "latest.json" if plan.quick else RESULTS / "latest.json"
    out_path = Path(os.environ.get("BENCH_OUT", default_out))
    tools = find_tools()
    bench = Bench(plan, tools, targets)
    if not tools.get("nginx") and "nginx" in targets:
        bench.note("nginx peer skipped: nginx is not installed (apt-get install nginx-light)")
        targets.remove("nginx")
    have_redis = redis_ok()
    if not have_redis:
        for peer in ("cache_page", "dogpile"):
            if peer in targets:
                bench.note(f"{peer} peer skipped: Redis does not answer at {REDIS_BENCH_URL}")
                targets.remove(peer)
    raise_fd_limit()
    started = time.time()
    info = machine(tools)
    log(f"machine: {info['nproc']} cpus, {info['cpu_model']}, python {info['python']}")
    log(f"plan: {'QUICK smoke run' if plan.quick else 'full run'}; workloads {workloads}")
    tmp = Path(tempfile.mkdtemp(prefix="coalescing-bench-"))
    keep_logs = os.environ.get("BENCH_KEEP_LOGS", "") not in ("", "0")
    ok = False
    try:
        with Procs(tmp) as procs:
            up = Upstream(procs, plan.latency_ms, plan.body_size)
            servers = Servers(procs, up, tmp, tools)
            run_groups(bench, workloads, targets, up, servers, have_redis)
        ok = True
    finally:
        drop_postgres_database()
        if ok and not keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"server logs kept in {tmp}")
    results = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "quick": plan.quick,
        "plan": dataclasses.asdict(plan),
        "machine": info
        | {
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "loadavg_1min_at_workload_start": bench.loadavg,
        },
        "targets": targets,
        "workloads": bench.results,
        "notes": bench.notes,
    }
    results = merged_with_saved(results, out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    tmp_out.replace(out_path)
    log(f"results: {out_path} ({results['duration_s']:.0f} s)")
    from bench import report

    report.main([str(out_path), str(QUICK_DIR if plan.quick else ROOT / "docs")])
    return 0


def merged_with_saved(results: dict[str, Any], out_path: Path) -> dict[str, Any]:
    """A narrowed full run keeps what the saved results have that it did not measure."""
    narrowed = any(os.environ.get(v, "").strip() for v in ("BENCH_ONLY", "BENCH_TARGETS"))
    if results["quick"] or not narrowed or os.environ.get("BENCH_MERGE", "1") == "0":
        return results
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(out_path.read_text())
        if not saved.get("quick"):
            log(f"keeping what this run did not measure from {out_path}")
            return merge.merge(saved, results)
    return results


def run_groups(
    bench: Bench,
    workloads: list[str],
    targets: list[str],
    up: Upstream,
    servers: Servers,
    have_redis: bool,
) -> None:
    if have_redis:
        flush_redis()
    # Group A: nothing expires (fresh for an hour): cold stampede, cold misses,
    # hit throughput, and the warm-hit latency that W2 is compared with.
    if {"W1", "W2", "W3", "W6"} & set(workloads):
        log("starting the servers: long freshness")
        asgi_used = bool({"W1", "W3"} & set(workloads))
        names = [t for t in targets if asgi_used or t not in ASGI_TARGETS]
        deps = servers.start(names, HOUR_MS, 2 * HOUR_MS)
        try:
            for workload, run in (
                ("W1", lambda: bench.w1(up, deps, "single")),
                ("W6", lambda: bench.w6(up, deps)),
                ("W3", lambda: bench.w3(up, deps)),
                ("W2", lambda: bench.w2_baseline(up, deps)),
            ):
                if workload in workloads:
                    guarded(bench, workload, run)
        finally:
            servers.stop_all()
    # Group B: fresh for one second: expiry under load and the outage.
    if {"W2", "W5"} & set(workloads):
        log("starting the servers: FRESH_TTL_MS=1000")
        names = caches(targets)
        deps = servers.start(names, W2_FRESH_MS, 60_000)
        try:
            if "W2" in workloads:
                guarded(bench, "W2", lambda: bench.w2(up, deps))
            if "W5" in workloads:
                guarded(bench, "W5", lambda: bench.w5(up, deps))
        finally:
            servers.stop_all()
    # Group C: the cold stampede across processes sharing Redis (and PostgreSQL).
    if "W1" in workloads:
        multi_stampede(bench, targets, up, servers, have_redis)
    if "W4" in workloads and "ours" in targets:
        guarded(bench, "W4", lambda: bench.w4(up, servers))
    # Group D: nginx in front of ours, fresh for one second.
    if "W7" in workloads:
        nginx_in_front(bench, targets, up, servers)


def nginx_in_front(bench: Bench, targets: list[str], up: Upstream, servers: Servers) -> None:
    if "ours" not in targets:
        bench.note("W7 skipped: it needs ours among the targets")
        return
    if not bench.tools.get("nginx"):
        bench.note("W7 skipped: nginx is not installed (apt-get install nginx-light)")
        return
    log("starting the servers: FRESH_TTL_MS=1000, nginx in front of ours")
    try:
        ours = servers.ours(W2_FRESH_MS, 60_000)
        deps = {"ours": ours, "nginx_ours": servers.nginx(W2_FRESH_MS, 60_000, app=ours)}
        if "nginx" in targets:
            deps["nginx"] = servers.nginx(W2_FRESH_MS, 60_000)
        guarded(bench, "W7", lambda: bench.w7(up, deps))
    finally:
        servers.stop_all()


def multi_stampede(
    bench: Bench, targets: list[str], up: Upstream, servers: Servers, have_redis: bool
) -> None:
    if not have_redis:
        bench.note("W1 multi-process skipped: Redis does not answer")
        return
    db_url = postgres_database()
    if db_url is None:
        bench.note("W1 multi-process skipped: PostgreSQL does not answer at 127.0.0.1:5432")
        return
    flush_redis()
    names = caches(targets)
    log("starting the servers: 3 gunicorn gevent workers + a second serve, sharing Redis")
    try:
        deps = servers.start(names, HOUR_MS, 2 * HOUR_MS, multi=True, db_url=db_url)
        guarded(bench, "W1", lambda: bench.w1(up, deps, "multi"))
        if "ours" in names and "W1" in bench.results:
            ours_keys = redis_keys()
            bench.results["W1"]["multi_ours_redis_keys"] = ours_keys
            multi = bench.results["W1"].get("multi", {}).get("ours")
            if multi and multi["median"]["calls"] not in (None, 1):
                bench.note(
                    f"W1 multi-process: ours made {multi['median']['calls']:g} upstream calls "
                    f"for one key (median of runs); its Redis (db 14) held {ours_keys} keys "
                    "after the runs"
                    + (": the shared Redis tier is not on in this build" if not ours_keys else "")
                )
    finally:
        servers.stop_all()


def guarded(bench: Bench, workload: str, run: Callable[[], None]) -> None:
    """A failed workload is reported, and the others still run."""
    # The machine is shared: how busy it was when each workload began.
    bench.loadavg.setdefault(workload, []).append(round(os.getloadavg()[0], 2))
    try:
        run()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        bench.note(f"{workload} failed: {type(exc).__name__}: {str(exc)[:500]}")


if __name__ == "__main__":
    sys.exit(main())
