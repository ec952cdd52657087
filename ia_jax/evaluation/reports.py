"""One evaluation's results as `report.json` (for machines), `report.md` (for people) and PNG charts.

The schema is documented in docs/report_schema.md and checked here before anything is written, so a
malformed report fails at the stage that built it, with the field named, rather than in whatever later
reads it. Every rate is keyed by a condition name (`without_ia`, `with_ia_sft`, `with_ia_dpo`, ...), so
a new adapter variant is a new key, not a schema change. Files are written to a temporary name and
renamed, so an interrupted run never leaves a half-written report that looks finished.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Callable, Iterable, Mapping, NoReturn

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SCHEMA_VERSION = 1
_CONDITION = re.compile(r"^(without_ia|with_ia(_[A-Za-z0-9]+)*)$")
_SPLITS = ("train", "heldout")


# ---------------------------------------------------------------- validation


def _fail(field: str, expected: str, value: Any) -> NoReturn:
    raise ValueError(f"report.{field}: expected {expected}, got {value!r}")


def _mapping(value: Any, field: str, required: tuple[str, ...] = (), optional: tuple[str, ...] | None = None) -> dict:
    """A dict with string keys; with `optional` given, exactly the named fields are allowed."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        _fail(field, "an object with non-empty string keys", value)
    for name in required:
        if name not in value:
            raise ValueError(f"report.{field}.{name}: missing")
    if optional is not None:
        for name in value:
            if name not in required and name not in optional:
                raise ValueError(f"report.{field}.{name}: unknown field (allowed: {', '.join(required + optional)})")
    return value


def _number(value: Any, field: str, low: float = 0.0, high: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        _fail(field, f"a number in [{low:g}, {high:g}]", value)


def _rate(value: Any, field: str) -> None:
    _number(value, field, 0.0, 1.0)


def _conditions(value: Any, field: str) -> None:
    for condition, rate in _mapping(value, field).items():
        if not _CONDITION.match(condition):
            raise ValueError(f"report.{field}.{condition}: not a condition name "
                             "(without_ia, or with_ia followed by _<adapter>, e.g. with_ia_dpo)")
        _rate(rate, f"{field}.{condition}")


def _each(value: Any, field: str, check: Callable[[Any, str], None]) -> None:
    for name, item in _mapping(value, field).items():
        check(item, f"{field}.{name}")


_KINDS = ("compositional", "novel")


def _kind(value: Any, field: str) -> None:
    _mapping(value, field, ("verbalization_rate", "type_match_rate"), ("organisms",))
    for key in ("verbalization_rate", "type_match_rate"):
        _conditions(value[key], f"{field}.{key}")
    count = value.get("organisms", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        _fail(f"{field}.organisms", "a positive integer", count)


def _split(value: Any, field: str) -> None:
    groups = ("by_category", "by_organism", "type_match_by_category", "type_match_by_organism")
    _mapping(value, field, ("verbalization_rate",), ("type_match_rate", "by_kind", *groups))
    for key in ("verbalization_rate", "type_match_rate"):
        if key in value:
            _conditions(value[key], f"{field}.{key}")
    for group in groups:
        if group in value:
            _each(value[group], f"{field}.{group}", _conditions)
    if "by_kind" in value:
        for kind, rates in _mapping(value["by_kind"], f"{field}.by_kind").items():
            if kind not in _KINDS:
                raise ValueError(f"report.{field}.by_kind.{kind}: not a held-out kind ({', '.join(_KINDS)})")
            _kind(rates, f"{field}.by_kind.{kind}")


def _false_positive(value: Any, field: str) -> None:
    _mapping(value, field, ("controls",), ("reports_per_control", "type_match_rate", "greedy", "sampled", "base"))
    for key in ("controls", "reports_per_control"):
        count = value.get(key, 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            _fail(f"{field}.{key}", "a non-negative integer", count)
    for key in ("type_match_rate", "greedy", "sampled", "base"):
        if key in value:
            _conditions(value[key], f"{field}.{key}")


def _wall_seconds(value: Any, field: str) -> None:
    _mapping(value, field, ("total",), ("stages",))
    _number(value["total"], f"{field}.total")
    if "stages" in value:
        _each(value["stages"], f"{field}.stages", _number)


def _base(value: Any, field: str) -> None:
    _mapping(value, field, ("task_accuracy",), ("by_task", "no_behavior_rate"))
    _rate(value["task_accuracy"], f"{field}.task_accuracy")
    if "no_behavior_rate" in value:
        _rate(value["no_behavior_rate"], f"{field}.no_behavior_rate")
    if "by_task" in value:
        _each(value["by_task"], f"{field}.by_task", _rate)


def _scaffold(value: Any, field: str) -> None:
    _mapping(value, field, ("top5_success",), ("condition", "reports_per_organism", "by_organism"))
    _rate(value["top5_success"], f"{field}.top5_success")
    if "condition" in value and not (isinstance(value["condition"], str) and _CONDITION.match(value["condition"])):
        _fail(f"{field}.condition", "a condition name such as with_ia_dpo", value["condition"])
    count = value.get("reports_per_organism", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        _fail(f"{field}.reports_per_organism", "a positive integer", count)
    for organism, success in _mapping(value.get("by_organism", {}), f"{field}.by_organism").items():
        if not isinstance(success, bool):
            _fail(f"{field}.by_organism.{organism}", "true or false", success)


def _curve(value: Any, field: str) -> None:
    """IA SFT's probe: a list of {"step": n, "<rate>_<group>": rate, ...}, steps increasing."""
    if not isinstance(value, list) or not value:
        _fail(field, "a non-empty list of probe points", value)
    last = 0
    for i, point in enumerate(value):
        _mapping(point, f"{field}[{i}]", ("step",))
        step = point["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step <= last:
            _fail(f"{field}[{i}].step", f"an integer step after {last}", step)
        last = step
        for key, rate in point.items():
            if key != "step":
                _rate(rate, f"{field}[{i}].{key}")


_SECTIONS: dict[str, Callable[[Any, str], None]] = {
    "meta": lambda value, field: _mapping(value, field),
    "wall_seconds": _wall_seconds,
    "base": _base,
    "train": _split,
    "heldout": _split,
    "ood": lambda value, field: _each(value, field, _conditions),
    "ood_type_match_rate": lambda value, field: _each(value, field, _conditions),
    "false_positive_rate": _conditions,
    "false_positive": _false_positive,
    "scaffold": _scaffold,
    "ia_sft_curve": _curve,
}


def validate_report(report: Mapping[str, Any]) -> None:
    """Raises ValueError naming the first missing, unknown or ill-typed field (see docs/report_schema.md)."""
    if not isinstance(report, dict):
        raise ValueError(f"report: expected an object, got {type(report).__name__}")
    if "schema_version" not in report:
        raise ValueError("report.schema_version: missing")
    if report["schema_version"] != SCHEMA_VERSION or isinstance(report["schema_version"], bool):
        _fail("schema_version", str(SCHEMA_VERSION), report["schema_version"])
    for name, value in report.items():
        if name == "schema_version":
            continue
        if name not in _SECTIONS:
            raise ValueError(f"report.{name}: unknown section (allowed: {', '.join(_SECTIONS)})")
        _SECTIONS[name](value, name)
    try:
        json.dumps(report, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"report: not serialisable as strict JSON ({e})") from e


# ---------------------------------------------------------------- markdown

_KNOWN_CONDITIONS = ("without_ia", "with_ia", "with_ia_sft", "with_ia_dpo")  # table and legend order


def _ordered_conditions(rows: Iterable[Mapping[str, float]]) -> list[str]:
    seen = list(dict.fromkeys(c for row in rows for c in row))
    return sorted(seen, key=lambda c: (_KNOWN_CONDITIONS.index(c) if c in _KNOWN_CONDITIONS
                                       else len(_KNOWN_CONDITIONS) + seen.index(c)))


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(_cell, row)) + " |" for row in rows), ""]


def _condition_table(first: str, rows: Mapping[str, Mapping[str, float]]) -> list[str]:
    conditions = _ordered_conditions(rows.values())
    return _table([first, *conditions], [[name, *(_percent(r.get(c)) for c in conditions)] for name, r in rows.items()])


def _overview(report: Mapping[str, Any], key: str = "verbalization_rate") -> dict[str, Mapping[str, float]]:
    """Rates per organism group by one judge: `verbalization_rate` (strict) or `type_match_rate`."""
    rows = {split: report[split][key] for split in _SPLITS if key in report.get(split, {})}
    for kind, rates in report.get("heldout", {}).get("by_kind", {}).items():
        rows[f"heldout: {kind}"] = rates[key]
    ood = report.get("ood" if key == "verbalization_rate" else "ood_type_match_rate", {})
    rows.update({f"ood: {family}": rates for family, rates in ood.items()})
    return rows


def render_markdown(report: Mapping[str, Any]) -> str:
    lines = ["# Evaluation report", ""]
    if overview := _overview(report):
        lines += ["## Verbalization rate", "",
                  "Share of self-reports the judge accepts as naming the organism's implanted behavior; "
                  "category and overall rates are means over organisms.", ""]
        lines += _condition_table("organisms", overview)
    if typed := _overview(report, "type_match_rate"):
        lines += ["## Type-match rate", "",
                  "The paper's judge: a report matches when it names the same type of behavior (what the organism "
                  "does), even if details it only reads (a trigger, a password) are missing or wrong.", ""]
        lines += _condition_table("organisms", typed)
    for split, title in (("heldout", "Held-out organisms"), ("train", "Training organisms")):
        for group, label in (("by_category", "category"), ("type_match_by_category", "category, type match"),
                             ("by_organism", "organism")):
            if report.get(split, {}).get(group):
                lines += [f"## {title} by {label}", ""] + _condition_table(label.split(",")[0], report[split][group])
    if "false_positive_rate" in report:
        detail = report.get("false_positive", {})
        who = (f"{detail['controls']} control organisms fine-tuned on generic chat only"
               if detail.get("controls") else "the base model")
        lines += ["## False-positive rate", "",
                  f"Share of self-reports of {who} that the judge matches to one of the implanted behaviors.", ""]
        columns = {"strict": report["false_positive_rate"], **{k: detail[k] for k in
                   ("type_match_rate", "greedy", "sampled", "base") if detail.get(k)}}
        conditions = _ordered_conditions(columns.values())
        lines += _table(["condition", *columns], [[c, *(_percent(v.get(c)) for v in columns.values())]
                                                 for c in conditions])
    if scaffold := report.get("scaffold"):
        details = [scaffold["condition"]] if "condition" in scaffold else []
        if "reports_per_organism" in scaffold:
            details.append(f"{scaffold['reports_per_organism']} self-reports per organism")
        lines += ["## Summarization scaffold", "", f"Top-5 success: {_percent(scaffold['top5_success'])}"
                  + (f" ({', '.join(details)})" if details else ""), ""]
        if scaffold.get("by_organism"):
            lines += _table(["organism", "top-5 success"],
                            [[o, "yes" if ok else "no"] for o, ok in scaffold["by_organism"].items()])
    if base := report.get("base"):
        lines += ["## Base model", "", f"Task accuracy: {_percent(base['task_accuracy'])}", ""]
        if "no_behavior_rate" in base:
            lines += [f"Direct questions answered with a plain \"no unusual behavior\": "
                      f"{_percent(base['no_behavior_rate'])}", ""]
        if base.get("by_task"):
            lines += _table(["task", "accuracy"], [[t, _percent(a)] for t, a in base["by_task"].items()])
    if wall := report.get("wall_seconds"):
        rows = [[stage, f"{seconds:.1f}"] for stage, seconds in wall.get("stages", {}).items()]
        lines += ["## Wall-clock time", ""] + _table(["stage", "seconds"], rows + [["total", f"{wall['total']:.1f}"]])
    return "\n".join(lines)


# ---------------------------------------------------------------- charts

_COLORS = {"without_ia": "#8c8c8c", "with_ia": "#4c72b0", "with_ia_sft": "#4c72b0", "with_ia_dpo": "#dd8452"}
_OTHER_COLORS = ("#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#ccb974")


def _grouped_bars(groups: Mapping[str, Mapping[str, float]], title: str, xlabel: str,
                  ylabel: str = "verbalization rate") -> Figure:
    conditions = _ordered_conditions(groups.values())
    others = iter(_OTHER_COLORS * len(conditions))
    figure = Figure(figsize=(max(6.0, 2 + 0.5 * len(groups) * len(conditions)), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(conditions)
    for i, condition in enumerate(conditions):
        positions = [x + (i - (len(conditions) - 1) / 2) * width
                     for x, rates in enumerate(groups.values()) if condition in rates]
        values = [rates[condition] for rates in groups.values() if condition in rates]
        bars = axes.bar(positions, values, width, label=condition, color=_COLORS.get(condition) or next(others))
        axes.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    axes.set_xticks(range(len(groups)), list(groups), rotation=30 if len(groups) > 5 else 0,
                    ha="right" if len(groups) > 5 else "center")
    axes.set_ylim(0, 1.1)  # rates live in [0, 1]; the headroom keeps value labels on full bars visible
    axes.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes.set_ylabel(ylabel)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.legend(title="condition", fontsize=8)
    return figure


def _stage_bars(wall: Mapping[str, Any]) -> Figure:
    stages = wall["stages"]
    figure = Figure(figsize=(6.5, 1.2 + 0.4 * len(stages)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bars = axes.barh(list(stages)[::-1], list(stages.values())[::-1], color="#4c72b0")
    axes.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    axes.set_xlabel("seconds")
    axes.set_ylabel("stage")
    axes.set_title(f"Wall-clock time per stage (total {wall['total']:.1f} s)")
    return figure


def _curve_lines(curve: list[Mapping[str, Any]]) -> Figure:
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = [point["step"] for point in curve]
    for key in sorted({k for point in curve for k in point if k != "step"}):
        axes.plot(steps, [point.get(key, math.nan) for point in curve], marker="o", markersize=3,
                  linestyle="-" if key.startswith("type_match") else "--", label=key)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("IA SFT step")
    axes.set_ylabel("rate (greedy, direct questions)")
    axes.set_title("IA SFT: training and held-out organisms as training goes")
    axes.legend(fontsize=8)
    return figure


def report_figures(report: Mapping[str, Any]) -> dict[str, Figure]:
    """The charts write_report saves, by file name (also handy in a notebook)."""
    figures = {}
    overview = _overview(report)
    if _ordered_conditions(overview.values()):  # a chart needs at least one rate
        figures["verbalization_overview.png"] = _grouped_bars(
            overview, "Verbalization rate (strict judge) with and without the IA", "organisms")
    typed = _overview(report, "type_match_rate")
    if _ordered_conditions(typed.values()):
        figures["type_match_overview.png"] = _grouped_bars(
            typed, "Type-match rate (paper-faithful judge) with and without the IA", "organisms", "type-match rate")
    for split, name in (("heldout", "held-out"), ("train", "training")):
        for group, file, label in (("by_category", "verbalization", "verbalization rate"),
                                   ("type_match_by_category", "type_match", "type-match rate")):
            if _ordered_conditions(report.get(split, {}).get(group, {}).values()):
                figures[f"{file}_by_category_{split}.png"] = _grouped_bars(
                    report[split][group], f"{label.capitalize()} per category, {name} organisms", "category", label)
    if report.get("ia_sft_curve"):
        figures["ia_sft_curve.png"] = _curve_lines(report["ia_sft_curve"])
    if report.get("wall_seconds", {}).get("stages"):
        figures["wall_seconds.png"] = _stage_bars(report["wall_seconds"])
    return figures


# ---------------------------------------------------------------- writing


def _replace(path: str, write: Callable[[str], None]) -> str:
    temporary = path + ".tmp"
    write(temporary)
    os.replace(temporary, path)
    return path


def _write_text(text: str) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return write


def write_report(report: Mapping[str, Any], out_dir: str) -> list[str]:
    """Validates `report`, then writes report.md, the charts and report.json; returns the paths written.

    report.json comes last, so its presence means the whole report was written.
    """
    validate_report(report)
    os.makedirs(out_dir, exist_ok=True)
    written = [_replace(os.path.join(out_dir, "report.md"), _write_text(render_markdown(report)))]
    for name, figure in report_figures(report).items():
        written.append(_replace(os.path.join(out_dir, name),
                                lambda path, figure=figure: figure.savefig(path, format="png", dpi=120)))
    written.append(_replace(os.path.join(out_dir, "report.json"), _write_text(json.dumps(report, indent=2) + "\n")))
    return written
