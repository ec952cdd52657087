"""The toy run end to end on a micro config: every stage runs through the real pipelines, writes a
well-formed report, and a second run skips every finished stage."""

import json
import os

import pytest

from configs import toy  # noqa: I001 (configs/ is a top-level folder of the repository)
from ia_jax.evaluation.reports import validate_report
from ia_jax.toy import run as toy_run


def micro_config():
    c = toy.get_config()
    c.world.update(tasks_per_pool=24, pretrain_chats=400, test_tasks=4)
    c.tokenizer.vocab_size = 1200
    c.model.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)
    c.pretrain.update(epochs=1, warmup_steps=2)
    c.organisms.update(per_split={"train": 1, "heldout": 2}, prompts_per_behavior=6, epochs=1, min_keep_rate=0.0)
    c.ood.update(cipher_shifts=[3], denial_topics=["kites"], rows=6)
    c.introspection.update(examples_per_organism=4, base_examples=4)
    c.ia_sft.epochs = 1
    c.ia_dpo.update(epochs=1, samples_per_question=1)
    c.eval.update(samples=1, scaffold_reports=5, max_new_tokens=8)
    return c


def test_micro_toy_run_writes_a_valid_report_and_skips_finished_stages(tmp_path, monkeypatch):
    path = toy_run.run_toy(micro_config(), str(tmp_path))
    report = json.load(open(path))
    validate_report(report)
    assert set(report["wall_seconds"]["stages"]) == {"world", "tokenizer", "base", "organisms", "ia", "eval"}
    assert set(report["ood"]) == {"cipher", "denial"} and "top5_success" in report["scaffold"]
    assert set(report["train"]["verbalization_rate"]) == {"without_ia", "with_ia_sft", "with_ia_dpo"}
    assert 0.0 <= report["base"]["task_accuracy"] <= 1.0 and report["base"]["by_task"]
    assert {"report.md", "verbalization_overview.png"} <= set(os.listdir(tmp_path / "eval"))

    def refuse(*_, **__):
        raise AssertionError("a finished stage ran again")

    for name in ("pretrain_base", "train_tokenizer"):
        monkeypatch.setattr(toy_run, name, refuse, raising=False)
    monkeypatch.setattr(toy_run.tokenization, "train_tokenizer", refuse)
    monkeypatch.setattr(toy_run.phase1, "train_organisms", refuse)
    monkeypatch.setattr(toy_run.phase2, "train_ia_sft", refuse)
    monkeypatch.setattr(toy_run.phase2, "train_ia_dpo", refuse)
    again = json.load(open(toy_run.run_toy(micro_config(), str(tmp_path))))
    assert again["train"] == report["train"] and again["heldout"] == report["heldout"]
    assert again["wall_seconds"]["total"] >= report["wall_seconds"]["total"]


def test_a_misspelt_recipe_field_is_an_error_naming_it(tmp_path):
    config = micro_config()
    config.ia_sft.learnig_rate = 1e-3
    with pytest.raises(ValueError, match="config.ia_sft.learnig_rate: unknown field"):
        toy_run.check_config(config)
