"""The timeline of one W1 stampede inside our server: where the time goes.

``python -m bench.experiments.trace [patches]`` starts the fake upstream and
our server with the ``trace`` patch (plus any other patches named), sends one
stampede of 1,000 requests for a cold key, and prints, in milliseconds after
the burst was sent: when the view first ran, when the flight started, when
its upstream call started (in the server) and arrived (at the upstream), when
it returned, and when the first and 500th answers were done.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import Procs
from bench.run import HOUR_MS, RESULTS, Servers, Upstream, find_tools, loadgen, machine, warm


def main() -> int:
    extra = sys.argv[1] if len(sys.argv) > 1 else ""
    patches = ",".join(filter(None, ["trace", extra]))
    tools = find_tools()
    tmp = Path(tempfile.mkdtemp(prefix="coalescing-trace-"))
    lines = [
        f"# One W1 stampede, traced (patches: {patches}; commit {machine(tools)['commit']})",
        "",
    ]
    with Procs(tmp) as procs:
        up = Upstream(procs, 200.0, 1024)
        dep = Servers(procs, up, tmp, tools).ours(
            HOUR_MS,
            2 * HOUR_MS,
            settings_module="bench.experiments.settings",
            env_extra={"BENCH_PATCHES": patches},
        )
        warm(dep, ["warm-up"])  # the upstream connection pool is not cold
        for run in range(3):
            key = f"trace-{run}"
            res = loadgen({"mode": "stampede", "urls": dep.urls(key), "n": 1000}, timeout=120)
            time.sleep(0.5)
            fired = res["fired_wall"]
            seen = [c[0] for c in up.calls_detail(key, 0)]
            events = []
            for line in dep.procs[0].log_tail(400).splitlines():
                if line.startswith("TRACE "):
                    name, when = line[len("TRACE ") :].rsplit(" ", 1)
                    events.append((float(when), name))
            # The server prints each mark once per process: keep this run's.
            events = [(t, n) for t, n in events if t >= fired - 0.05]
            events += [(t, "upstream received the call") for t in seen]
            lines += [f"## run {run + 1}: median latency {res['latency_ms']['p50']:.0f} ms", ""]
            lines += ["| ms after the burst | event |", "| --- | --- |"]
            lines += [f"| {(t - fired) * 1000:.1f} | {n} |" for t, n in sorted(events)]
            lines.append("")
            # A fresh process for the next run, so that every mark prints again.
            procs.stop(dep.procs[0])
            dep = Servers(procs, up, tmp, tools).ours(
                HOUR_MS,
                2 * HOUR_MS,
                settings_module="bench.experiments.settings",
                env_extra={"BENCH_PATCHES": patches},
            )
            warm(dep, ["warm-up"])
    text = "\n".join(lines)
    print(text)
    out = RESULTS / f"trace-w1{'-' + extra.replace(',', '+') if extra else ''}.md"
    out.write_text(text + "\n")
    print(f"written: {out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
