"""The benchmark's chart must show every ratio of the table on its own bar."""

from ia_jax.bench import report


def _decode(ours, floor, reference):
    tokens = lambda seconds: {"tokens_per_second": 128 / seconds}  # noqa: E731
    return {"ours": tokens(ours), "floor": tokens(floor), "reference": tokens(reference),
            "ratio": reference / ours, "ratio_bound": reference / floor}


def test_every_ratio_gets_its_own_bar_and_label(tmp_path, monkeypatch):
    results = {"machine": {"device": "cpu"},
               "workloads": {"decode": {"batch_1": _decode(2.0, 1.0, 6.0), "batch_8": _decode(5.0, 3.0, 10.0)}}}
    names = [name.strip() for name, _, _, ratio, _ in report.rows(results) if ratio is not None]
    assert names == ["decode batch 1", "bound (batch 1): matmuls only", "decode batch 8",
                     "bound (batch 8): matmuls only"]
    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)
    report.plot_ratios(results, str(tmp_path / "ratios.png"))
    (ax,) = figures[0].axes
    bars = sorted(ax.patches, key=lambda bar: bar.get_y())
    assert len({bar.get_y() for bar in bars}) == 4  # rows never stacked on one another
    assert [round(bar.get_width(), 6) for bar in bars] == [3.0, 6.0, 2.0, round(10 / 3, 6)]
    assert [label.get_text() for label in ax.get_yticklabels()] == names
    assert (tmp_path / "ratios.png").stat().st_size > 0
