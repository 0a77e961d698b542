"""Profile a server under one workload with py-spy: where the CPU goes.

``python -m bench.profile w6`` starts the fake upstream and our server (as
``bench/run.py`` does), drives the workload from a separate process, records
the server with ``py-spy record`` (sampling, non-blocking, idle excluded: CPU
only) and prints the functions that hold the most samples, inclusive and
self, with the load's own figures beside them. The collapsed stacks and the
summary are written to ``/tmp/coalescing-profile-...txt`` (large) and
``bench/results/profile-<workload>-<target>.md``.

- ``w6``: cold misses on distinct keys, 64 connections, 200 ms upstream;
- ``w3``: hits on one warm key, wrk, 32 connections;
- ``w1``: one 1,000-request stampede on a cold key, repeated.

``--target bare|naive|...`` profiles a peer instead; ``--settings MODULE``
serves ours with another settings module (an experiment kept in ``bench/``).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.procs import PYTHON, Procs
from bench.run import HOUR_MS, RESULTS, Servers, Upstream, find_tools, loadgen, warm, wrk


def summarise(raw: Path, top: int = 25) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, inclusive top, self top) from py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].split("/")[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    return total, inclusive.most_common(top), own.most_common(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=("w1", "w3", "w6"))
    parser.add_argument("--target", default="ours")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--settings", default="", help="settings module for ours")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    tools = find_tools()
    tmp = Path(tempfile.mkdtemp(prefix="coalescing-profile-"))
    name = f"profile-{args.workload}-{args.target}{'-' + args.tag if args.tag else ''}"
    raw = Path(tempfile.gettempdir()) / f"coalescing-{name}.txt"  # collapsed stacks: large
    RESULTS.mkdir(parents=True, exist_ok=True)
    figures: dict[str, object] = {}
    with Procs(tmp) as procs:
        up = Upstream(procs, 200.0, 1024)
        servers = Servers(procs, up, tmp, tools)
        if args.target == "ours":
            dep = servers.ours(HOUR_MS, 2 * HOUR_MS, settings_module=args.settings or None)
        elif args.target == "nginx":
            raise SystemExit("nginx is not a Python process: nothing for py-spy")
        else:
            dep = servers.peer(args.target, HOUR_MS, 2 * HOUR_MS)
        pid = dep.procs[0].pid
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--nonblocking",
                "--duration",
                str(int(args.seconds)),
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.0)
            if args.workload == "w6":
                keys = int(args.seconds * 400)
                res = loadgen(
                    {
                        "mode": "closed",
                        "pattern": dep.fronts[0] + "/products?productId=prof-{i}&fields=name,price",
                        "count": keys,
                        "order": "once",
                        "connections": 64,
                        "duration": args.seconds - 2,
                    },
                    timeout=args.seconds + 60,
                )
                figures = {"rps": res["rps"], "latency_ms": res["latency_ms"]}
            elif args.workload == "w3":
                warm(dep, ["prof-hot"])
                figures = wrk(dep.url("prof-hot"), 32, args.seconds - 2, tools)
            else:
                runs = []
                deadline = time.monotonic() + args.seconds - 3
                i = 0
                while time.monotonic() < deadline and i < 20:
                    res = loadgen(
                        {"mode": "stampede", "urls": dep.urls(f"prof-st{i}"), "n": 1000},
                        timeout=120,
                    )
                    runs.append(res["latency_ms"].get("p50"))
                    i += 1
                figures = {"stampede_p50_ms": runs}
            spy.wait(args.seconds + 30)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait(5)
    total, inclusive, own = summarise(raw)
    lines = [
        f"# py-spy: {args.target} under {args.workload}"
        + (f" ({args.settings})" if args.settings else ""),
        "",
        f"{total} samples at 250 Hz over {args.seconds:g} s (CPU only, idle excluded).",
        "",
        "Load figures while profiled: `" + json.dumps(figures) + "`",
        "",
        "| inclusive % | function |",
        "| --- | --- |",
    ]
    lines += [f"| {100 * n / max(1, total):.1f} | `{frame}` |" for frame, n in inclusive]
    lines += ["", "| self % | function |", "| --- | --- |"]
    lines += [f"| {100 * n / max(1, total):.1f} | `{frame}` |" for frame, n in own]
    summary = RESULTS / f"{name}.md"
    summary.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {summary}, {raw}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
