"""``bench/results/latest.json`` -> ``docs/benchmarks.md`` and ``docs/bench-*.png``.

``python -m bench.report [results.json [folder]]`` renders again from saved
results, without running anything (folder: ``docs`` by default). The
commentary under "Reading the figures" comes from ``bench/analysis.md``,
written by hand for a full run and kept apart from the generated tables.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import merge

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ANALYSIS = ROOT / "bench" / "analysis.md"
ORDER = (
    "ours",
    "bare",
    "naive",
    "cache_page",
    "dogpile",
    "nginx",
    "nginx_ours",
    "ours_asgi",
    "bare_asgi",
)
COLORS = {
    "ours": "#1f77b4",
    "bare": "#7f7f7f",
    "naive": "#d62728",
    "cache_page": "#ff7f0e",
    "dogpile": "#2ca02c",
    "nginx": "#9467bd",
    "nginx_ours": "#8c564b",
    "ours_asgi": "#17becf",
    "bare_asgi": "#c7c7c7",
}
#: The bare endpoint that a target's hits are measured against: the one under the same server.
BARE_OF = {"ours_asgi": "bare_asgi", "bare_asgi": "bare_asgi"}
#: Marks a figure kept from an earlier run (bench.merge) rather than measured in this one.
CARRIED = "†"


def pct(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f} %"


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and digits == 0):
        return f"{int(value):,}"
    if isinstance(value, float):
        # A median of two counts can end in .5: show it rather than round it away.
        return f"{value:,.{max(digits, 1) if not value.is_integer() else digits}f}"
    return str(value)


def ordered(names: Sequence[str]) -> list[str]:
    return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


def names_in(section: dict[str, Any]) -> list[str]:
    """The targets of a workload's section (not its other keys, such as ``from_run``)."""
    return ordered([n for n, v in section.items() if isinstance(v, dict) and "median" in v])


def label(section: dict[str, Any], name: str) -> str:
    """A target's name in a table, marked when its figures come from an earlier run."""
    return name + (CARRIED if section[name].get("from_run") else "")


def carried_line(section: dict[str, Any]) -> list[str]:
    """Under a workload's heading: which run its figures come from, if not this one."""
    if not section.get("from_run"):
        return []
    return [f"*Not measured in this run: the figures of the run of {section['from_run']}.*", ""]


def plan_for(res: dict[str, Any], workload: str) -> dict[str, Any]:
    """The plan a workload ran with: its own if it was kept from an earlier run."""
    return res["workloads"].get(workload, {}).get("plan") or res["plan"]


def med(section: dict[str, Any] | None, name: str, key: str) -> Any:
    if not section or name not in section:
        return None
    return section[name]["median"].get(key)


# -- the goals of issue 5 -----------------------------------------------------


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    plan = res["plan"]
    w = res["workloads"]
    latency = plan["latency_ms"]
    rows: list[dict[str, Any]] = []

    def row(workload: str, goal: str, figure: str, met: bool | None, issue: int = 5) -> None:
        rows.append(
            {"issue": issue, "workload": workload, "goal": goal, "figure": figure, "met": met}
        )

    w1 = w.get("W1", {})
    for setup, label in (("single", "one process"), ("multi", "3 gunicorn workers + serve")):
        calls = med(w1.get(setup), "ours", "calls")
        p50 = med(w1.get(setup), "ours", "p50_ms")
        if calls is None:
            row("W1", f"1 upstream call ({label})", "not measured", None)
            continue
        row("W1", f"exactly 1 upstream call ({label})", f"{fmt(calls, 0)} calls", calls == 1)
        row(
            "W1",
            f"median ≤ {latency + 20:g} ms ({label})",
            f"{fmt(p50)} ms",
            p50 is not None and p50 <= latency + 20,
        )
    w2 = w.get("W2", {})
    calls = med(w2.get("expiry"), "ours", "calls")
    if calls is not None:
        plan = plan_for(res, "W2")
        bound = plan["w2_duration"] / 1.0 + 1
        row(
            "W2",
            f"≤ {bound:g} upstream calls in {plan['w2_duration']:g} s",
            fmt(calls, 0),
            calls <= bound,
        )
        p99 = med(w2.get("expiry"), "ours", "p99_ms")
        warm = med(w2.get("warm"), "ours", "p99_ms")
        if p99 is not None and warm:
            row(
                "W2",
                "p99 ≤ 3× warm-hit p99",
                f"{fmt(p99)} ms vs {fmt(warm)} ms ({p99 / warm:.2f}×)",
                p99 <= 3 * warm,
            )
        rows.extend(w2_goals(w2.get("expiry", {})))
    w3 = w.get("W3", {})
    if w3.get("ratio_median") is not None:
        ratio = w3["ratio_median"]
        row("W3", "≥ 0.9× bare req/s (median of pairs)", f"{ratio:.2f}×", ratio >= 0.9)
        row(
            "W3",
            "a hit with the full middleware stack ≥ 1.0× bare with none (median of pairs)",
            f"{ratio:.2f}×",
            ratio >= 1.0,
            issue=13,
        )
    rows += asgi_goals(w)
    rows += w7_goals(w.get("W7", {}))
    w4 = w.get("W4")
    if w4:
        bound = w4["budget_mib"] * 1.25
        row(
            "W4",
            f"RSS growth ≤ {bound:g} MiB (budget + 25%)",
            f"{fmt(w4['growth_mib'])} MiB (peak {fmt(w4['peak_growth_mib'])})",
            w4["growth_mib"] <= bound,
        )
    w5 = w.get("W5", {})
    if "ours" in w5:
        errors = med(w5, "ours", "errors")
        row("W5", "no client error", fmt(errors, 0), errors == 0)
        rate = med(w5, "ours", "calls_per_key_s")
        peak = med(w5, "ours", "max_calls_per_key_s")
        row(
            "W5",
            "≤ 1 upstream call per key per second",
            f"{rate:.2f} (busiest key {peak:.2f})",
            peak <= 1.0,
        )
    w6 = w.get("W6", {})
    if "ours" in w6:
        added = med(w6, "ours", "added_p50_ms")
        row("W6", "miss adds ≤ 5 ms (median)", f"{fmt(added)} ms", added is not None and added <= 5)
    return rows


def w2_goals(expiry: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13 (refresh-ahead: STALE under 1 %, calls per window unchanged) and
    issue 12 (p99 within 1.5× dogpile's of the same run, under 1 % of answers ≥ 100 ms)."""
    rows = []

    def row(issue: int, goal: str, figure: str, met: bool | None) -> None:
        rows.append({"issue": issue, "workload": "W2", "goal": goal, "figure": figure, "met": met})

    stale = med(expiry, "ours", "stale_share")
    if stale is not None:
        row(13, "STALE answers < 1 % (refresh-ahead)", pct(stale), stale < 0.01)
    window = med(expiry, "ours", "calls_per_window")
    if window is not None:
        busiest = med(expiry, "ours", "max_calls_per_window")
        row(
            13,
            "upstream calls per fresh window (1 s) unchanged: at most 1",
            f"{window:.2f} (busiest window {fmt(busiest, 0)})",
            busiest is not None and busiest <= 1,
        )
    vs = (expiry.get("ours") or {}).get("p99_vs_dogpile", {})
    p99, dog = med(expiry, "ours", "p99_ms"), med(expiry, "dogpile", "p99_ms")
    if vs.get("median") is not None and p99 is not None and dog is not None:
        ratios = ", ".join(f"{r:.2f}" for r in vs["ratios"])
        row(
            12,
            "p99 ≤ 1.5× the dogpile peer's p99 of the same run (SQLite)",
            f"{fmt(p99)} ms vs {fmt(dog)} ms: {vs['median']:.2f}× (median of reps: {ratios})",
            vs["median"] <= 1.5,
        )
    slow = med(expiry, "ours", "slow_share")
    if slow is not None:
        row(12, "answers of 100 ms or more < 1 %", pct(slow, 2), slow < 0.01)
    return rows


def w7_goals(w7: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13: nginx in front of ours, one upstream call per fresh window across both."""
    rows = []
    window = med(w7, "nginx_ours", "calls_per_window")
    if window is not None:
        busiest = med(w7, "nginx_ours", "max_calls_per_window")
        rows.append(
            {
                "issue": 13,
                "workload": "W7",
                "goal": "nginx in front of ours: ≤ 1 upstream call per fresh window, both together",
                "figure": f"{window:.2f} (busiest window {fmt(busiest, 0)})",
                "met": busiest is not None and busiest <= 1,
            }
        )
    return rows


def asgi_goals(w: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 10's figures under uvicorn: one call for a stampede, hits beside bare_asgi."""
    rows = []
    calls = med(w.get("W1", {}).get("single"), "ours_asgi", "calls")
    if calls is not None:
        rows.append(
            {
                "issue": 10,
                "workload": "W1",
                "goal": "exactly 1 upstream call (uvicorn, one process)",
                "figure": f"{fmt(calls, 0)} calls",
                "met": calls == 1,
            }
        )
    ratio = w.get("W3", {}).get("pairs", {}).get("ours_asgi/bare_asgi", {}).get("median")
    if ratio is not None:
        rows.append(
            {
                "issue": 10,
                "workload": "W3",
                "goal": "a hit under uvicorn vs bare_asgi (issue 13's bar: ≥ 1.0×)",
                "figure": f"{ratio:.2f}×",
                "met": ratio >= 1.0,
            }
        )
    return rows


# -- tables -------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def w1_table(w1: dict[str, Any], setup: str) -> str:
    section = w1.get(setup, {})
    rows = []
    for name in ordered(section):
        m = section[name]["median"]
        rows.append(
            [
                label(section, name),
                fmt(m["calls"], 0) if name not in BARE_OF.values() and name != "bare" else "(none)",
                fmt(m.get("call_start_ms")),
                fmt(m["p50_ms"]),
                fmt(m["p99_ms"]),
                fmt(m["makespan_ms"]),
                fmt(m["errors"], 0),
            ]
        )
    return table(
        [
            "target",
            "upstream calls",
            "1st call after ms",
            "p50 ms",
            "p99 ms",
            "last answer ms",
            "errors",
        ],
        rows,
    )


def w2_table(w2: dict[str, Any]) -> str:
    expiry, warm = w2.get("expiry", {}), w2.get("warm", {})
    rows = []
    for name in ordered(set(expiry) | set(warm)):
        p99 = med(expiry, name, "p99_ms")
        wp99 = med(warm, name, "p99_ms")
        rows.append(
            [
                label(expiry if name in expiry else warm, name),
                fmt(med(expiry, name, "calls"), 0),
                fmt(med(expiry, name, "p50_ms"), 2),
                fmt(p99, 2),
                fmt(wp99, 2),
                f"{p99 / wp99:.1f}×" if p99 and wp99 else "–",
                pct(med(expiry, name, "slow_share"), 2),
                pct(med(expiry, name, "stale_share")),
                fmt(med(expiry, name, "calls_per_window"), 2),
                fmt(med(expiry, name, "rps"), 0),
                fmt(med(expiry, name, "errors"), 0),
            ]
        )
    return table(
        [
            "target",
            "upstream calls",
            "p50 ms",
            "p99 ms",
            "warm-hit p99 ms",
            "p99 / warm",
            "≥ 100 ms",
            "stale",
            "calls / fresh window",
            "req/s",
            "errors",
        ],
        rows,
    )


def w7_table(w7: dict[str, Any]) -> str:
    rows = []
    for name in names_in(w7):
        m = w7[name]["median"]
        rows.append(
            [
                label(w7, name),
                fmt(m["rps"], 0),
                fmt(m["p50"], 2),
                fmt(m["p99"], 2),
                fmt(m.get("app_requests_per_s"), 1) if name != "nginx" else "(no app)",
                pct(m.get("absorbed_share"), 2) if name == "nginx_ours" else "–",
                fmt(m["calls_per_window"], 2),
                fmt(m["max_calls_per_window"], 0),
                fmt(m["non_2xx"], 0),
                len(w7[name]["runs"]),
            ]
        )
    return table(
        [
            "target",
            "req/s",
            "p50 ms",
            "p99 ms",
            "app answers/s",
            "absorbed by nginx",
            "upstream calls / window",
            "busiest window",
            "non-2xx",
            "runs",
        ],
        rows,
    )


def w3_table(w3: dict[str, Any]) -> str:
    targets = w3.get("targets", {})
    rows = []
    for name in ordered(targets):
        rps = med(targets, name, "rps")
        bare_name = BARE_OF.get(name, "bare")
        bare = med(targets, bare_name, "rps")
        if bare_name in targets and (
            targets[name].get("from_run") != targets[bare_name].get("from_run")
        ):
            bare = None  # not measured in the same run: no ratio
        rows.append(
            [
                label(targets, name),
                fmt(rps, 0),
                f"{rps / bare:.2f}×" if rps and bare else "–",
                fmt(med(targets, name, "p50"), 2),
                fmt(med(targets, name, "p99"), 2),
                fmt(med(targets, name, "non_2xx"), 0),
                len(targets[name]["runs"]),
            ]
        )
    return table(["target", "req/s", "vs its bare", "p50 ms", "p99 ms", "non-2xx", "runs"], rows)


def w5_table(w5: dict[str, Any]) -> str:
    rows = []
    for name in names_in(w5):
        m = w5[name]["median"]
        rows.append(
            [
                label(w5, name),
                fmt(m["errors"], 0),
                fmt(m["outage_errors"], 0),
                fmt(m["calls_per_key_s"], 2),
                fmt(m["max_calls_per_key_s"], 2),
                fmt(m["p99_ms"], 1),
            ]
        )
    return table(
        [
            "target",
            "client errors (whole run)",
            "during the outage",
            "upstream calls / key / s",
            "busiest key",
            "p99 ms",
        ],
        rows,
    )


def w6_table(w6: dict[str, Any]) -> str:
    rows = []
    for name in names_in(w6):
        m = w6[name]["median"]
        rows.append(
            [
                label(w6, name),
                fmt(m["p50_ms"]),
                fmt(m["added_p50_ms"], 2),
                fmt(m["added_p99_ms"], 1),
                fmt(m["calls"], 0),
                fmt(m["errors"], 0),
            ]
        )
    return table(
        ["target", "p50 ms", "added p50 ms", "added p99 ms", "upstream calls", "errors"], rows
    )


# -- charts -------------------------------------------------------------------


def charts(res: dict[str, Any], out: Path, prefix: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = res["workloads"]
    latency = res["plan"]["latency_ms"]
    made: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / f"{prefix}{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path.name)

    def bars(ax: Any, names: list[str], values: list[Any], label: Callable[[Any], str]) -> None:
        xs = range(len(names))
        heights = [v if v is not None else 0 for v in values]
        drawn = ax.bar(xs, heights, color=[COLORS.get(n, "#333") for n in names])
        ax.set_xticks(list(xs), names, rotation=20)
        for rect, v in zip(drawn, values, strict=True):
            if v is not None:
                ax.annotate(
                    label(v),
                    (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )

    if "W1" in w:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        setups = [s for s in ("single", "multi") if s in w["W1"]]
        names = ordered({n for s in setups for n in w["W1"][s]} - {"bare"})
        width = 0.8 / max(1, len(setups))
        for i, setup in enumerate(setups):
            xs = [x + i * width for x in range(len(names))]
            calls = [med(w["W1"][setup], n, "calls") or 0 for n in names]
            p50 = [med(w["W1"][setup], n, "p50_ms") or 0 for n in names]
            label = "one process" if setup == "single" else "4 processes"
            axes[0].bar(xs, [max(c, 0.9) for c in calls], width, label=label)
            axes[1].bar(xs, p50, width, label=label)
            for x, c in zip(xs, calls, strict=True):
                axes[0].annotate(f"{c:g}", (x, max(c, 0.9)), ha="center", va="bottom", fontsize=8)
        for ax in axes:
            ax.set_xticks([x + width * (len(setups) - 1) / 2 for x in range(len(names))], names)
            ax.legend(fontsize=8)
        axes[0].set_yscale("log")
        axes[0].set_title(f"W1 cold stampede ({res['plan']['w1_n']} requests): upstream calls")
        axes[1].axhline(latency + 20, color="k", ls="--", lw=1, label="goal")
        axes[1].set_yscale("log")
        axes[1].set_title("W1: median latency (ms, log scale; dashed: the goal)")
        save(fig, "w1")

    if "W2" in w and w["W2"].get("expiry"):
        expiry, warm = w["W2"]["expiry"], w["W2"].get("warm", {})
        names = ordered(expiry)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        xs = list(range(len(names)))
        axes[0].bar(
            [x - 0.2 for x in xs],
            [med(expiry, n, "p99_ms") or 0 for n in names],
            0.4,
            label="expiry",
        )
        axes[0].bar(
            [x + 0.2 for x in xs],
            [med(warm, n, "p99_ms") or 0 for n in names],
            0.4,
            label="warm hits",
        )
        axes[0].set_xticks(xs, names, rotation=20)
        axes[0].set_yscale("log")
        axes[0].set_title("W2 expiry under load: p99 latency (ms)")
        axes[0].legend(fontsize=8)
        bars(axes[1], names, [med(expiry, n, "calls") for n in names], lambda v: f"{v:g}")
        axes[1].set_yscale("log")
        axes[1].axhline(res["plan"]["w2_duration"] + 1, color="k", ls="--", lw=1)
        axes[1].set_title(f"W2: upstream calls in {res['plan']['w2_duration']:g} s (fresh 1 s)")
        save(fig, "w2")

    if "W3" in w:
        targets = w["W3"]["targets"]
        names = ordered(targets)
        fig, ax = plt.subplots(figsize=(8, 4))
        bars(ax, names, [med(targets, n, "rps") for n in names], lambda v: f"{v:,.0f}")
        bare = med(targets, "bare", "rps")
        if bare:
            ax.axhline(0.9 * bare, color="k", ls="--", lw=1, label="0.9× bare")
            ax.legend(fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"W3 hit throughput, wrk {res['plan']['w3_conns']} connections (req/s)")
        save(fig, "w3")

    if "W4" in w:
        w4 = w["W4"]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot([p["keys"] for p in w4["curve"]], [p["rss_mib"] for p in w4["curve"]], marker="o")
        ax.axhline(
            w4["rss_start_mib"] + 1.25 * w4["budget_mib"],
            color="k",
            ls="--",
            lw=1,
            label="start + budget + 25%",
        )
        ax.set_xlabel("distinct keys served")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title(f"W4 memory: {w4['budget_mib']:g} MiB budget, {w4['body_bytes']} B bodies")
        ax.legend(fontsize=8)
        save(fig, "w4")

    if "W5" in w:
        names = names_in(w["W5"])
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        bars(axes[0], names, [med(w["W5"], n, "errors") for n in names], lambda v: f"{v:g}")
        axes[0].set_title("W5 outage: client errors")
        bars(
            axes[1],
            names,
            [med(w["W5"], n, "calls_per_key_s") for n in names],
            lambda v: f"{v:.2f}",
        )
        axes[1].axhline(1, color="k", ls="--", lw=1)
        axes[1].set_yscale("log")
        axes[1].set_title("W5: upstream calls per key per second")
        save(fig, "w5")

    if "W6" in w:
        names = names_in(w["W6"])
        fig, ax = plt.subplots(figsize=(8, 4))
        bars(ax, names, [med(w["W6"], n, "added_p50_ms") for n in names], lambda v: f"{v:.1f}")
        ax.axhline(5, color="k", ls="--", lw=1, label="goal: 5 ms")
        ax.legend(fontsize=8)
        ax.set_title(f"W6 cold misses: median latency added to the upstream's {latency:g} ms")
        save(fig, "w6")
    if "W7" in w:
        w7 = w["W7"]
        names = names_in(w7)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        bars(axes[0], names, [med(w7, n, "rps") for n in names], lambda v: f"{v:,.0f}")
        axes[0].set_yscale("log")
        axes[0].set_title("W7 hits, wrk 32 connections, fresh 1 s (req/s)")
        bars(axes[1], names, [med(w7, n, "p99") for n in names], lambda v: f"{v:.2f}")
        axes[1].set_yscale("log")
        axes[1].set_title("W7: p99 latency (ms)")
        save(fig, "w7")
    return made


def w3_pairs_text(w3: dict[str, Any]) -> str:
    pairs = w3.get("pairs") or (
        {"ours/bare": {"ratios": w3["pair_ratios"], "median": w3.get("ratio_median")}}
        if w3.get("pair_ratios")
        else {}
    )
    parts = []
    for pair, figures in pairs.items():
        a, b = pair.split("/")
        ratios = ", ".join(f"{r:.2f}" for r in figures["ratios"])
        parts.append(
            f"`{a}` and `{b}` alternate in {len(figures['ratios'])} pairs, back to back "
            f"(ratios: {ratios}; median {fmt(figures['median'], 2)})"
            + (f" {CARRIED}" if figures.get("from_run") else "")
        )
    return "; ".join(parts) + "." if parts else ""


# -- the page -------------------------------------------------------------------


def render(res: dict[str, Any], images: list[str]) -> str:
    m = res["machine"]
    plan = res["plan"]
    w = res["workloads"]
    out: list[str] = ["# Benchmarks", ""]
    out.append(
        "Generated by `make bench` (`bench/run.py`, then `bench/report.py`) on "
        f"{res['generated']}, commit `{m.get('commit', '?')}`, in {res['duration_s'] / 60:.1f} min."
    )
    if res.get("quick"):
        out += ["", "**QUICK smoke run: short and unrepeated; these figures prove nothing.**"]
    earlier = merge.earlier_runs(res)
    if earlier:
        out += [
            "",
            "This run measured "
            + ", ".join(k for k, v in sorted(w.items()) if not v.get("from_run"))
            + f" on {', '.join(f'`{t}`' for t in res.get('run_targets', res['targets']))}. "
            f"Figures marked {CARRIED} (and workloads that say so) are kept from earlier runs "
            f"({'; '.join(earlier)}): they were not taken side by side with this run's.",
        ]
    out += [
        "",
        "## Machine",
        "",
        table(
            ["", ""],
            [
                ["CPUs (nproc)", m["nproc"]],
                ["CPU", m["cpu_model"]],
                ["memory", f"{m['memory_gib']} GiB"],
                ["Python", m["python"]],
                ["platform", m["platform"]],
                [
                    "load average at start / end",
                    f"{' '.join(map(str, m['loadavg_start']))} / "
                    f"{' '.join(map(str, m.get('loadavg_end', [])))}",
                ],
                [
                    "1-min load average as each workload began",
                    ", ".join(
                        f"{w} {' / '.join(map(str, v))}"
                        for w, v in sorted(m.get("loadavg_1min_at_workload_start", {}).items())
                    )
                    or "–",
                ],
                ["versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)],
                [
                    "uncommitted changes measured",
                    ", ".join(f"`{f}`" for f in m["uncommitted"]) or "none",
                ]
                if "uncommitted" in m
                else ["uncommitted changes measured", "not recorded"],
            ],
        ),
        "",
        "Everything (servers, upstream, load clients) runs on this one machine, which "
        "other developers share: the runs are interleaved and medians reported so that "
        "a burst of someone else's load does not land on one target only.",
        "",
        "## Goals (issues 5, 10, 12 and 13) and where we stand",
        "",
    ]
    rows = [
        [
            g["issue"],
            g["workload"],
            g["goal"],
            g["figure"] + (CARRIED if w.get(g["workload"], {}).get("from_run") else ""),
            {True: "met", False: "**missed**", None: "–"}[g["met"]],
        ]
        for g in goals(res)
    ]
    out += [table(["issue", "workload", "goal", "ours (median)", ""], rows), ""]
    if ANALYSIS.exists():
        out += ["## Reading the figures", "", ANALYSIS.read_text().strip(), ""]
    out += ["## Figures", ""]
    latency = plan["latency_ms"]
    if "W1" in w:
        out += [
            f"### W1 cold stampede: {plan['w1_n']:,} concurrent requests, one cold key",
            "",
            *carried_line(w["W1"]),
            f"Upstream latency {latency:g} ms. The connections are opened first, then every "
            "request is sent at once; latency is from each request's send to its last byte. "
            f"Medians of {plan['reps']} runs, a new key each run. `bare` is no cache at all: "
            "the same burst of constant answers, what the framework alone costs. "
            "`1st call after` is when the upstream saw the first call, counted from the "
            "burst: the time the server took to take the burst in before calling.",
            "",
            "One process (`manage.py serve`; nginx: 1 worker; `ours_asgi` and `bare_asgi`: "
            "uvicorn with httptools and uvloop):",
            "",
            w1_table(w["W1"], "single"),
            "",
        ]
        if "multi" in w["W1"]:
            out += [
                "Four processes sharing Redis (and PostgreSQL for ours): 3 gunicorn gevent "
                "workers on one port get 3/4 of the requests, a second `serve` 1/4 "
                "(nginx: 4 workers):",
                "",
                w1_table(w["W1"], "multi"),
                "",
            ]
        if "bench-w1.png" in images:
            out += ["![W1](bench-w1.png)", ""]
    if "W2" in w:
        plan = plan_for(res, "W2")
        out += [
            f"### W2 expiry under load: {plan['w2_conns']} connections, one hot key, "
            f"{plan['w2_duration']:g} s, fresh 1 s",
            "",
            *carried_line(w["W2"]),
            "`warm-hit p99` is the same client on a key that never expires (own run, "
            f"{plan['w2_baseline_duration']:g} s). Medians of {plan['w2_reps']} runs.",
            "",
            w2_table(w["W2"]),
            "",
        ]
        if "bench-w2.png" in images:
            out += ["![W2](bench-w2.png)", ""]
    if "W3" in w:
        w3 = w["W3"]
        out += [
            f"### W3 hit throughput: one warm key, wrk, {plan['w3_conns']} connections",
            "",
            *carried_line(w3),
            f"`wrk -t1 -c{plan['w3_conns']} -d{plan['w3_duration']:g}s`, one process per "
            "target. Each target is compared with the bare endpoint under the same server "
            "(`ours_asgi` with `bare_asgi`, the others with `bare`). "
            + w3_pairs_text(w3)
            + f" The peers have {plan['w3_peer_reps']} runs each, interleaved.",
            "",
            w3_table(w3),
            "",
        ]
        if "bench-w3.png" in images:
            out += ["![W3](bench-w3.png)", ""]
    if "W4" in w:
        plan = plan_for(res, "W4")
        w4 = w["W4"]
        out += [
            f"### W4 memory: {w4['keys']:,} distinct keys of {w4['body_bytes']} B, "
            f"{w4['budget_mib']:g} MiB budget",
            "",
            *carried_line(w4),
            f"One process, {plan['w4_conns']} connections, upstream latency "
            f"{w4['upstream_latency_ms']} ms (the workload is about memory; at 200 ms it "
            "would take ten minutes). RSS of the server process from `/proc`, after a "
            "warm-up of 2,000 keys and after each batch.",
            "",
            table(
                [
                    "RSS start MiB",
                    "RSS end MiB",
                    "growth MiB",
                    "peak growth MiB",
                    "keys/s",
                    "errors",
                ],
                [
                    [
                        fmt(w4["rss_start_mib"]),
                        fmt(w4["rss_end_mib"]),
                        fmt(w4["growth_mib"]),
                        fmt(w4["peak_growth_mib"]),
                        fmt(w4["keys_per_s"], 0),
                        fmt(w4["errors"], 0),
                    ]
                ],
            ),
            "",
        ]
        if "bench-w4.png" in images:
            out += ["![W4](bench-w4.png)", ""]
    if "W5" in w:
        plan = plan_for(res, "W5")
        out += [
            f"### W5 outage: the upstream answers 503 for {plan['w5_outage']:g} s",
            "",
            *carried_line(w["W5"]),
            f"{plan['w5_keys']} warm keys, {plan['w5_conns']} connections cycling over them "
            f"for {plan['w5_pre'] + plan['w5_outage'] + plan['w5_post']:g} s, fresh 1 s "
            "(so every key goes stale during the outage). Upstream calls counted inside the "
            f"outage window. Medians of {plan['w5_reps']} runs.",
            "",
            w5_table(w["W5"]),
            "",
        ]
        if "bench-w5.png" in images:
            out += ["![W5](bench-w5.png)", ""]
    if "W6" in w:
        plan = plan_for(res, "W6")
        out += [
            f"### W6 cold misses: {plan['w6_keys']:,} distinct keys, "
            f"{plan['w6_conns']} connections",
            "",
            *carried_line(w["W6"]),
            f"Each key requested once; added latency is the client's latency minus the "
            f"upstream's fixed {latency:g} ms. Medians of {plan['reps']} runs.",
            "",
            w6_table(w["W6"]),
            "",
        ]
        if "bench-w6.png" in images:
            out += ["![W6](bench-w6.png)", ""]
    if "W7" in w:
        plan = plan_for(res, "W7")
        w7 = w["W7"]
        pairs = "; ".join(
            f"`{pair}` {fmt(f['median'], 2)}× (reps: {', '.join(f'{r:.2f}' for r in f['ratios'])})"
            for pair, f in w7.get("pairs", {}).items()
            if f.get("median") is not None
        )
        out += [
            f"### W7 nginx in front of ours: one warm key, wrk, {plan['w7_conns']} connections, "
            "fresh 1 s",
            "",
            *carried_line(w7),
            f"`wrk -t1 -c{plan['w7_conns']} -d{plan['w7_duration']:g}s` on one key (a new "
            f"one each rep), {plan['w7_reps']} interleaved reps, medians. `nginx_ours` is "
            "nginx (1 worker, `bench/peers/nginx_front.conf`: `proxy_cache` with "
            "`proxy_cache_lock`, `use_stale updating`, `background_update` and "
            "`proxy_cache_revalidate`, no `proxy_cache_valid`: it caches by our "
            "`Cache-Control` and `ETag`) in front of `ours` (`manage.py serve`, SQLite, "
            "fresh 1 s, stale 60 s); `ours` is the same process hit directly; `nginx` is "
            "the nginx peer in front of the fake upstream (`proxy_cache_valid 200 1s`). "
            "`app answers/s` is what our server counted (its `/metrics`) while wrk ran; "
            "upstream calls are the fake upstream's count for the key while wrk ran, per "
            "fresh second." + (f" Ratios of req/s within each rep: {pairs}." if pairs else ""),
            "",
            w7_table(w7),
            "",
        ]
        if "bench-w7.png" in images:
            out += ["![W7](bench-w7.png)", ""]
    if res.get("notes"):
        out += ["## Notes of the run", ""] + [f"- {n}" for n in res["notes"]] + [""]
    out += [
        "## How it is measured",
        "",
        "- The upstream (`bench/upstream.py`) is a gevent process with a fixed latency that "
        "counts every call per key; the load clients are separate processes: wrk for "
        "throughput, `bench/loadgen.py` (gevent, raw keep-alive sockets) for the rest.",
        "- Every target is served like ours: `manage.py serve` (one gevent process, "
        "TCP_NODELAY, Content-Length) or `gunicorn -k gevent`, with the project's own "
        "settings and middleware (`bench/peers/settings.py` swaps the URL module, and the "
        "WSGI application for Django's own, without our front layer), "
        "`DEBUG=0`, `LOG_LEVEL=WARNING`. Ours is the project's `wsgi.py`, whose front layer "
        "answers the coalesced endpoints before the middleware.",
        "- Under ASGI: `ours_asgi` is `uvicorn coalesce_project.asgi:application` and "
        "`bare_asgi` `uvicorn bench.peers.asgi:application` (Django's own ASGI handler), "
        "one process each, `--http httptools --loop uvloop`.",
        "- Peers (`bench/peers/`): `bare` returns a constant 1 KB body from a django-ninja "
        "view with no middleware at all (the framework's floor), `bare_asgi` the same from "
        "an async view; `naive` calls the "
        "upstream with requests on every request; `cache_page` is Django's `cache_page` on "
        "django-redis (blocking pool); `dogpile` is dogpile.cache on Redis with "
        "`distributed_lock`, `thread_local_lock=False`, a background creation runner, and "
        "values kept for the stale window; `nginx` is `proxy_cache` with `proxy_cache_lock`, "
        "`proxy_cache_use_stale updating` and `proxy_cache_background_update`.",
        "- Ours runs on SQLite in one process, and on PostgreSQL plus Redis "
        "(`REDIS_URL`, db 14) in the multi-process set-up; the peers' Redis is db 13.",
        "- Raw figures of every run: `bench/results/latest.json`.",
        "",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    source = Path(args[0]) if args else ROOT / "bench" / "results" / "latest.json"
    folder = Path(args[1]) if len(args) > 1 else DOCS
    res = json.loads(source.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    images = charts(res, folder, "bench-")
    page = render(res, images)
    target = folder / "benchmarks.md"
    target.write_text(page)
    print(f"[bench] wrote {target} and {len(images)} charts", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
