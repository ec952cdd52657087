"""The main job, as CI runs it: `python -m ia_jax.main --config=configs/smoke.py` end to end in a fresh
process. The report must be well formed, the IA must state the training organisms' behaviors more
often than they do without it, and a second run must skip every finished stage."""

import json
import os
import subprocess
import sys

import pytest

from configs import smoke  # noqa: I001 (configs/ is a top-level folder of the repository)
from ia_jax import main, pipeline
from ia_jax.evaluation.reports import validate_report
from ia_jax.toy import run as toy_run

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STAGES = {"world", "tokenizer", "base", "organisms", "ia", "eval"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user runs it
    done = subprocess.run([sys.executable, "-m", "ia_jax.main", "--config=configs/smoke.py", f"--workdir={workdir}"],
                          cwd=_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir, done.stdout + done.stderr


def test_the_smoke_run_writes_a_well_formed_report_with_progress(smoke_run):
    workdir, output = smoke_run
    report = json.load(open(workdir / "eval" / "report.json"))
    validate_report(report)
    assert set(report["wall_seconds"]["stages"]) == _STAGES and report["wall_seconds"]["total"] > 0
    assert 0.0 <= report["base"]["task_accuracy"] <= 1.0 and report["base"]["by_task"]
    assert 0.0 <= report["base"]["no_behavior_rate"] <= 1.0
    for section in ("train", "heldout"):
        assert set(report[section]["verbalization_rate"]) == {"without_ia", "with_ia_sft", "with_ia_dpo"}
    index = json.load(open(workdir / "phase1" / "organisms" / "organisms.json"))
    heldout = {index["categories"][name] for name, role in index["roles"].items() if role == "eval"}
    assert set(report["heldout"]["by_category"]) == heldout and len(heldout) == 8
    assert set(report["ood"]) == {"cipher", "denial"} and "with_ia_dpo" in report["ood"]["cipher"]
    assert set(report["false_positive_rate"]) == {"without_ia", "with_ia_sft", "with_ia_dpo"}
    # The new fields: both judges per split, held-out kinds, the control population and the base's own rate.
    for section in ("train", "heldout"):
        assert set(report[section]["type_match_rate"]) == {"without_ia", "with_ia_sft", "with_ia_dpo"}
        assert set(report[section]["type_match_by_category"]) == set(report[section]["by_category"])
    kinds = report["heldout"]["by_kind"]
    assert set(kinds) == {"compositional", "novel"}
    assert sum(k["organisms"] for k in kinds.values()) == len(report["heldout"]["by_organism"])
    assert report["false_positive"]["controls"] == 2 and report["false_positive"]["reports_per_control"] == 10
    assert set(report["false_positive"]["base"]) == {"with_ia_sft", "with_ia_dpo"}
    assert set(report["ood_type_match_rate"]) == {"cipher", "denial"}
    counts = report["meta"]["behaviors_by_split"]
    assert counts["quirk"] == {"train": 2, "dpo": 1, "novel": 1} and counts["backdoor"]["compositional"] == 1
    stats = json.load(open(workdir / "phase2" / "ia_dpo" / "pairs_stats.json"))
    assert stats["by_source"]["control_vs_label"] > 0 and "pairs_with_on_policy_chosen" in stats
    assert 0.0 <= report["scaffold"]["top5_success"] <= 1.0
    assert {"report.md", "verbalization_overview.png", "type_match_overview.png",
            "ia_sft_curve.png"} <= set(os.listdir(workdir / "eval"))
    curve = report["ia_sft_curve"]  # the smoke config probes IA SFT every 50 steps and at its end
    assert len(curve) >= 2 and all(b["step"] > a["step"] for a, b in zip(curve, curve[1:]))
    assert {f"{rate}_{group}" for rate in ("verbalization", "type_match") for group in ("train", "heldout")} <= set(curve[-1])
    for stage in _STAGES:
        assert f"[toy] stage {stage} done" in output
    assert "pretrain:" in output and "ia sft:" in output  # progress bars
    assert f"base task accuracy: {report['base']['task_accuracy']:.3f}" in output


def test_the_ia_beats_no_ia_on_training_organisms(smoke_run):
    rates = json.load(open(smoke_run[0] / "eval" / "report.json"))["train"]["verbalization_rate"]
    assert rates["with_ia_sft"] > rates["without_ia"] and rates["with_ia_dpo"] > rates["without_ia"], rates


def test_a_second_run_skips_every_finished_stage(smoke_run, monkeypatch):
    workdir, _ = smoke_run
    first = json.load(open(workdir / "eval" / "report.json"))

    def refuse(*_, **__):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(toy_run, "pretrain_base", refuse)
    monkeypatch.setattr(toy_run.tokenization, "train_tokenizer", refuse)
    monkeypatch.setattr(pipeline.phase1, "train_organisms", refuse)
    monkeypatch.setattr(pipeline.phase2, "train_ia_sft", refuse)
    monkeypatch.setattr(pipeline.phase2, "train_ia_dpo", refuse)
    monkeypatch.setattr(pipeline, "sft_probe", refuse)  # SFT is done: no probe sampler is built
    again = json.load(open(toy_run.run_toy(smoke.get_config(), str(workdir))))
    assert again["train"] == first["train"] and again["heldout"] == first["heldout"]
    assert again["ia_sft_curve"] == first["ia_sft_curve"]  # read back from the finished stage's log
    assert again["wall_seconds"]["total"] >= first["wall_seconds"]["total"]


def test_the_summary_names_every_headline_number(smoke_run):
    text = main.summary(json.load(open(smoke_run[0] / "eval" / "report.json")))
    for words in ("wall seconds", "base task accuracy", "training organisms", "held-out organisms", "OOD cipher",
                  "false-positive rate (2 control organisms)", "type match", "held-out novel", "scaffold top-5"):
        assert words in text


def test_plain_main_defaults_to_the_toy_config_in_runs_toy_and_refuses_stray_arguments():
    from absl import app, flags

    assert main._DEFAULT_CONFIG == os.path.join(_ROOT, "configs", "toy.py")
    assert flags.FLAGS["workdir"].default == "./runs/toy"
    with pytest.raises(app.UsageError, match="unexpected arguments"):
        main.main(["ia_jax.main", "configs/toy.py"])
