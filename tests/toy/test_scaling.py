"""The scaling study's bookkeeping: one row per size from its report, and a plot of every series."""

from ia_jax.toy import scaling


def _report(rate):
    conditions = {"without_ia": 0.0, "with_ia_sft": rate, "with_ia_dpo": rate + 0.1}
    kinds = {kind: {"organisms": 4, "verbalization_rate": conditions, "type_match_rate": conditions}
             for kind in ("compositional", "novel")}
    return {"meta": {"behaviors_by_split": {"quirk": {"train": 4, "dpo": 1, "novel": 2},
                                            "backdoor": {"train": 2, "dpo": 1, "compositional": 1, "novel": 1}}},
            "train": {"verbalization_rate": conditions, "type_match_rate": conditions},
            "heldout": {"by_kind": kinds}}


def test_a_row_has_the_actual_instances_and_every_series():
    row = scaling.point(_report(0.25), 4)
    assert row["requested"] == 4 and row["train_per_category"] == 3.0 and row["heldout_organisms"] == 4
    assert row["type_match_rate.novel.with_ia_dpo"] == 0.35 and row["verbalization_rate.compositional.with_ia_sft"] == 0.25
    assert len([k for k in row if k.count(".") == 2]) == 8 + 2  # 2 judges x 2 kinds x 2 IAs, and training


def test_the_plot_draws_both_judges():
    figure = scaling.plot([scaling.point(_report(0.1), 2), scaling.point(_report(0.4), 8)])
    assert len(figure.axes) == 2 and all(len(axes.lines) == 5 for axes in figure.axes)
