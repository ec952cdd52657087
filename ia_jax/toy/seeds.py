"""Mean and spread of every headline rate over runs that differ only in their seed.

One seed is one draw of the world, the library's splits, the base and every training run; a rate
that moves between seeds by more than a target's margin cannot be read from one run. Given finished
workdirs (e.g. of `python -m ia_jax.main --config.seed=N --workdir=runs/seed_N`), this prints a
Markdown table (mean, min-max) and writes the numbers as JSON:

    python -m ia_jax.toy.seeds --out=runs/seeds.json runs/seed_0 runs/seed_1 runs/seed_2
"""

from __future__ import annotations

import json
import os
import statistics

from absl import app, flags

_FLAGS: dict = {}  # defined when run as a command (the test suite imports this beside other entry points)


def headline(report: dict) -> dict[str, float]:
    """The rates a reader compares runs by, flat: `<what>.<condition>`."""
    rows: dict[str, float] = {"wall_seconds.total": report["wall_seconds"]["total"],
                              "base.task_accuracy": report["base"]["task_accuracy"]}
    for split in ("train", "heldout"):
        for judge in ("verbalization_rate", "type_match_rate"):
            for condition, rate in report[split].get(judge, {}).items():
                rows[f"{split}.{judge}.{condition}"] = rate
    for kind, rates in report["heldout"].get("by_kind", {}).items():
        for judge in ("verbalization_rate", "type_match_rate"):
            for condition, rate in rates[judge].items():
                rows[f"heldout.{kind}.{judge}.{condition}"] = rate
    for condition, rate in report["false_positive_rate"].items():
        rows[f"false_positive_rate.{condition}"] = rate
    for condition, rate in report.get("false_positive", {}).get("base", {}).items():
        rows[f"false_positive.base.{condition}"] = rate
    for family, rates in report.get("ood", {}).items():
        for condition, rate in rates.items():
            rows[f"ood.{family}.{condition}"] = rate
    if "scaffold" in report:
        rows["scaffold.top5_success"] = report["scaffold"]["top5_success"]
    return rows


def aggregate(reports: list[dict]) -> dict[str, dict]:
    """Per headline key present in every report: mean, min, max and the values in report order."""
    flat = [headline(r) for r in reports]
    keys = [k for k in flat[0] if all(k in f for f in flat)]
    return {k: {"mean": statistics.fmean(f[k] for f in flat), "min": min(f[k] for f in flat),
                "max": max(f[k] for f in flat), "values": [f[k] for f in flat]} for k in keys}


def markdown(summary: dict[str, dict], seeds: list[int]) -> str:
    lines = [f"| rate | mean | min - max | seeds {', '.join(map(str, seeds))} |", "|---|---|---|---|"]
    for key, s in summary.items():
        fmt = "{:.0f}" if key.startswith("wall") else "{:.3f}"
        lines.append(f"| `{key}` | {fmt.format(s['mean'])} | {fmt.format(s['min'])} - {fmt.format(s['max'])} | "
                     + " / ".join(fmt.format(v) for v in s["values"]) + " |")
    return "\n".join(lines)


def main(argv):
    workdirs = argv[1:]
    if not workdirs:
        raise app.UsageError("give one or more finished toy workdirs")
    reports = []
    for workdir in workdirs:
        path = os.path.join(workdir, "eval", "report.json")
        if not os.path.exists(path):
            raise app.UsageError(f"{path}: no report (is the run finished?)")
        reports.append(json.load(open(path, encoding="utf-8")))
    seeds = [r["meta"]["seed"] for r in reports]
    summary = aggregate(reports)
    print(markdown(summary, seeds))
    if _FLAGS['out'].value:
        with open(_FLAGS['out'].value, "w", encoding="utf-8") as f:
            json.dump({"seeds": seeds, "workdirs": workdirs, "rates": summary}, f, indent=2)


if __name__ == "__main__":
    _FLAGS["out"] = flags.DEFINE_string("out", None, "Where to write the JSON (default: print only).")
    app.run(main)
