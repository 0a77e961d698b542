"""Before and after: ours as it is against ours with proposed patches, interleaved.

``python -m bench.experiments.ab w3 <patch>`` runs W3 (wrk, warm key) on
``bare``, ours, and ours with ``BENCH_PATCHES=<patch>``, alternating, and
prints the medians (kept in ``bench/results/ab-<workload>-<patches>.json``);
``w6 <patch>`` does the same with cold misses, ``w5 backoff`` with the outage.
Each run is short: this is the evidence behind a proposal in
docs/benchmarks.md, not a benchmark of its own.

``python -m bench.experiments.ab w3 --before-rev REV`` compares commits
instead: "before" is ``serve`` run from a worktree of ``REV`` (its own
``coalescing``, on the same venv), "after" the checkout as it is; the
evidence that a restructuring cost nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.procs import ROOT, Procs
from bench.run import (
    HOUR_MS,
    RESULTS,
    Bench,
    Plan,
    Servers,
    Upstream,
    find_tools,
    loadgen,
    machine,
    warm,
    wrk,
)


def memory(args: argparse.Namespace, tools: dict[str, Any], tmp: Path) -> int:
    """W4 once without, once with the patches (RSS is not noisy: no interleaving)."""
    plan = Plan.from_env()
    out: dict[str, Any] = {}
    for name, ours in (
        ("before", {}),
        (
            "after",
            {
                "settings_module": "bench.experiments.settings",
                "env_extra": {"BENCH_PATCHES": args.patches},
            },
        ),
    ):
        with Procs(tmp) as procs:
            up = Upstream(procs, 200.0, plan.body_size)
            bench = Bench(plan, tools, ["ours"])
            bench.w4(up, Servers(procs, up, tmp, tools), **ours)
        w4 = bench.results["W4"]
        out[name] = {k: w4[k] for k in ("keys", "budget_mib", "growth_mib", "peak_growth_mib")}
        print(name, json.dumps(out[name]), flush=True)
    record = {"workload": "w4", "patches": args.patches, "commit": machine(tools)["commit"]}
    record["results"] = out
    path = RESULTS / f"ab-w4-{args.patches.replace(',', '+')}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written: {path}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def worktree(rev: str, tmp: Path) -> Path:
    """A checkout of ``rev`` under ``tmp`` (removed with it)."""
    path = tmp / f"rev-{rev}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
        check=True,
        capture_output=True,
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=("w1", "w3", "w4", "w5", "w6"))
    parser.add_argument(
        "patches", nargs="?", default="", help="comma-separated names of bench.experiments.patches"
    )
    parser.add_argument("--before-rev", help="before: ours at this commit, not patched")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if not args.patches and not args.before_rev:
        parser.error("name patches, or --before-rev")
    tools = find_tools()
    tmp = Path(tempfile.mkdtemp(prefix="coalescing-ab-"))
    fresh = 1000 if args.workload == "w5" else HOUR_MS
    stale = 60_000 if args.workload == "w5" else 2 * HOUR_MS
    results: dict[str, list[dict[str, Any]]] = {}
    if args.workload == "w4":
        return memory(args, tools, tmp)
    with Procs(tmp) as procs:
        up = Upstream(procs, 200.0, 1024)
        servers = Servers(procs, up, tmp, tools)
        if args.before_rev:
            before = worktree(args.before_rev, tmp)
            deps = {
                "before": servers.ours(fresh, stale, root=before),
                "after": servers.ours(fresh, stale),
            }
        else:
            deps = {
                "before": servers.ours(fresh, stale),
                "after": servers.ours(
                    fresh,
                    stale,
                    settings_module="bench.experiments.settings",
                    env_extra={"BENCH_PATCHES": args.patches},
                ),
            }
        if args.workload == "w3":
            deps["bare"] = servers.peer("bare", fresh, stale)
        plan = Plan.from_env()
        plan.w5_reps = 1
        bench = Bench(plan, tools, list(deps))
        for rep in range(args.reps):
            order = list(deps) if rep % 2 == 0 else list(reversed(deps))
            for name in order:
                dep = deps[name]
                if args.workload == "w3":
                    warm(dep, ["ab-hot"])
                    res = wrk(dep.url("ab-hot"), 32, args.seconds, tools)
                    got = {"rps": res["rps"], "p50": res.get("p50"), "p99": res.get("p99")}
                elif args.workload == "w1":
                    got = bench.w1_run(up, dep, f"ab-{name}-{rep}")
                    got = {k: got[k] for k in ("calls", "call_start_ms", "p50_ms", "p99_ms")}
                elif args.workload == "w6":
                    res = loadgen(
                        {
                            "mode": "closed",
                            "pattern": dep.fronts[0]
                            + f"/products?productId=ab-{name}-{rep}-"
                            + "{i}&fields=name,price",
                            "count": 1000,
                            "order": "once",
                            "connections": 64,
                            "duration": 120,
                        },
                        timeout=200,
                    )
                    lat = res["latency_ms"]
                    got = {"added_p50": lat["p50"] - 200, "added_p99": lat["p99"] - 200}
                else:
                    got = bench.w5_run(up, dep, f"ab-{name}-{rep}-")
                    got = {k: got[k] for k in ("errors", "calls_per_key_s", "max_calls_per_key_s")}
                print(name, rep, json.dumps(got), flush=True)
                results.setdefault(name, []).append(got)
    summary = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for name, runs in results.items()
    }
    record = {
        "workload": args.workload,
        "patches": args.patches,
        "before_rev": args.before_rev,
        "reps": args.reps,
        "commit": machine(tools)["commit"],
        "medians": summary,
        "runs": results,
    }
    label = args.patches.replace(",", "+") or f"rev-{args.before_rev}"
    out = RESULTS / f"ab-{args.workload}-{label}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["medians"]))
    print(f"written: {out}")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
