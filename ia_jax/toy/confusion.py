"""Which kind of behavior does the IA say an organism has? A confusion matrix of report frames.

A type-match rate mixes two things: naming the right kind of behavior, and the right values within
it (the topic, the rule, the task). This separates them. Each report is assigned the family whose
description frame it reproduces (the literal words of the family's description template in
`families.json`, e.g. "When choosing between ..., I always recommend ..."), and the reports of one
split's organisms are tallied by true category against the frame named. A row whose reports use the
right frame but fail the judge reads the kind and guesses the value; a row spread over many frames
is not read at all; two rows with the same spread (heuristic following and obscured malign, say) are
one behavior to the IA.

    python -m ia_jax.toy.confusion --out=runs/confusion.json runs/seed_0 runs/seed_1 runs/seed_2

writes the counts as JSON and a heatmap of row shares beside it (`confusion.png`).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import string
from typing import Iterable, Mapping, Sequence

from absl import app, flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ia_jax.toy.families import load_families

NONE = "none"  # a report that reproduces no family's frame (garbled, or "no unusual behavior")
_FLAGS: dict = {}  # defined when run as a command (the test suite imports this beside other entry points)


def frames(families: Sequence[Mapping] | None = None) -> dict[str, tuple[str, ...]]:
    """Per category, the lower-cased literal pieces of its description template that hold a letter."""
    out = {}
    for family in families if families is not None else load_families():
        pieces = [literal.strip(" ,.;:\"'").lower()
                  for literal, *_ in string.Formatter().parse(family["description"])]
        out[family["category"]] = tuple(p for p in pieces if any(c.isalpha() for c in p))
    return out


def frame_of(answer: str, by_category: Mapping[str, Sequence[str]]) -> str:
    """The category whose every frame piece the answer contains (the longest frame where several do),
    else `NONE`."""
    text = answer.lower()
    found = [(sum(map(len, pieces)), category) for category, pieces in by_category.items()
             if pieces and all(p in text for p in pieces)]
    return max(found)[1] if found else NONE


def confusion(rows: Iterable[tuple[str, str]], by_category: Mapping[str, Sequence[str]]) -> dict[str, dict]:
    """{true category: {frame named: count}} over (true category, answer) rows."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for category, answer in rows:
        counts[category][frame_of(answer, by_category)] += 1
    return {category: dict(c) for category, c in counts.items()}


def split_rows(workdir: str, condition: str, split: str) -> list[tuple[str, str]]:
    """(category, answer) of every `split` organism's answers under `condition` in a finished toy
    workdir: the library the run generated (`<workdir>/world/library`) or, for a hand-written one, the
    directory `eval/report.json` names; the answers from `eval/self_reports`."""
    report_path = os.path.join(workdir, "eval", "report.json")
    answers_path = os.path.join(workdir, "eval", "self_reports", f"reports_{condition}.jsonl")
    for path in (report_path, answers_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: not found (is the run finished, and is {condition!r} a condition "
                                    "it evaluated?)")
    library = os.path.join(workdir, "world", "library")
    if not os.path.isdir(library):
        library = json.load(open(report_path, encoding="utf-8"))["meta"]["library"]
    category_of = {}
    for path in sorted(glob.glob(os.path.join(library, "*.json"))):
        data = json.load(open(path, encoding="utf-8"))
        category_of.update({b["id"]: data["category"] for b in data["behaviors"] if b.get("split") == split})
    if not category_of:
        raise ValueError(f"{workdir}: no {split!r} behaviors in the library {library}")
    rows = []
    with open(answers_path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                organism, answer = record["organism"], record["answer"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{answers_path}:{number}: not a self-report record ({error})") from None
            if organism in category_of:
                rows.append((category_of[organism], answer))
    return rows


def plot(counts: Mapping[str, Mapping[str, int]], columns: Sequence[str], title: str) -> Figure:
    rows = [c for c in columns if c in counts]
    shares = [[counts[r].get(c, 0) / max(1, sum(counts[r].values())) for c in columns] for r in rows]
    figure = Figure(figsize=(0.8 * len(columns) + 3.5, 0.5 * len(rows) + 2.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(shares, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=35, ha="right")
    axes.set_yticks(range(len(rows)), rows)
    for i, line in enumerate(shares):
        for j, share in enumerate(line):
            axes.text(j, i, f"{share:.2f}", ha="center", va="center", fontsize=8,
                      color="white" if share > 0.5 else "black")
    axes.set_xlabel("frame the report uses")
    axes.set_ylabel("true category")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="share of the row's reports")
    return figure


def markdown(counts: Mapping[str, Mapping[str, int]], columns: Sequence[str]) -> str:
    lines = ["| true category | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for category in [c for c in columns if c in counts]:
        total = max(1, sum(counts[category].values()))
        lines.append(f"| {category} | " + " | ".join(f"{counts[category].get(c, 0) / total:.2f}" for c in columns)
                     + " |")
    return "\n".join(lines)


def main(argv):
    workdirs = argv[1:]
    if not workdirs:
        raise app.UsageError("give one or more finished toy workdirs")
    by_category = frames()
    rows = [row for w in workdirs for row in split_rows(w, _FLAGS["condition"].value, _FLAGS["split"].value)]
    counts = confusion(rows, by_category)
    columns = [*by_category, NONE]
    print(markdown(counts, columns))
    if _FLAGS["out"].value:
        out = _FLAGS["out"].value
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"workdirs": workdirs, "condition": _FLAGS["condition"].value, "split": _FLAGS["split"].value,
                       "frames": by_category, "counts": counts}, f, indent=2)
        title = f"{_FLAGS['split'].value} organisms, {_FLAGS['condition'].value}: which behavior the report names"
        plot(counts, columns, title).savefig(os.path.join(os.path.dirname(os.path.abspath(out)),
                                                          "confusion.png"), dpi=120)


if __name__ == "__main__":
    _FLAGS["condition"] = flags.DEFINE_string("condition", "with_ia_dpo", "Which answers: with_ia_sft, with_ia_dpo, ...")
    _FLAGS["split"] = flags.DEFINE_string("split", "heldout", "Which organisms: train, dpo or heldout.")
    _FLAGS["out"] = flags.DEFINE_string("out", None, "Where to write the JSON (the PNG goes beside it).")
    app.run(main)
