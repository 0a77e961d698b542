"""``make faults``: every scenario against a cluster of our own; figures to docs.

    python -m faults.run                   # all scenarios, docs/reliability.md rewritten
    python -m faults.run --short           # the short form (what tests/test_faults.py runs)
    python -m faults.run --only slow,down  # some scenarios; --no-write leaves the doc alone

Exit status 1 when a scenario misses a target.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

from testkit.upstream import FakeUpstream

from . import report
from .cluster import SETTINGS, WAIT_BOUND_S, Cluster, describe_machine
from .load import Result
from .scenarios import SCENARIOS, Ctx
from .scenarios_db import DB_SCENARIOS  # noqa: F401  (registers them)
from .scenarios_http import HTTP_SCENARIOS  # noqa: F401  (registers them)

SHARED_POSTGRES = os.environ.get(
    "DATABASE_URL_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres"
)


def run(names: list[str], scale: float, threads: int, log=print) -> tuple[list[Result], Cluster]:
    upstream = FakeUpstream()
    cluster = Cluster(upstream.url, workers=2, shared_postgres_url=SHARED_POSTGRES)
    results: list[Result] = []
    try:
        cluster.start()
        ctx = Ctx(cluster, upstream, scale=scale, threads=threads)
        for name in names:
            started = time.monotonic()
            result = SCENARIOS[name].run(ctx)
            upstream.reset()
            results.append(result)
            problems = result.violations(WAIT_BOUND_S)
            status = "skipped" if result.skipped else ("ok" if not problems else "FAIL")
            log(
                f"{name:14s} {status:7s} {time.monotonic() - started:5.1f}s  "
                f"requests={result.requests} status={result.by_status} "
                f"calls={result.upstream_calls} lost={result.lost} crossed={result.crossed} "
                f"max={result.max_latency:.2f}s stale_not_200={result.stale_keys_not_200}"
            )
            for line in problems + result.notes:
                log(f"    {line}")
    finally:
        cluster.stop()
        upstream.close()
    return results, cluster


def render(results: list[Result], command: str, cluster: Cluster, elapsed: float) -> str:
    settings = ", ".join(f"`{k}={v}`" for k, v in SETTINGS.items())
    pg = cluster.postgres_note or "a throwaway cluster of its own (initdb, pg_ctl)"
    parts = [
        f"Run {datetime.date.today().isoformat()} with `{command}` in {elapsed / 60:.1f} min, "
        f"on {describe_machine()}.",
        "",
        "Servers: one `manage.py serve` and `gunicorn -k gevent -w 2`, sharing a redis-server "
        f"of the suite's own (behind its delay proxy) and PostgreSQL ({pg}); the fake upstream "
        f"of the tests in the driver process. Settings: {settings}, the rest default "
        "(`UPSTREAM_MAX_CONCURRENCY` 100). The wait bound is "
        f"`UPSTREAM_TIMEOUT_MS` + 1 s = {WAIT_BOUND_S:.1f} s.",
        "",
        report.summary_table(results, WAIT_BOUND_S),
        "",
    ]
    parts += [report.scenario_table(r, WAIT_BOUND_S) for r in results]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="short phases, fewer scenarios")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--threads", type=int, default=0, help="load threads (default 8, 6)")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite the doc")
    parser.add_argument("--doc", default=str(report.DOC), help="where to write the figures")
    args = parser.parse_args(argv)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            parser.error(f"unknown scenarios: {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    else:
        names = [n for n, s in SCENARIOS.items() if s.short or not args.short]
    scale = 0.3 if args.short else 1.0
    threads = args.threads or (6 if args.short else 8)
    started = time.monotonic()
    results, cluster = run(names, scale, threads)
    elapsed = time.monotonic() - started
    failed = [r.name for r in results if r.violations(WAIT_BOUND_S)]
    if not args.no_write:
        command = "make faults" if not args.short and not args.only else "python -m faults.run"
        if args.short:
            command += " --short"
        if args.only:
            command += f" --only {args.only}"
        report.write_section("faults", render(results, command, cluster, elapsed), Path(args.doc))
        print(f"wrote {args.doc}")
    missed = ", ".join(failed) or "none"
    print(f"{len(results)} scenarios in {elapsed:.0f}s; missed targets: {missed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
