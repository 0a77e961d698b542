"""The figures as Markdown: a summary table, then one table per scenario.

:func:`write_section` replaces the part of docs/reliability.md between two
markers, so the fault suite and the soak run each rewrite their own figures
and leave the prose around them alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .load import BOUND_TOLERANCE_S, Result

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def verdict(result: Result, bound_s: float) -> str:
    if result.skipped:
        return "skipped"
    return "FAIL" if result.violations(bound_s) else "pass"


def summary_table(results: Sequence[Result], bound_s: float) -> str:
    rows = [
        "| scenario | requests | non-200 | upstream calls | lost | crossed | max wait | "
        "not 200 but should be | result |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        if r.skipped:
            rows.append(f"| {r.title} | - | - | - | - | - | - | - | skipped: {r.skipped} |")
            continue
        errors = {k: v for k, v in r.by_status.items() if k != "200"}
        rows.append(
            f"| {r.title} | {r.requests} | {_counts(errors)} | {r.upstream_calls} | {r.lost} | "
            f"{r.crossed} | {_ms(r.max_latency)} | {r.stale_keys_not_200} of "
            f"{r.stale_keys_asked} | {verdict(r, bound_s)} |"
        )
    return "\n".join(rows)


def scenario_table(r: Result, bound_s: float) -> str:
    lines = [f"#### {r.title}", ""]
    if r.skipped:
        return "\n".join([*lines, f"Skipped: {r.skipped}", ""])
    which = (
        "requests (all must answer 200)"
        if r.all_must_200
        else "requests for keys with a stale value"
    )
    rows = [
        ("fault", r.fault),
        ("fault phase", f"{r.fault_seconds} s"),
        ("requests", str(r.requests)),
        ("answers by status", _counts(r.by_status)),
        ("answers by X-Cache", _counts(dict(sorted(r.by_cache.items())))),
        ("upstream calls", str(r.upstream_calls)),
        ("lost (no answer, 500)", str(r.lost)),
        ("crossed (another key's data)", str(r.crossed)),
        ("other bad answers", _counts(r.other_problems)),
        (
            f"wait: p50 / p99 / max (bound {bound_s:.1f} s)",
            f"{_ms(r.p50)} / {_ms(r.p99)} / {_ms(r.max_latency)}; past the bound: "
            f"{r.over_exact_bound}, past it + {BOUND_TOLERANCE_S * 1000:.0f} ms: {r.over_bound}",
        ),
        (f"{which} not answered 200", f"{r.stale_keys_not_200} of {r.stale_keys_asked}"),
        ("answers with Retry-After", str(r.retry_after)),
        (
            "every key 200 again after the heal",
            "-" if r.recovery_s is None else f"after {r.recovery_s:.1f} s",
        ),
        ("tracebacks in the server logs", str(r.tracebacks)),
        ("peak RSS (MiB)", _counts({k: v for k, v in r.rss_mb.items()})),  # type: ignore[misc]
        (
            "RSS after the fault minus before (MiB)",
            _counts({k: f"{v:+.1f}" for k, v in r.rss_growth_mb.items()}),  # type: ignore[misc]
        ),
        ("result", verdict(r, bound_s)),
    ]
    if r.cut_by_kill:
        rows.insert(7, ("cut by the kill (in the dead worker's hands)", str(r.cut_by_kill)))
    table = ["| measure | value |", "| --- | --- |"]
    table += [f"| {name} | {value} |" for name, value in rows]
    notes = [f"- {n}" for n in r.notes]
    problems = [f"- **{v}**" for v in r.violations(bound_s)]
    return "\n".join([*lines, *table, "", *notes, *problems, ""])


def write_section(name: str, text: str, doc: Path = DOC) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    body = doc.read_text() if doc.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in body and end in body:
        before, rest = body.split(begin, 1)
        after = rest.split(end, 1)[1]
        body = before + block + after
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    doc.write_text(body)
