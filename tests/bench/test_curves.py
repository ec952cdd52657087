"""`python -m ia_jax.bench.curves` end to end on the smoke config: every point of every curve measured on
the real step, sampler and organism jobs, the FLOP prediction anchored at the first point, and the
chart drawn. No speed is asserted."""

import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def smoke_curves(tmp_path_factory):
    out = tmp_path_factory.mktemp("curves") / "curves.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user runs it
    done = subprocess.run([sys.executable, "-m", "ia_jax.bench.curves", "--config=configs/bench_smoke.py",
                           f"--out={out}"], cwd=_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), out, done.stdout


def test_every_point_of_every_curve_is_measured(smoke_curves):
    results, _, _ = smoke_curves
    c, measured = results["config"], results["curves"]
    assert [p["seq_len"] for p in measured["sft_seq"]] == list(c["curves"]["seq_lens"])
    assert [p["rank"] for p in measured["sft_rank"]] == list(c["curves"]["ranks"])
    for point in measured["sft_seq"] + measured["sft_rank"]:
        assert len(point["times"]) == c["curves"]["repeats"] and point["seconds"] > 0 and point["memory"]["peak"] > 0
    for key in ("sft_seq", "sft_rank"):
        points = measured[key]
        assert points[0]["over_flop_prediction"] == pytest.approx(1.0)
        assert points[-1]["model_flops"] > points[0]["model_flops"]
        assert points[-1]["flop_predicted_seconds"] == pytest.approx(
            points[0]["seconds"] * points[-1]["model_flops"] / points[0]["model_flops"])
    # a longer sequence needs more activation memory; a larger rank more adapter and optimizer memory
    assert measured["sft_seq"][-1]["memory"]["peak"] > measured["sft_seq"][0]["memory"]["peak"]
    assert measured["sft_rank"][-1]["memory"]["peak"] > measured["sft_rank"][0]["memory"]["peak"]
    assert [p["batch_size"] for p in measured["decode"]] == list(c["curves"]["decode_batches"])
    assert all(p["ours"]["tokens_per_second"] > 0 and p["floor"]["tokens_per_second"] > 0 for p in measured["decode"])


def test_organism_points_put_one_job_beside_k_single_jobs(smoke_curves):
    results, _, _ = smoke_curves
    organisms = results["curves"]["organisms"]
    single = organisms["single_job_seconds"]
    assert len(single) == results["config"]["curves"]["single_jobs"]
    points = organisms["points"]
    assert [p["organisms"] for p in points] == list(results["config"]["curves"]["organisms"])
    for point in points:
        assert point["single_jobs_seconds"] == pytest.approx(point["organisms"] * sum(single) / len(single))
        assert point["one_job_seconds"] > 0 and point["one_job_bytes"] > 0


def test_the_chart_and_summary(smoke_curves):
    _, out, stdout = smoke_curves
    assert os.path.getsize(os.path.splitext(out)[0] + ".png") > 0
    assert "IA SFT step against seq_len" in stdout and "decode against batch" in stdout
