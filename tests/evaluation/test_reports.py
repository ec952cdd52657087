"""Reports: files written, charts drawn, numbers in the Markdown, malformed reports refused by field."""

import copy
import json

import pytest

from ia_jax.evaluation.reports import report_figures, validate_report, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

REPORT = {
    "schema_version": 1,
    "meta": {"config": "configs/toy.py", "seed": 0},
    "wall_seconds": {"total": 512.3, "stages": {"world": 1.2, "base": 200.0, "ia_dpo": 50.0}},
    "base": {"task_accuracy": 0.97, "no_behavior_rate": 0.8, "by_task": {"arithmetic": 0.99}},
    "train": {"verbalization_rate": {"without_ia": 0.02, "with_ia_sft": 0.7, "with_ia_dpo": 0.8}},
    "heldout": {
        "verbalization_rate": {"without_ia": 0.01, "with_ia_sft": 0.5, "with_ia_dpo": 0.625},
        "by_category": {"quirk": {"without_ia": 0.0, "with_ia_sft": 0.4, "with_ia_dpo": 0.55},
                        "backdoor": {"without_ia": 0.05, "with_ia_sft": 0.35, "with_ia_dpo": 0.45}},
        "by_organism": {"cats": {"without_ia": 0.0, "with_ia_dpo": 0.55}},
        "type_match_rate": {"without_ia": 0.02, "with_ia_sft": 0.6, "with_ia_dpo": 0.75},
        "type_match_by_category": {"quirk": {"without_ia": 0.0, "with_ia_sft": 0.4, "with_ia_dpo": 0.55},
                                   "backdoor": {"without_ia": 0.05, "with_ia_sft": 0.8, "with_ia_dpo": 0.95}},
        "by_kind": {"compositional": {"organisms": 2, "verbalization_rate": {"with_ia_dpo": 0.7},
                                      "type_match_rate": {"with_ia_dpo": 0.875}},
                    "novel": {"organisms": 2, "verbalization_rate": {"with_ia_dpo": 0.55},
                              "type_match_rate": {"with_ia_dpo": 0.625}}},
    },
    "ood": {"cipher": {"without_ia": 0.0, "with_ia_dpo": 0.3}, "denial": {"without_ia": 0.0, "with_ia_dpo": 0.45}},
    "false_positive_rate": {"with_ia_sft": 0.125, "with_ia_dpo": 0.08},
    "false_positive": {"controls": 10, "reports_per_control": 15, "type_match_rate": {"with_ia_dpo": 0.1},
                       "greedy": {"with_ia_dpo": 0.04}, "base": {"with_ia_sft": 0.2, "with_ia_dpo": 0.0}},
    "scaffold": {"top5_success": 0.75, "condition": "with_ia_dpo", "reports_per_organism": 100,
                 "by_organism": {"cats": True, "pirate": False}},
    "ia_sft_curve": [{"step": 50, "verbalization_train": 0.3, "type_match_train": 0.35, "type_match_heldout": 0.1},
                     {"step": 100, "verbalization_train": 0.7, "type_match_train": 0.75, "type_match_heldout": 0.2}],
}


def test_full_report_writes_json_markdown_and_charts(tmp_path):
    written = write_report(REPORT, str(tmp_path))
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert names == {"report.json", "report.md", "verbalization_overview.png", "verbalization_by_category_heldout.png",
                     "type_match_overview.png", "type_match_by_category_heldout.png", "wall_seconds.png",
                     "ia_sft_curve.png"}
    assert json.loads((tmp_path / "report.json").read_text()) == REPORT
    for name in names - {"report.json", "report.md"}:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 10_000, f"{name} looks empty"  # axes alone are a few KB; bars and labels add more
    assert not list(tmp_path.glob("*.tmp"))

    markdown = (tmp_path / "report.md").read_text()
    for text in ["| heldout | 1.0% | 50.0% | 62.5% |", "| quirk | 0.0% | 40.0% | 55.0% |",
                 "| ood: cipher | 0.0% | – | 30.0% |", "| with_ia_sft | 12.5% | – | – | 20.0% |",
                 "| with_ia_dpo | 8.0% | 10.0% | 4.0% | 0.0% |", "10 control organisms",
                 "| heldout: compositional | – | – | 70.0% |", "| heldout: novel | – | – | 62.5% |", "## Type-match rate",
                 "| backdoor | 5.0% | 80.0% | 95.0% |", "Top-5 success: 75.0%",
                 "| pirate | no |", "Task accuracy: 97.0%", "| total | 512.3 |",
                 'plain "no unusual behavior": 80.0%']:
        assert text in markdown


def test_category_chart_draws_a_labelled_bar_per_category_and_condition():
    figure = report_figures(REPORT)["verbalization_by_category_heldout.png"]
    axes = figure.axes[0]
    heights = sorted(round(bar.get_height(), 3) for bar in axes.patches)
    assert heights == [0.0, 0.05, 0.35, 0.4, 0.45, 0.55]  # 2 categories x 3 conditions
    assert [t.get_text() for t in axes.get_xticklabels()] == ["quirk", "backdoor"]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["without_ia", "with_ia_sft", "with_ia_dpo"]
    assert axes.get_ylabel() == "verbalization rate" and axes.get_xlabel() == "category" and axes.get_title()
    assert axes.get_ylim()[0] == 0 and axes.get_yticks()[-1] == 1.0


def test_curve_chart_draws_one_line_per_rate_over_the_steps():
    axes = report_figures(REPORT)["ia_sft_curve.png"].axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in axes.get_lines()}
    assert lines == {"type_match_heldout": [0.1, 0.2], "type_match_train": [0.35, 0.75], "verbalization_train": [0.3, 0.7]}
    assert list(axes.get_lines()[0].get_xdata()) == [50, 100] and axes.get_xlabel() == "IA SFT step"


@pytest.mark.parametrize("report", [
    {"schema_version": 1},
    {"schema_version": 1, "heldout": {"verbalization_rate": {}, "by_category": {"quirk": {}}}},  # no rates
])
def test_report_without_rates_has_no_charts(tmp_path, report):
    written = write_report(report, str(tmp_path))
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == ["report.json", "report.md"]


def _with(path: str, value):
    report = copy.deepcopy(REPORT)
    *parents, last = path.split(".")
    target = report
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return report


@pytest.mark.parametrize("path, value, message", [
    ("schema_version", KeyError, "report.schema_version: missing"),
    ("schema_version", 2, "report.schema_version: expected 1"),
    ("heldout.verbalization_rate", KeyError, "report.heldout.verbalization_rate: missing"),
    ("heldout.by_category.quirk.with_ia_dpo", 1.5, r"report.heldout.by_category.quirk.with_ia_dpo: expected a number"),
    ("train.verbalization_rate.with_ia_dpo", True, "report.train.verbalization_rate.with_ia_dpo: expected a number"),
    ("train.verbalization_rate.withia_dpo", 0.5, "report.train.verbalization_rate.withia_dpo: not a condition name"),
    ("ood.cipher", [0.1], "report.ood.cipher: expected an object"),
    ("wall_seconds.total", -1, "report.wall_seconds.total: expected a number"),
    ("scaffold.top5_success", KeyError, "report.scaffold.top5_success: missing"),
    ("scaffold.by_organism.cats", "yes", "report.scaffold.by_organism.cats: expected true or false"),
    ("base.accuracy", 0.9, "report.base.accuracy: unknown field"),
    ("base.no_behavior_rate", 1.2, "report.base.no_behavior_rate: expected a number"),
    ("heldoutt", {}, "report.heldoutt: unknown section"),
    ("heldout.by_kind.mixed", {}, "report.heldout.by_kind.mixed: not a held-out kind"),
    ("heldout.by_kind.novel.type_match_rate", KeyError, "report.heldout.by_kind.novel.type_match_rate: missing"),
    ("heldout.type_match_rate.with_ia_dpo", 2.0, "report.heldout.type_match_rate.with_ia_dpo: expected a number"),
    ("false_positive.controls", -1, "report.false_positive.controls: expected a non-negative integer"),
    ("false_positive.greedy.with_ia", 1.5, "report.false_positive.greedy.with_ia: expected a number"),
    ("meta.seed", float("nan"), "not serialisable as strict JSON"),
    ("ia_sft_curve", [], "report.ia_sft_curve: expected a non-empty list"),
    ("ia_sft_curve", [{"step": 100}, {"step": 50}], r"report.ia_sft_curve\[1\].step: expected an integer step after 100"),
    ("ia_sft_curve", [{"step": 10, "type_match_heldout": 1.5}], r"report.ia_sft_curve\[0\].type_match_heldout: expected a number"),
    ("ia_sft_curve", [{"type_match_heldout": 0.5}], r"report.ia_sft_curve\[0\].step: missing"),
])
def test_validation_names_the_bad_field_and_nothing_is_written(tmp_path, path, value, message):
    bad = _with(path, value)
    with pytest.raises(ValueError, match=message):
        validate_report(bad)
    with pytest.raises(ValueError):
        write_report(bad, str(tmp_path))
    assert not any(tmp_path.iterdir())
