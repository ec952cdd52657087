"""Phase 2 on the tiny world: IA SFT makes training organisms state their behavior far more often than
without the IA, DPO trains from the SFT IA without diverging, stages resume, and `audit` runs on a
PEFT organism directory."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from ia_jax import lora
from ia_jax.datasets import tfds_io
from ia_jax.evaluation.judges import ExactJudge
from ia_jax.evaluation.respondent import sampler_respondent
from ia_jax.evaluation.self_reports import ReportRequest
from ia_jax.introspection import pipeline as phase2
from ia_jax.introspection.card import CARD_FILE
from ia_jax.introspection.dpo import DpoRecipe
from ia_jax.introspection.sft import IaRecipe
from ia_jax.lora.peft_io import load_peft
from ia_jax.sampling.sampler import SamplingParams


def _states_behavior(prediction: str, ground_truth: str) -> bool:
    """Tiny-world descriptions read "I say <marker> a lot."; saying the marker is not stating it."""
    return f"say {ground_truth.split()[2]}" in prediction.lower()


JUDGE = ExactJudge(_states_behavior)
CONFIG = phase2.Phase2Config(
    sft=IaRecipe(lora=lora.LoraConfig(rank=8, alpha=16.0, dropout=0.05), learning_rate=1e-2, epochs=20,
                 batch_size=16, buckets=(64,), checkpoint_every=20, eval_every=50),
    dpo=DpoRecipe(beta=0.1, learning_rate=5e-4, epochs=2, batch_size=8, buckets=(64,), samples_per_question=2,
                  checkpoint_every=10),
    report_sampling=SamplingParams(max_new_tokens=12, temperature=1.0), sampler_batch=16, log_every=1)


def _organisms(world):
    result = world["result"]
    known = {b.id: (b.category, b.description) for b in world["behaviors"]}
    known |= {e.name: (e.category, e.description) for e in world["extra"]}
    return phase2.Organisms(adapter=result.adapter, names=result.organisms,
                            categories={n: known[n][0] for n in result.organisms}, roles=result.roles,
                            descriptions={n: known[n][1] for n in result.organisms})


def _sft_questions(world):
    reader = tfds_io.read_dataset(world["result"].introspection_dataset, "sft")
    return sorted({reader[i]["question"] for i in range(len(reader))})[:6]


@pytest.fixture(scope="module")
def run(phase1_world, tmp_path_factory):
    organisms = _organisms(phase1_world)
    model = nnx.merge(phase1_world["graphdef"], phase1_world["state"])
    train = [n for n in organisms.names if organisms.roles[n] == "sft"]
    heldout = [n for n in organisms.names if organisms.roles[n] == "eval"][:2]
    initial_ia = lora.init_adapter(model.config, CONFIG.sft.lora, jax.random.key(0))
    probe_chat = phase2.chat_sampler(model, organisms, initial_ia, phase1_world["tokenizer"], CONFIG, (64,))
    # Type descriptions no answer can state for the training organisms: the probe's type-match rates must
    # come from these, not from the descriptions (the same answers are judged twice).
    unstatable = {n: "I say zqxjvwkp a lot." for n in train}
    evaluate = phase2.verbalization_probe(probe_chat, organisms, {"train": train, "heldout": heldout},
                                          _sft_questions(phase1_world)[:2], JUDGE, SamplingParams(max_new_tokens=12),
                                          type_descriptions=unstatable)
    workdir = str(tmp_path_factory.mktemp("phase2"))
    out = phase2.run_phase2(phase1_world["graphdef"], phase1_world["state"], phase1_world["tokenizer"], organisms,
                            phase1_world["result"].introspection_dataset, JUDGE, CONFIG, workdir, evaluate=evaluate,
                            progress=False)
    return dict(world=phase1_world, organisms=organisms, workdir=workdir, out=out, model=model, train=train)


def _rate(run, ia_path, use_ia, names=None):
    """Greedy verbalization rate on `names` (default: the training organisms), asked training questions."""
    world, organisms = run["world"], run["organisms"]
    ia = load_peft(ia_path, run["model"].config)
    chat = phase2.chat_sampler(run["model"], organisms, ia, world["tokenizer"], CONFIG, (64,))
    questions = _sft_questions(world)
    requests = [ReportRequest(n, use_ia, q, 0) for n in names or run["train"] for q in questions]
    answers = sampler_respondent(chat, SamplingParams(max_new_tokens=12))(requests)
    return np.mean([_states_behavior(a, organisms.descriptions[r.organism]) for r, a in zip(requests, answers)])


def test_sft_raises_verbalization_far_above_the_no_ia_baseline(run):
    with_ia, without = _rate(run, run["out"]["sft_ia"], True), _rate(run, run["out"]["sft_ia"], False)
    assert with_ia >= 0.7 and without <= 0.1, (with_ia, without)
    history = [json.loads(line) for line in open(os.path.join(run["workdir"], "ia_sft", "metrics.jsonl"))]
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]
    probed = [h for h in history if "verbalization_train" in h]
    assert len(probed) >= 2 and "verbalization_heldout" in probed[-1]  # periodic, on train and held-out organisms
    # The first probe (step 50) may already be at the ceiling; the last must not have fallen below it.
    assert probed[-1]["verbalization_train"] >= min(probed[0]["verbalization_train"], 0.7)
    assert probed[-1]["verbalization_train"] > 0 and all(h["type_match_train"] == 0 for h in probed)
    # Held-out organisms have no type description given, so both judges read their descriptions.
    assert all(h["type_match_heldout"] == h["verbalization_heldout"] for h in probed)


def test_dpo_trains_from_the_sft_ia_without_diverging_and_reports_pairs(run):
    workdir = run["workdir"]
    stats = json.load(open(os.path.join(workdir, "ia_dpo", "pairs_stats.json")))
    dpo_organisms = [n for n, r in run["organisms"].roles.items() if r == "dpo"]
    assert set(stats["judge_accept_rate_by_organism"]) == set(dpo_organisms)
    assert stats["by_source"]["wrong_label"] == len(dpo_organisms) * len(
        {json.loads(line)["question"] for line in open(os.path.join(workdir, "ia_dpo", "self_reports.jsonl"))})
    assert 0.0 <= stats["judge_accept_rate"] <= 1.0 and stats["pairs"] == sum(stats["by_source"].values())
    history = [json.loads(line) for line in open(os.path.join(workdir, "ia_dpo", "metrics.jsonl"))]
    assert abs(history[0]["loss"] - np.log(2)) < 1e-4  # starts at its reference, the SFT IA
    assert all(np.isfinite(h["loss"]) for h in history) and history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["preference_accuracy"] > 0.5
    # DPO kept most of what SFT taught on the training organisms, and taught the DPO organisms.
    assert _rate(run, run["out"]["dpo_ia"], True) >= 0.6
    assert _rate(run, run["out"]["dpo_ia"], True, dpo_organisms) > _rate(run, run["out"]["sft_ia"], True, dpo_organisms)


def test_no_dpo_pair_carries_a_heldout_or_ood_description(run):
    """Wrong labels come from organisms the IA trains on: what is evaluated stays unseen, even rejected."""
    organisms = run["organisms"]
    unseen = {organisms.descriptions[n] for n, r in organisms.roles.items() if r in ("eval", "ood")} - {
        organisms.descriptions[n] for n, r in organisms.roles.items() if r in ("sft", "dpo")} - {""}
    assert unseen
    reader = tfds_io.read_dataset(tfds_io.dataset_path(os.path.join(run["workdir"], "datasets"), "dpo_pairs"), "train")
    texts = [reader[i][side] for i in range(len(reader)) for side in ("chosen", "rejected")]
    assert texts and not any(d in t for d in unseen for t in texts)


def test_cards_say_what_each_ia_was_trained_on_and_what_was_held_out(run):
    roles = run["organisms"].roles
    sft = json.load(open(os.path.join(run["out"]["sft_ia"], CARD_FILE)))
    dpo = json.load(open(os.path.join(run["out"]["dpo_ia"], CARD_FILE)))
    assert sft["trained_on"]["sft"]["organisms"] == sorted(n for n, r in roles.items() if r == "sft")
    assert sft["held_out"]["organisms"] == sorted(n for n, r in roles.items() if r != "sft")
    assert dpo["trained_on"]["dpo"]["organisms"] == sorted(n for n, r in roles.items() if r == "dpo")
    assert dpo["held_out"]["organisms"] == sorted(n for n, r in roles.items() if r not in ("sft", "dpo"))
    assert "ood_echo" in dpo["held_out"]["organisms"]
    assert sft["recipe"]["lora"]["rank"] == 8 and "judge_accept_rate" in dpo["metrics"]
    for stage in ("ia_sft", "ia_dpo"):  # beside the orbax checkpoints too
        stage_dir = os.path.join(run["workdir"], stage)
        assert os.listdir(os.path.join(stage_dir, "checkpoints"))
        assert json.load(open(os.path.join(stage_dir, CARD_FILE)))["stage"] == stage[3:]


def test_rerun_skips_finished_stages_and_resumes_dpo(run, monkeypatch):
    world, workdir = run["world"], run["workdir"]
    args = (world["graphdef"], world["state"], world["tokenizer"], run["organisms"],
            world["result"].introspection_dataset, JUDGE, CONFIG, workdir)

    def refuse(*_, **__):
        raise AssertionError("a finished stage ran again")

    with monkeypatch.context() as m:
        for name in ("train_ia_sft", "train_ia_dpo", "collect_self_reports"):
            m.setattr(phase2, name, refuse)
        phase2.run_phase2(*args, progress=False)
    # DPO interrupted after its pairs: re-running trains DPO again from its checkpoints, with no new
    # self-reports or judgments, and lands on the same adapter.
    before = load_peft(run["out"]["dpo_ia"], run["model"].config)
    shutil.rmtree(run["out"]["dpo_ia"])
    with monkeypatch.context() as m:
        m.setattr(phase2, "collect_self_reports", refuse)
        m.setattr(phase2, "train_ia_sft", refuse)
        phase2.run_phase2(*args, progress=False)
    after = load_peft(run["out"]["dpo_ia"], run["model"].config)
    np.testing.assert_allclose(after.weights["q"]["lora_b"], before.weights["q"]["lora_b"], rtol=1e-6)


def test_audit_runs_on_a_peft_organism_directory(run, tmp_path):
    world = run["world"]
    organism = world["result"].organism_dirs[run["train"][0]]
    command = [sys.executable, "-m", "ia_jax.audit", f"--model={world['base_dir']}", f"--adapter={organism}",
               f"--ia={run['out']['sft_ia']}", "--questions=direct", "--samples=2", "--max_new_tokens=12",
               f"--out={tmp_path}", "--batch_size=8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "top" in done.stdout and "1." in done.stdout
    reports = [json.loads(line) for line in open(tmp_path / "self_reports_ia.jsonl")]
    assert len(reports) == 2 * 5 and all(r["with_ia"] and r["organism"] == "organism" for r in reports)
    top = json.load(open(tmp_path / "top_ia.json"))
    assert 1 <= len(top["top"]) <= 5
    baseline = subprocess.run(command[:5] + command[6:] + ["--no_ia"], capture_output=True, text=True, timeout=300)
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    assert all(not json.loads(line)["with_ia"] for line in open(tmp_path / "self_reports_no_ia.jsonl"))
    missing_ia = subprocess.run(command[:5] + command[6:], capture_output=True, text=True, timeout=300)
    assert missing_ia.returncode != 0 and "--ia is required" in missing_ia.stderr


def test_the_ia_applies_to_a_full_fine_tuned_checkpoint_and_to_the_base(run, tmp_path):
    """Base + organism adapter + IA, the organism merged into a full checkpoint + IA, and that full
    checkpoint imported back as an organism give the same greedy self-reports; the base + IA works too."""
    from ia_jax import models
    from ia_jax.audit import audit
    from ia_jax.evaluation.questions import DIRECT_QUESTIONS

    world = run["world"]
    name = run["train"][0]
    organism_dir = world["result"].organism_dirs[name]
    merged_dir = str(tmp_path / "merged")
    base = models.load_hf(world["base_dir"])
    models.save_hf(lora.merge(base, load_peft(organism_dir, base.config)), merged_dir, tokenizer=world["tokenizer"])
    kwargs = dict(ia=run["out"]["sft_ia"], use_ia=True, questions=DIRECT_QUESTIONS[:2], samples=1,
                  params=SamplingParams(max_new_tokens=12), batch_size=8, progress=False)
    adapter, _ = audit(world["base_dir"], adapter=organism_dir, out_dir=str(tmp_path / "a"), **kwargs)
    full, _ = audit(merged_dir, adapter=None, out_dir=str(tmp_path / "b"), **kwargs)
    imported, _ = audit(world["base_dir"], adapter=merged_dir, full_rank=4, out_dir=str(tmp_path / "c"), **kwargs)
    assert [r.answer for r in adapter] == [r.answer for r in full] == [r.answer for r in imported]
    base_reports, top = audit(world["base_dir"], adapter=None, out_dir=str(tmp_path / "d"), **kwargs)
    assert all(r.organism == "base" for r in base_reports) and top


def test_evaluation_suite_gives_every_report_section_and_resumes(run, tmp_path, monkeypatch):
    from ia_jax.evaluation import suite
    from ia_jax.evaluation.reports import validate_report, write_report

    world, organisms = run["world"], run["organisms"]
    ias = {name: load_peft(run["out"][f"{name}_ia"], run["model"].config) for name in ("sft", "dpo")}
    chat = phase2.chat_sampler(run["model"], organisms, ias["sft"], world["tokenizer"], CONFIG, (64,))
    kwargs = dict(roles=organisms.roles, categories=organisms.categories, descriptions=organisms.descriptions,
                  judge=JUDGE, questions=_sft_questions(world)[:3], samples=2,
                  params=SamplingParams(max_new_tokens=12, temperature=1.0), out_dir=str(tmp_path),
                  scaffold_ia="dpo", scaffold_reports=6, progress=False,
                  scaffold_params=SamplingParams(max_new_tokens=12, temperature=0.9))
    sections = suite.evaluate_ias(chat, ias, **kwargs)
    sampled_with = {name: json.load(open(tmp_path / f"reports_{name}.jsonl.fingerprint.json"))["params"]
                    for name in ("with_ia_dpo", "scaffold_with_ia_dpo")}
    assert "temperature=1.0" in sampled_with["with_ia_dpo"] and "temperature=0.9" in sampled_with["scaffold_with_ia_dpo"]
    report = {"schema_version": 1, **sections}
    validate_report(report)
    train = sections["train"]["verbalization_rate"]
    assert set(train) == {"without_ia", "with_ia_sft", "with_ia_dpo"}
    assert train["with_ia_sft"] >= train["without_ia"] + 0.2  # sampled at temperature 1: lower than greedy
    assert set(sections["ood"]) == {"echo"} and set(sections["false_positive_rate"]) == {"with_ia_sft", "with_ia_dpo"}
    assert sections["scaffold"]["reports_per_organism"] == 6
    assert set(sections["scaffold"]["by_organism"]) == {n for n, r in organisms.roles.items() if r == "eval"}
    assert set(sections["heldout"]["by_category"]) == {organisms.categories[n] for n, r in organisms.roles.items()
                                                       if r == "eval"}
    assert any(f.endswith(".png") for f in write_report(report, str(tmp_path / "report")))
    # Every self-report is on disk: a second evaluation samples nothing and gives the same numbers.
    def no_sampling(*_):
        def respond(requests):
            raise AssertionError(f"sampled {len(requests)} reports again")
        return respond

    monkeypatch.setattr(suite, "sampler_respondent", no_sampling)
    assert suite.evaluate_ias(chat, ias, **kwargs) == sections
