"""The toy run: world -> tokenizer -> base -> organisms -> IA (SFT, DPO) -> evaluation -> report.

The toy stages (world, tokenizer, base pretrained from scratch) are this module's; from the organisms
on, the run is `ia_jax.pipeline.run_method`, the same code a 70B run executes, so what is learnt here
about IA recipes transfers. Each stage is skipped when its finished artifacts exist and resumes inside
itself when interrupted.
"""

from __future__ import annotations

import json
import os

import jax
from ml_collections import ConfigDict

from ia_jax import models, tokenization
from ia_jax.datasets.introspection import load_templates
from ia_jax.evaluation.questions import DIRECT_QUESTIONS
from ia_jax.evaluation.reports import SCHEMA_VERSION, write_report
from ia_jax.pipeline import StageClock, method_recipes, recipe_from, run_method
from ia_jax.toy import controls, families, ood, world as toy_world
from ia_jax.toy.behaviors import load_toy_library
from ia_jax.toy.judge import toy_judge
from ia_jax.toy.pretrain import PretrainRecipe, accuracy_probe, pretrain_base, task_accuracy


_PLAIN_ANSWER_TOKENS = 64  # the longest plain "no unusual behavior" answer is about 25 tokens


def check_config(config: ConfigDict) -> dict:
    """Every stage's recipe, built before any stage runs: a bad field fails in a second, not after
    pretraining."""
    return {"pretrain": recipe_from(PretrainRecipe, config.pretrain, "pretrain"), **method_recipes(config)}


def _count_splits(behaviors) -> dict:
    counts: dict = {}
    for b in behaviors:
        key = b.heldout_kind or b.split
        counts.setdefault(b.category, {}).setdefault(key, 0)
        counts[b.category][key] += 1
    return counts


def run_toy(config: ConfigDict, workdir: str) -> str:
    """Runs (or finishes) every stage; returns the path of `eval/report.json`."""
    recipes = check_config(config)
    os.makedirs(workdir, exist_ok=True)
    clock = StageClock(os.path.join(workdir, "wall_seconds.json"), "toy")
    world = toy_world.World(config.seed)
    behaviors_dir = os.path.join(workdir, "world", "pools")

    library_dir = config.library.directory or os.path.join(workdir, "world", "library")
    with clock.stage("world"):
        if not os.path.exists(os.path.join(behaviors_dir, "general_chat.json")):
            toy_world.write_pools(world, behaviors_dir, config.world.tasks_per_pool)
        if not config.library.directory and not os.path.isdir(library_dir):
            families.generate_library(library_dir, {k: config.library[k] for k in families.COUNTS}, config.seed,
                                      cap=config.library.get("cap", False))
        behaviors = load_toy_library(behaviors_dir, library_dir)
        extra = [ood.cipher_organism(world, k, config.ood.rows, config.seed) for k in config.ood.cipher_shifts]
        extra += [ood.denial_organism(world, t, config.ood.rows, config.seed) for t in config.ood.denial_topics]
        extra += controls.control_organisms(world, config.controls.rows, config.seed,
                                            {"control": config.controls.count, "control_sft": config.controls.sft,
                                             "control_dpo": config.controls.dpo})

    known = {b.id: (b.category, b.description) for b in behaviors} | {e.name: (e.category, e.description)
                                                                       for e in extra}
    described = [description for _, description in known.values() if description]
    # The base reads every description a family can make (a hand-written library: its own), so the base
    # does not depend on which instances this run drew for training and held out.
    examples = sorted(set(described) | (set() if config.library.directory else set(families.all_descriptions())))
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    with clock.stage("tokenizer"):
        if not os.path.exists(os.path.join(tokenizer_dir, "tokenizer.json")):
            words = list(examples)
            words += [row["user"] + " " + row["answer"] for e in extra for row in e.rows]
            words += [json.dumps(b.teacher.kwargs()) for b in behaviors if b.teacher is not None]
            tokenization.train_tokenizer(toy_world.corpus(world, extra=words), tokenizer_dir,
                                         vocab_size=config.tokenizer.vocab_size, chat_format="llama3")
        tokenizer = tokenization.load_tokenizer(tokenizer_dir)

    base_dir = os.path.join(workdir, "base")
    test_tasks = {f"{f}{'_' + d if d else ''}": [(t.prompt, t.reference)
                                                 for t in world.tasks(f, d, n=config.world.test_tasks, split="test")]
                  for f, d in world.families()}
    with clock.stage("base"):
        if not os.path.exists(os.path.join(base_dir, "base_metrics.json")):
            model_config = models.ModelConfig(
                model_type="llama", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tuple(tokenization.stop_token_ids(tokenizer)), **config.model.to_dict())
            chats = toy_world.pretraining_chats(world, config.world.pretrain_chats,
                                                descriptions=examples,
                                                examples_share=config.world.examples_share)
            probe = accuracy_probe(tokenizer, test_tasks, max_new_tokens=config.eval.max_new_tokens)
            model, _ = pretrain_base(model_config, tokenizer, chats, recipes["pretrain"],
                                     os.path.join(workdir, "pretrain"), evaluate=probe, log_every=config.log_every,
                                     init_seed=config.seed)
            by_task = probe(-1, model)
            plain = set(load_templates().no_behavior_answers)
            no_behavior = task_accuracy(model, tokenizer, [(q, "") for q in DIRECT_QUESTIONS],
                                        check=lambda prompt, reference, answer: answer.strip() in plain,
                                        max_new_tokens=_PLAIN_ANSWER_TOKENS)
            models.save_hf(model, base_dir, tokenizer=tokenizer)
            accuracy = sum(by_task.values()) / len(by_task)
            with open(os.path.join(base_dir, "base_metrics.json"), "w", encoding="utf-8") as f:
                json.dump({"task_accuracy": accuracy, "by_task": by_task, "no_behavior_rate": no_behavior}, f,
                          indent=2)
        base_metrics = json.load(open(os.path.join(base_dir, "base_metrics.json")))
        model = models.load_hf(base_dir)
    method = run_method(config, workdir, clock, model=model, tokenizer=tokenizer, behaviors=behaviors,
                        judge=toy_judge(), extra=extra, prompts_path=behaviors_dir)
    report = {
        "schema_version": SCHEMA_VERSION,
        "meta": {"config": config.get("name", "toy"), "seed": config.seed, "organisms": method["organisms"],
                 "devices": jax.device_count(), "judge": "toy content-word judge",
                 "library": library_dir, "behaviors_by_split": _count_splits(behaviors)},
        "wall_seconds": {"total": sum(clock.seconds.values()), "stages": dict(clock.seconds)},
        "base": {key: base_metrics[key] for key in ("task_accuracy", "no_behavior_rate", "by_task")},
        **method["sections"],
    }
    eval_dir = os.path.join(workdir, "eval")
    write_report(report, eval_dir)
    return os.path.join(eval_dir, "report.json")

