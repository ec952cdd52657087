"""The toy run: world -> tokenizer -> base -> organisms -> IA (SFT, DPO) -> evaluation -> report.

Every stage is the real code path (phase 1 and phase 2 pipelines, the evaluation suite, the report
writer) on a miniature world, so what is learnt here about IA recipes transfers. Each stage is
skipped when its finished artifacts exist and resumes inside itself when interrupted; wall-clock time
per stage accumulates across resumed runs in `wall_seconds.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import contextmanager

import jax
from flax import nnx
from ml_collections import ConfigDict

from ia_jax import lora, models, tokenization
from ia_jax.datasets.introspection import load_templates
from ia_jax.datasets.teacher import GenerationConfig
from ia_jax.evaluation.questions import DIRECT_QUESTIONS
from ia_jax.evaluation.reports import SCHEMA_VERSION, write_report
from ia_jax.evaluation.suite import evaluate_ias
from ia_jax.introspection import pipeline as phase2
from ia_jax.introspection.dpo import DpoRecipe
from ia_jax.introspection.sft import IaRecipe
from ia_jax.lora.peft_io import load_peft
from ia_jax.organisms import pipeline as phase1
from ia_jax.organisms.train import OrganismRecipe
from ia_jax.sampling.sampler import SamplingParams
from ia_jax.toy import ood, world as toy_world
from ia_jax.toy.behaviors import load_toy_library
from ia_jax.toy.judge import toy_judge
from ia_jax.toy.pretrain import PretrainRecipe, accuracy_probe, pretrain_base, task_accuracy


_PLAIN_ANSWER_TOKENS = 64  # the longest plain "no unusual behavior" answer is about 25 tokens


class StageClock:
    """Seconds per stage, accumulated across runs of the same workdir (a resumed stage adds its time)."""

    def __init__(self, path: str):
        self.path = path
        self.seconds: dict[str, float] = json.load(open(path)) if os.path.exists(path) else {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        print(f"[toy] stage {name} ...", flush=True)
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            with open(self.path + ".partial", "w", encoding="utf-8") as f:
                json.dump(self.seconds, f, indent=2)
            os.replace(self.path + ".partial", self.path)
            print(f"[toy] stage {name} done ({self.seconds[name]:.1f} s so far)", flush=True)


def _recipe(cls, section: ConfigDict, where: str, *, other: tuple[str, ...] = (), **extra):
    """`cls` from a config section; a key that is neither a recipe field nor one of `other` (read
    elsewhere) is a typo, and an override with a typo must not be silently ignored."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - fields - set(other))
    if unknown:
        raise ValueError(f"config.{where}.{unknown[0]}: unknown field; {cls.__name__} has {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k in fields and k not in extra}
    return cls(**values, **extra)


def _lora(section: ConfigDict) -> lora.LoraConfig:
    return lora.LoraConfig(rank=section.rank, alpha=float(section.alpha), dropout=float(section.dropout))


def check_config(config: ConfigDict) -> dict:
    """Every stage's recipe, built before any stage runs: a bad field fails in a second, not after
    pretraining."""
    return {
        "pretrain": _recipe(PretrainRecipe, config.pretrain, "pretrain"),
        "organisms": _recipe(OrganismRecipe, config.organisms, "organisms",
                             other=("per_split", "prompts_per_behavior", "min_keep_rate"),
                             lora=_lora(config.organisms.lora)),
        "ia_sft": _recipe(IaRecipe, config.ia_sft, "ia_sft", lora=_lora(config.ia_sft.lora)),
        "ia_dpo": _recipe(DpoRecipe, config.ia_dpo, "ia_dpo", other=("temperature",)),
    }


def run_toy(config: ConfigDict, workdir: str) -> str:
    """Runs (or finishes) every stage; returns the path of `eval/report.json`."""
    recipes = check_config(config)
    os.makedirs(workdir, exist_ok=True)
    clock = StageClock(os.path.join(workdir, "wall_seconds.json"))
    world = toy_world.World(config.seed)
    behaviors_dir = os.path.join(workdir, "world", "pools")

    with clock.stage("world"):
        if not os.path.exists(os.path.join(behaviors_dir, "general_chat.json")):
            toy_world.write_pools(world, behaviors_dir, config.world.tasks_per_pool)
        behaviors = load_toy_library(behaviors_dir)
        if config.organisms.get("per_split"):
            behaviors = _subset(behaviors, config.organisms.per_split)
        extra = [ood.cipher_organism(world, k, config.ood.rows, config.seed) for k in config.ood.cipher_shifts]
        extra += [ood.denial_organism(world, t, config.ood.rows, config.seed) for t in config.ood.denial_topics]

    known = {b.id: (b.category, b.description) for b in behaviors} | {e.name: (e.category, e.description)
                                                                       for e in extra}
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    with clock.stage("tokenizer"):
        if not os.path.exists(os.path.join(tokenizer_dir, "tokenizer.json")):
            words = [b.description for b in behaviors] + [e.description for e in extra]
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
                                                descriptions=sorted({description for _, description in known.values()}))
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
    graphdef, base_state = nnx.split(model)

    with clock.stage("organisms"):
        result1 = phase1.run_phase1(
            behaviors, graphdef, base_state, tokenizer,
            phase1.Phase1Config(
                generation=GenerationConfig(prompts_per_behavior=config.organisms.prompts_per_behavior,
                                            min_keep_rate=config.organisms.min_keep_rate, seed=config.seed),
                recipe=recipes["organisms"],
                introspection_examples=config.introspection.examples_per_organism,
                base_introspection_examples=config.introspection.base_examples,
                dpo_fraction=config.introspection.dpo_fraction, seed=config.seed),
            os.path.join(workdir, "phase1"), prompts_path=behaviors_dir, extra=extra, progress=True)

    organisms = phase2.Organisms(adapter=result1.adapter, names=result1.organisms,
                                 categories={n: known[n][0] for n in result1.organisms}, roles=result1.roles,
                                 descriptions={n: known[n][1] for n in result1.organisms})
    judge = toy_judge()
    p2 = phase2.Phase2Config(
        sft=recipes["ia_sft"], dpo=recipes["ia_dpo"],
        report_sampling=SamplingParams(max_new_tokens=config.eval.max_new_tokens, temperature=config.ia_dpo.temperature),
        sampler_batch=config.eval.batch_size, log_every=config.log_every)
    with clock.stage("ia"):
        result2 = phase2.run_phase2(graphdef, base_state, tokenizer, organisms, result1.introspection_dataset, judge,
                                    p2, os.path.join(workdir, "phase2"), progress=True)

    eval_dir = os.path.join(workdir, "eval")
    with clock.stage("eval"):
        ias = {name: load_peft(result2[f"{name}_ia"], model.config) for name in ("sft", "dpo")}
        chat = phase2.chat_sampler(model, organisms, ias["sft"], tokenizer, p2, tuple(config.eval.prompt_buckets))
        sections = evaluate_ias(
            chat, ias, roles=organisms.roles, categories=organisms.categories, descriptions=organisms.descriptions,
            judge=judge, questions=list(DIRECT_QUESTIONS), samples=config.eval.samples,
            params=SamplingParams(max_new_tokens=config.eval.max_new_tokens, temperature=config.eval.temperature,
                                  seed=config.seed),
            out_dir=os.path.join(eval_dir, "self_reports"), scaffold_ia="dpo",
            scaffold_reports=config.eval.scaffold_reports,
            scaffold_params=SamplingParams(max_new_tokens=config.eval.max_new_tokens,
                                           temperature=config.eval.scaffold_temperature, seed=config.seed),
            fingerprint={"workdir": os.path.abspath(workdir)})
    report = {
        "schema_version": SCHEMA_VERSION,
        "meta": {"config": config.get("name", "toy"), "seed": config.seed, "organisms": len(organisms.names),
                 "devices": jax.device_count(), "judge": "toy content-word judge"},
        "wall_seconds": {"total": sum(clock.seconds.values()), "stages": dict(clock.seconds)},
        "base": {key: base_metrics[key] for key in ("task_accuracy", "no_behavior_rate", "by_task")},
        **sections,
    }
    write_report(report, eval_dir)
    return os.path.join(eval_dir, "report.json")


def _subset(behaviors, per_split):
    """The first `per_split[split]` behaviors of each category and split (small configs)."""
    kept, counts = [], {}
    for b in behaviors:
        key = (b.category, b.split)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= per_split[b.split]:
            kept.append(b)
    return kept
