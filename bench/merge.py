"""A narrowed run (``BENCH_ONLY``, ``BENCH_TARGETS``) merged into the saved results.

A full ``make bench`` takes some twenty minutes on a shared machine; a run of
two workloads must not wipe the figures of the other four from
``latest.json`` and ``docs/benchmarks.md``. What the new run measured
replaces the old; what it did not measure is kept, each kept piece marked
with the run it came from (``from_run``), so that the report can say which
figures were taken together and which were not.
"""

from __future__ import annotations

import copy
from typing import Any

#: Where each workload keeps its per-target figures (``None``: the workload itself).
TARGET_MAPS: dict[str, tuple[str | None, ...]] = {
    "W1": ("single", "multi"),
    "W2": ("warm", "expiry"),
    "W3": ("targets",),
    "W5": (None,),
    "W6": (None,),
    "W7": (None,),
}


def run_label(res: dict[str, Any]) -> str:
    return f"{res.get('generated', '?')}, commit {res.get('machine', {}).get('commit', '?')}"


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with what only ``old`` has, marked; ``old`` is left as it was."""
    out = copy.deepcopy(new)
    label = run_label(old)
    old_w, new_w = old.get("workloads", {}), out["workloads"]
    loadavg = old.get("machine", {}).get("loadavg_1min_at_workload_start", {})
    for workload, section in old_w.items():
        if workload not in new_w:
            new_w[workload] = _carried(section, label)
            new_w[workload].setdefault("plan", old.get("plan"))
            if workload in loadavg:
                new_w[workload].setdefault("loadavg_1min_at_start", loadavg[workload])
            continue
        for field in TARGET_MAPS.get(workload, ()):
            _merge_targets(section, new_w[workload], field, label)
        if workload == "W3":
            _merge_pairs(section, new_w[workload], label)
    out["run_targets"] = new.get("targets", [])
    out["targets"] = list(dict.fromkeys([*new.get("targets", []), *old.get("targets", [])]))
    out["notes"] = new.get("notes", []) + [
        n if n.startswith("(run of ") else f"(run of {label}) {n}" for n in old.get("notes", [])
    ]
    return out


def earlier_runs(res: dict[str, Any]) -> list[str]:
    """The runs whose figures ``res`` carries, in the order they first appear."""
    found: dict[str, None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("from_run"), str):
                found[value["from_run"]] = None
            for child in value.values():
                walk(child)

    walk(res.get("workloads", {}))
    return list(found)


def _carried(section: Any, label: str) -> Any:
    section = copy.deepcopy(section)
    if isinstance(section, dict):
        section.setdefault("from_run", label)
    return section


def _merge_targets(old: dict[str, Any], new: dict[str, Any], field: str | None, label: str) -> None:
    old_map = old if field is None else old.get(field)
    if not isinstance(old_map, dict):
        return
    if field is not None and field not in new:
        new[field] = {}
    new_map = new if field is None else new[field]
    for target, figures in old_map.items():
        if target not in new_map and isinstance(figures, dict) and "median" in figures:
            new_map[target] = _carried(figures, label)


def _merge_pairs(old: dict[str, Any], new: dict[str, Any], label: str) -> None:
    pairs = new.setdefault("pairs", {})
    for pair, figures in old.get("pairs", {}).items():
        if pair not in pairs:
            pairs[pair] = _carried(figures, label)
    # Results from before W3 had several pairs: only ours/bare, at the top level.
    if "ours/bare" not in pairs and old.get("pair_ratios"):
        pairs["ours/bare"] = {
            "ratios": old["pair_ratios"],
            "median": old.get("ratio_median"),
            "from_run": label,
        }
        new["pair_ratios"], new["ratio_median"] = old["pair_ratios"], old.get("ratio_median")
