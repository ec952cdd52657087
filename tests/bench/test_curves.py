"""The cost curves: every point measured on the real step and sampler, the FLOP prediction anchored at
the first point, the organism points assembled from the jobs' own reports, and the chart drawn."""

import pytest

from configs import bench_smoke  # noqa: I001 (configs/ is a top-level folder of the repository)
from ia_jax.bench import calls, curves, workloads
from ia_jax.models.config import ModelConfig


@pytest.fixture(scope="module")
def smoke_curves():
    c = bench_smoke.get_config()
    model = ModelConfig(**c.model)
    base = workloads.base_model(model, c.seed)
    jobs = []

    def fake_run(base_dir, workdir, job):  # the job processes are the bench smoke test's; here, their bookkeeping
        jobs.append(job["organisms"])
        return 10.0 + 2.0 * len(job["organisms"]), {"peak_bytes": 2**20 * len(job["organisms"])}

    patch = pytest.MonkeyPatch()
    patch.setattr(calls, "run_organism_job", fake_run)
    try:
        measured = curves.measure(c, model, base, peak=1e11)
    finally:
        patch.undo()
    return c, measured, jobs


def test_every_point_of_every_curve_is_measured(smoke_curves):
    c, measured, _ = smoke_curves
    assert [p["seq_len"] for p in measured["sft_seq"]] == list(c.curves.seq_lens)
    assert [p["rank"] for p in measured["sft_rank"]] == list(c.curves.ranks)
    for point in measured["sft_seq"] + measured["sft_rank"]:
        assert len(point["times"]) == c.curves.repeats and point["seconds"] > 0 and point["memory"]["peak"] > 0
    for key in ("sft_seq", "sft_rank"):
        points = measured[key]
        assert points[0]["over_flop_prediction"] == pytest.approx(1.0)
        assert points[-1]["model_flops"] > points[0]["model_flops"]
        assert points[-1]["flop_predicted_seconds"] == pytest.approx(
            points[0]["seconds"] * points[-1]["model_flops"] / points[0]["model_flops"])
    # a longer sequence needs more activation memory; a larger rank more adapter and optimizer memory
    assert measured["sft_seq"][-1]["memory"]["peak"] > measured["sft_seq"][0]["memory"]["peak"]
    assert measured["sft_rank"][-1]["memory"]["peak"] > measured["sft_rank"][0]["memory"]["peak"]
    assert [p["batch_size"] for p in measured["decode"]] == list(c.curves.decode_batches)
    assert all(p["ours"]["tokens_per_second"] > 0 and p["floor"]["tokens_per_second"] > 0 for p in measured["decode"])


def test_organism_points_put_one_job_beside_k_single_jobs(smoke_curves):
    c, measured, jobs = smoke_curves
    assert jobs == [[0], [0], [0, 1]]  # one single job timed, then a job per K
    points = measured["organisms"]["points"]
    assert [p["organisms"] for p in points] == [1, 2]
    assert [p["single_jobs_seconds"] for p in points] == [12.0, 24.0]
    assert [p["one_job_seconds"] for p in points] == [12.0, 14.0] and points[1]["one_job_bytes"] == 2 * 2**20


def test_the_chart_and_summary(smoke_curves, tmp_path):
    c, measured, _ = smoke_curves
    results = {"machine": {"device": "cpu", "processor": "x86_64"}, "curves": measured}
    curves.plot(results, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0
    text = curves.summary(results)
    assert "IA SFT step against seq_len" in text and "decode against batch" in text
