"""Seed aggregation: every headline rate's mean and range, in report order, and its Markdown table."""

from ia_jax.toy import seeds


def _report(seed, rate):
    conditions = {"without_ia": 0.0, "with_ia_dpo": rate}
    return {"meta": {"seed": seed}, "wall_seconds": {"total": 400.0 + seed}, "base": {"task_accuracy": 0.97},
            "train": {"verbalization_rate": conditions, "type_match_rate": conditions},
            "heldout": {"verbalization_rate": conditions, "type_match_rate": conditions,
                        "by_kind": {"novel": {"verbalization_rate": conditions, "type_match_rate": conditions}}},
            "false_positive_rate": conditions, "ood": {"cipher": conditions}, "scaffold": {"top5_success": rate}}


def test_mean_and_range_per_rate():
    summary = seeds.aggregate([_report(0, 0.2), _report(1, 0.4), _report(2, 0.3)])
    row = summary["heldout.novel.type_match_rate.with_ia_dpo"]
    assert abs(row["mean"] - 0.3) < 1e-12 and row["min"] == 0.2 and row["max"] == 0.4 and row["values"] == [0.2, 0.4, 0.3]
    assert summary["wall_seconds.total"]["values"] == [400.0, 401.0, 402.0]
    table = seeds.markdown(summary, [0, 1, 2])
    assert "| `heldout.novel.type_match_rate.with_ia_dpo` | 0.300 | 0.200 - 0.400 | 0.200 / 0.400 / 0.300 |" in table


def test_a_rate_missing_from_one_run_is_left_out():
    partial = _report(1, 0.4)
    del partial["scaffold"]
    assert "scaffold.top5_success" not in seeds.aggregate([_report(0, 0.2), partial])
