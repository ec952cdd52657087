"""`python -m ia_jax.bench` end to end on the smoke config, so the harness cannot rot. Benchmarks are
not tests: nothing here asserts a speed, only that every workload ran on both sides and reported
numbers that are consistent with each other."""

import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user runs it
    done = subprocess.run([sys.executable, "-m", "ia_jax.bench", "--config=configs/bench_smoke.py", f"--out={out}"],
                          cwd=_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), out, done.stdout


def test_every_workload_ran_on_both_sides(smoke):
    results, out, stdout = smoke
    assert set(results["workloads"]) == {"ia_sft", "dpo", "organisms", "decode"}
    assert results["peak_flops"] > 0 and results["machine"]["backend"] == "cpu"
    assert set(results["peak_flops_by_framework"]) == {"jax", "torch"}
    assert results["peak_flops"] == max(results["peak_flops_by_framework"].values())
    for name in ("ia_sft", "dpo"):
        r = results["workloads"][name]
        for side in ("ours", "reference"):
            assert len(r[side]["times"]) == results["config"]["repeats"] and min(r[side]["times"]) > 0
            assert r[side]["tokens_per_second"] == pytest.approx(r["tokens"] / r[side]["seconds"])
            assert 0 < r[side]["mfu"] < 1  # more than the measured peak would mean the FLOP count is wrong
        assert r["ratio"] == pytest.approx(r["reference"]["seconds"] / r["ours"]["seconds"])
        assert r["ratio_bound"] == pytest.approx(r["reference"]["seconds"] / r["bound_seconds"])
        assert r["bound_seconds"] == pytest.approx(r["model_flops"] / results["peak_flops"])
        compiled = r["ours"]["memory"]["compiled"]
        assert compiled["peak"] == compiled["argument"] + compiled["output"] - compiled["alias"] + compiled["temp"]
        assert compiled["argument"] > 0 and compiled["temp"] > 0
    for side in ("ours", "reference"):  # the smoke config measures the IA SFT step's process memory only
        measured = results["workloads"]["ia_sft"][side]["memory"]
        assert measured["baseline_bytes"] > 0 and measured["first_call_bytes"] > 0 and measured["steady_bytes"] > 0
    assert "baseline_bytes" not in results["workloads"]["dpo"]["ours"]["memory"]
    organisms = results["workloads"]["organisms"]
    assert organisms["ours"]["sequential_jobs_timed"] == 1 and len(organisms["ours"]["single_job_seconds"]) == 1
    assert organisms["ours"]["sequential_seconds"] == pytest.approx(2 * organisms["ours"]["single_job_seconds"][0])
    assert len(organisms["reference"]["per_organism"]) == 2
    ours = organisms["ours"]  # a job of K organisms takes S + K s
    assert ours["fixed_cost_seconds"] + 2 * ours["per_organism_seconds"] == pytest.approx(ours["one_job_seconds"])
    assert ours["fixed_cost_seconds"] + ours["per_organism_seconds"] == pytest.approx(ours["single_job_seconds"][0])
    assert ours["memory"]["one_job_bytes"] > 0 and len(ours["memory"]["single_job_bytes"]) == 1
    assert set(results["workloads"]["decode"]) == {"batch_1", "batch_2"}
    for r in results["workloads"]["decode"].values():
        assert r["ours"]["tokens_per_second"] > 0 and r["reference"]["tokens_per_second"] > 0
        assert len(r["floor"]["times"]) == results["config"]["repeats"]
        assert r["ratio_bound"] == pytest.approx(r["reference"]["seconds"] / r["floor"]["seconds"])
        assert r["floor_multiple"] == pytest.approx(r["ours"]["seconds"] / r["floor"]["seconds"])
        assert r["state_bytes"] > 4 * results["params"]
    assert os.path.getsize(os.path.splitext(out)[0] + ".png") > 0
    for row in ("IA SFT step vs peft", "IA SFT step memory", "decode batch 2 vs its floor", "2 organisms: one job"):
        assert row in stdout


@pytest.mark.parametrize("field", ["workloads", "memory"])
def test_an_unknown_workload_is_named(tmp_path, field):
    done = subprocess.run([sys.executable, "-m", "ia_jax.bench", "--config=configs/bench_smoke.py",
                           f"--config.{field}=('ia_sft','training')", f"--out={tmp_path / 'b.json'}"],
                          cwd=_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and f"--config.{field}: unknown ['training']" in done.stderr
    assert not (tmp_path / "b.json").exists()
