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
    organisms = results["workloads"]["organisms"]
    assert organisms["ours"]["sequential_jobs_timed"] == 1 and len(organisms["ours"]["single_job_seconds"]) == 1
    assert organisms["ours"]["sequential_seconds"] == pytest.approx(2 * organisms["ours"]["single_job_seconds"][0])
    assert len(organisms["reference"]["per_organism"]) == 2
    assert set(results["workloads"]["decode"]) == {"batch_1", "batch_2"}
    for r in results["workloads"]["decode"].values():
        assert r["ours"]["tokens_per_second"] > 0 and r["reference"]["tokens_per_second"] > 0
        assert len(r["floor"]["times"]) == results["config"]["repeats"]
        assert r["ratio_bound"] == pytest.approx(r["reference"]["seconds"] / r["floor"]["seconds"])
    assert os.path.getsize(os.path.splitext(out)[0] + ".png") > 0
    assert "ia_sft step" in stdout and "decode batch 2" in stdout and "bound (batch 2): matmuls only" in stdout


def test_an_unknown_workload_is_named(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ia_jax.bench", "--config=configs/bench_smoke.py",
                           "--config.workloads=('ia_sft','training')", f"--out={tmp_path / 'b.json'}"],
                          cwd=_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "unknown ['training']" in done.stderr
    assert not (tmp_path / "b.json").exists()
