"""The benchmark's table and chart: every row with its measured value, target and bound, and the chart
drawing each row as the share of its bound it reaches."""

import pytest

from ia_jax.bench import report


def _decode(ours, floor, reference):
    tokens = lambda seconds: {"seconds": seconds, "tokens_per_second": 128 / seconds}  # noqa: E731
    return {"ours": tokens(ours), "floor": tokens(floor), "reference": tokens(reference), "ratio": reference / ours,
            "ratio_bound": reference / floor, "floor_multiple": ours / floor}


def _results():
    ours_memory = {"compiled": {"peak": 100 * 2**20}, "steady_bytes": 300 * 2**20}
    step = {"ours": {"seconds": 2.0, "mfu": 0.5, "memory": ours_memory},
            "reference": {"seconds": 4.0, "mfu": 0.25, "memory": {"steady_bytes": 400 * 2**20}},
            "ratio": 2.0, "ratio_bound": 4.0}
    return {"machine": {"device": "cpu"}, "config": {"decode": {"new_tokens": 128}},
            "workloads": {"ia_sft": step,
                          "decode": {"batch_1": _decode(2.0, 1.0, 6.0), "batch_8": _decode(5.0, 4.0, 10.0)}}}


def test_rows_carry_target_and_bound_and_their_shares():
    rows = {row.name: row for row in report.rows(_results())}
    assert list(rows) == ["IA SFT step vs peft", "IA SFT step MFU", "IA SFT step memory",
                          "decode batch 1 vs generate", "decode batch 1 vs its floor",
                          "decode batch 8 vs generate", "decode batch 8 vs its floor"]
    sft = rows["IA SFT step vs peft"]
    assert (sft.measured, sft.target, sft.bound, sft.share(sft.measured)) == (2.0, 1.5, 4.0, 0.5)
    memory = rows["IA SFT step memory"]  # lower is better: the share is bound / measured
    assert memory.share(memory.measured) == pytest.approx(1 / 3) and memory.share(memory.target) == 0.25
    assert memory.text(memory.target) == "400 MiB" and memory.target_text() == "<= 400 MiB"
    floor = rows["decode batch 8 vs its floor"]
    assert (floor.measured, floor.target, floor.bound) == (1.25, 1.15, 1.0)
    assert rows["decode batch 1 vs its floor"].target is None and rows["decode batch 8 vs generate"].target is None
    assert rows["decode batch 1 vs generate"].target == 2.0
    # where the OS could not reset the resident peak, the first call's peak is the row's
    results = _results()
    results["workloads"]["ia_sft"]["reference"]["memory"] = {"steady_bytes": None, "first_call_bytes": 500 * 2**20}
    assert {row.name: row for row in report.rows(results)}["IA SFT step memory"].target == 500 * 2**20
    text = report.table(_results())
    assert "1.25x" in text and "<= 1.15x" in text and "300 MiB (process); XLA buffers 100 MiB" in text


def test_every_row_gets_its_own_bar_at_its_share(tmp_path, monkeypatch):
    results = _results()
    names = [row.name for row in report.rows(results)]
    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)
    report.plot_shares(results, str(tmp_path / "shares.png"))
    (ax,) = figures[0].axes
    bars = sorted(ax.patches, key=lambda bar: bar.get_y())
    assert len({bar.get_y() for bar in bars}) == len(names)  # rows never stacked on one another
    assert [round(bar.get_width(), 6) for bar in bars] == [0.5, 0.5, round(1 / 3, 6), 0.5, 0.5, 0.8, 0.8]
    assert [label.get_text() for label in ax.get_yticklabels()] == names
    assert (tmp_path / "shares.png").stat().st_size > 0
