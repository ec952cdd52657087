"""The scaling study: held-out rates against training instances per category.

The paper's held-out rates climb with training diversity; this runs the toy main job once per library
size (`--sizes`, SFT instances per category, capped where a family has fewer), all on one world,
tokenizer and base (the base reads every family description, so it does not depend on the size),
and writes `scaling.json` and `scaling.png`: held-out strict and type-match rates, compositional and
novel, for the SFT and DPO IAs, against the mean SFT instances per category each run really had.

    python -m ia_jax.toy.scaling --workdir=./runs/scaling --sizes=2,4,8,16,32

Each size is an ordinary toy workdir (`<workdir>/train_<n>`); a re-run skips finished sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics

from absl import app, flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from ml_collections import config_flags


def _define_flags() -> dict:
    """Defined when run as a command only: the test suite imports this beside other entry points."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return {
        "config": config_flags.DEFINE_config_file("config", os.path.join(root, "configs", "toy.py"),
                                                  "Toy run config every size starts from."),
        "workdir": flags.DEFINE_string("workdir", "./runs/scaling", "One toy workdir per size goes under it."),
        "sizes": flags.DEFINE_list("sizes", ["2", "4", "8", "16", "32"], "SFT instances per category, one run each."),
        "base_from": flags.DEFINE_string("base_from", None, "A finished toy workdir of the same seed whose world "
                                         "pools, tokenizer and base to reuse (default: the first size builds them)."),
    }


_FLAGS: dict = {}
_SHARED = (os.path.join("world", "pools"), "tokenizer", "base")  # the same for every size
_SERIES = [(judge, kind, ia) for judge in ("verbalization_rate", "type_match_rate")
           for kind in ("compositional", "novel") for ia in ("with_ia_sft", "with_ia_dpo")]


def _share(source: str, target: str) -> None:
    for part in _SHARED:
        if os.path.exists(os.path.join(source, part)) and not os.path.exists(os.path.join(target, part)):
            shutil.copytree(os.path.join(source, part), os.path.join(target, part))


def point(report: dict, size: int) -> dict:
    """One size's row: requested and mean actual SFT instances per category, and every held-out series."""
    counts = report["meta"]["behaviors_by_split"]
    row = {"requested": size, "train_per_category": statistics.fmean(c.get("train", 0) for c in counts.values()),
           "heldout_organisms": sum(c.get("compositional", 0) + c.get("novel", 0) for c in counts.values())}
    for judge, kind, ia in _SERIES:
        rates = report["heldout"].get("by_kind", {}).get(kind, {}).get(judge, {})
        if ia in rates:
            row[f"{judge}.{kind}.{ia}"] = rates[ia]
    for judge in ("verbalization_rate", "type_match_rate"):
        row[f"{judge}.train.with_ia_dpo"] = report["train"][judge]["with_ia_dpo"]
    return row


def plot(rows: list[dict]) -> Figure:
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    x = [r["train_per_category"] for r in rows]
    for i, judge in enumerate(("verbalization_rate", "type_match_rate")):
        axes = figure.add_subplot(1, 2, i + 1)
        for _, kind, ia in [s for s in _SERIES if s[0] == judge]:
            key = f"{judge}.{kind}.{ia}"
            axes.plot(x, [r.get(key, float("nan")) for r in rows], marker="o",
                      linestyle="-" if ia == "with_ia_dpo" else "--", label=f"{kind}, {ia[8:]}")
        axes.plot(x, [r[f"{judge}.train.with_ia_dpo"] for r in rows], marker="s", color="#8c8c8c",
                  label="training organisms, dpo")
        axes.set_xscale("log", base=2)
        axes.set_ylim(0, 1)
        axes.set_xlabel("SFT instances per category (mean)")
        axes.set_ylabel("strict judge" if judge == "verbalization_rate" else "type-match judge")
        axes.set_title(f"Held-out {'verbalization' if judge == 'verbalization_rate' else 'type-match'} rate")
        axes.legend(fontsize=7)
    return figure


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ia_jax.toy.run import run_toy

    try:
        sizes = sorted({int(s) for s in _FLAGS['sizes'].value})
    except ValueError:
        raise app.UsageError(f"--sizes={','.join(_FLAGS['sizes'].value)}: expected integers") from None
    if not sizes or sizes[0] < 1:
        raise app.UsageError(f"--sizes={','.join(_FLAGS['sizes'].value)}: expected integers >= 1")
    os.makedirs(_FLAGS['workdir'].value, exist_ok=True)
    source, rows = _FLAGS['base_from'].value, []
    for size in sizes:
        workdir = os.path.join(_FLAGS['workdir'].value, f"train_{size}")
        os.makedirs(workdir, exist_ok=True)
        if source:
            _share(source, workdir)
        config = _FLAGS['config'].value.copy_and_resolve_references()
        config.library.train, config.library.cap = size, True
        print(f"[scaling] {size} SFT instances per category -> {workdir}", flush=True)
        report = os.path.join(workdir, "eval", "report.json")
        if not os.path.exists(report):  # a finished size is read, not re-run
            report = run_toy(config, workdir)
        rows.append(point(json.load(open(report, encoding="utf-8")), size))
        source = source or workdir
        with open(os.path.join(_FLAGS['workdir'].value, "scaling.json"), "w", encoding="utf-8") as f:
            json.dump({"seed": config.seed, "rows": rows}, f, indent=2)
        plot(rows).savefig(os.path.join(_FLAGS['workdir'].value, "scaling.png"), dpi=120)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    _FLAGS.update(_define_flags())
    app.run(main)
