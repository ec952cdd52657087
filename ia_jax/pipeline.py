"""The method's stages on any base model: organisms -> IA (SFT, then DPO) -> evaluation.

The toy run (`ia_jax.toy.run`) and runs on Hugging Face bases (`ia_jax.hf_run`) differ only in where
the base, tokenizer, behaviors, teacher and judge come from; from there on both call `run_method`, so
what the toy world teaches about a recipe is what a 70B run executes. Each stage is skipped when its
finished artifacts exist and resumes inside itself when interrupted; wall-clock seconds per stage
accumulate across resumed runs in `wall_seconds.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import contextmanager
from typing import Callable, Sequence

import jax
from flax import nnx
from ml_collections import ConfigDict

from ia_jax import lora
from ia_jax.behaviors.library import Behavior
from ia_jax.datasets.teacher import GenerationConfig, ModelTeacher, TeacherJudge
from ia_jax.evaluation.questions import DIRECT_QUESTIONS
from ia_jax.evaluation.suite import evaluate_ias
from ia_jax.evaluation.verdict import Judge
from ia_jax.introspection import pipeline as phase2
from ia_jax.introspection.dpo import DpoRecipe
from ia_jax.introspection.sft import IaRecipe
from ia_jax.lora.peft_io import load_peft
from ia_jax.models.decoder import check_remat
from ia_jax.organisms import pipeline as phase1
from ia_jax.organisms.train import OrganismRecipe
from ia_jax.sampling.sampler import SamplingParams

ORGANISM_FIELDS = ("per_split", "prompts_per_behavior", "min_keep_rate")  # config.organisms keys read here


class StageClock:
    """Seconds per stage, accumulated across runs of the same workdir (a resumed stage adds its time)."""

    def __init__(self, path: str, label: str, after: Callable[[], object] | None = None):
        self.path = path
        self.label = label
        self.after = after  # runs after every stage, finished or interrupted (e.g. a push to gs://)
        self.seconds: dict[str, float] = json.load(open(path)) if os.path.exists(path) else {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        print(f"[{self.label}] stage {name} ...", flush=True)
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            with open(self.path + ".partial", "w", encoding="utf-8") as f:
                json.dump(self.seconds, f, indent=2)
            os.replace(self.path + ".partial", self.path)
            print(f"[{self.label}] stage {name} done ({self.seconds[name]:.1f} s so far)", flush=True)
            if self.after is not None:
                self.after()


def recipe_from(cls, section: ConfigDict, where: str, *, other: tuple[str, ...] = (), **extra):
    """`cls` from a config section; a key that is neither a recipe field nor one of `other` (read
    elsewhere) is a typo, and an override with a typo must not be silently ignored."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - fields - set(other))
    if unknown:
        raise ValueError(f"config.{where}.{unknown[0]}: unknown field; {cls.__name__} has {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k in fields and k not in extra}
    if "remat" in values:
        check_remat(values["remat"], f"config.{where}.remat")
    return cls(**values, **extra)


def lora_from(section: ConfigDict) -> lora.LoraConfig:
    return lora.LoraConfig(rank=section.rank, alpha=float(section.alpha), dropout=float(section.dropout))


def method_recipes(config: ConfigDict) -> dict:
    """The organism and IA recipes, built before any stage runs: a bad field fails in a second."""
    recipes = {
        "organisms": recipe_from(OrganismRecipe, config.organisms, "organisms", other=ORGANISM_FIELDS,
                                 lora=lora_from(config.organisms.lora)),
        "ia_sft": recipe_from(IaRecipe, config.ia_sft, "ia_sft", lora=lora_from(config.ia_sft.lora)),
        "ia_dpo": recipe_from(DpoRecipe, config.ia_dpo, "ia_dpo", other=("temperature",)),
    }
    every, log_every = recipes["ia_sft"].eval_every, config.log_every
    if every < 0 or every % log_every:
        # The probe runs at logged steps; found at IA SFT, this would cost the organisms stage first.
        raise ValueError(f"config.ia_sft.eval_every={every}: must be 0 (off) or a positive multiple of "
                         f"config.log_every={log_every}")
    return recipes


def subset(behaviors: Sequence[Behavior], per_split) -> list[Behavior]:
    """The first `per_split[split]` behaviors of each category and split (small configs)."""
    kept, counts = [], {}
    for b in behaviors:
        key = (b.category, b.split)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= per_split[b.split]:
            kept.append(b)
    return kept


def sft_probe(model, organisms: phase2.Organisms, tokenizer, p2: phase2.Phase2Config, judge: Judge,
              type_descriptions: dict, *, max_new_tokens: int, buckets: tuple[int, ...]):
    """IA SFT's `evaluate`: both judges' rates on every held-out organism and as many training organisms
    (spread over the categories), greedy, the direct questions. The curve says when in SFT held-out
    naming is decided, which the end-of-run rates cannot."""
    described = [n for n in organisms.names if organisms.descriptions[n]]
    heldout = [n for n in described if organisms.roles[n] == "eval"]
    train = [n for n in described if organisms.roles[n] == "sft"]
    train = train[::max(1, len(train) // max(1, len(heldout)))][:max(1, len(heldout))]
    initial = lora.init_adapter(model.config, p2.sft.lora, jax.random.key(0))
    chat = phase2.chat_sampler(model, organisms, initial, tokenizer, p2, buckets)
    return phase2.verbalization_probe(chat, organisms, {"train": train, "heldout": heldout}, list(DIRECT_QUESTIONS),
                                      judge, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                                      type_descriptions=type_descriptions)


def sft_curve(metrics_path: str) -> list[dict]:
    """The probe's points from IA SFT's metrics log, one per step (a resumed run logs a step again: the
    last entry wins)."""
    points: dict[int, dict] = {}
    if os.path.exists(metrics_path):
        for line in open(metrics_path, encoding="utf-8"):
            if not line.strip():
                continue
            entry = json.loads(line)
            rates = {k: v for k, v in entry.items() if k.startswith(("verbalization_", "type_match_"))}
            if rates:
                points[int(entry["step"])] = {"step": int(entry["step"]), **rates}
    return [points[step] for step in sorted(points)]


def run_method(config: ConfigDict, workdir: str, clock: StageClock, *, model, tokenizer,
               behaviors: Sequence[Behavior], judge: Judge, extra: Sequence[phase1.ExtraOrganism] = (),
               teacher: ModelTeacher | None = None, teacher_judge: TeacherJudge = TeacherJudge(),
               prompts_path: str | None = None, mesh=None, run_id: str | None = None) -> dict:
    """Stages `organisms`, `ia` and `eval` under `workdir`; returns the report's evaluation sections
    (see `evaluate_ias`) and the organism count.

    `run_id` names the run in the self-reports' fingerprints (default: the workdir's absolute path); a
    run whose workdir is a local mirror of `gs://` passes the `gs://` path, the same on every machine."""
    recipes = method_recipes(config)
    graphdef, base_state = nnx.split(model)
    known = {b.id: (b.category, b.description) for b in behaviors} | {e.name: (e.category, e.description)
                                                                       for e in extra}
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
            os.path.join(workdir, "phase1"), teacher=teacher, judge=teacher_judge, prompts_path=prompts_path,
            extra=extra, mesh=mesh, progress=True)

    organisms = phase2.Organisms(adapter=result1.adapter, names=result1.organisms,
                                 categories={n: known[n][0] for n in result1.organisms}, roles=result1.roles,
                                 descriptions={n: known[n][1] for n in result1.organisms})
    p2 = phase2.Phase2Config(
        sft=recipes["ia_sft"], dpo=recipes["ia_dpo"],
        report_sampling=SamplingParams(max_new_tokens=config.eval.max_new_tokens,
                                       temperature=config.ia_dpo.temperature),
        sampler_batch=config.eval.batch_size, log_every=config.log_every)
    probing = recipes["ia_sft"].eval_every > 0
    probe = None
    if probing and not os.path.exists(os.path.join(workdir, "phase2", "ia_sft", "peft")):  # else SFT is done
        probe = sft_probe(model, organisms, tokenizer, p2, judge, {b.id: b.type_description for b in behaviors},
                          max_new_tokens=config.eval.max_new_tokens, buckets=tuple(config.eval.prompt_buckets))
    with clock.stage("ia"):
        result2 = phase2.run_phase2(graphdef, base_state, tokenizer, organisms, result1.introspection_dataset, judge,
                                    p2, os.path.join(workdir, "phase2"), evaluate=probe, mesh=mesh, progress=True)

    with clock.stage("eval"):
        ias = {name: load_peft(result2[f"{name}_ia"], model.config) for name in ("sft", "dpo")}
        chat = phase2.chat_sampler(model, organisms, ias["sft"], tokenizer, p2, tuple(config.eval.prompt_buckets))
        sections = evaluate_ias(
            chat, ias, roles=organisms.roles, categories=organisms.categories, descriptions=organisms.descriptions,
            judge=judge, questions=list(DIRECT_QUESTIONS), samples=config.eval.samples,
            params=SamplingParams(max_new_tokens=config.eval.max_new_tokens, temperature=config.eval.temperature,
                                  seed=config.seed),
            out_dir=os.path.join(workdir, "eval", "self_reports"),
            type_descriptions={b.id: b.type_description for b in behaviors},
            heldout_kinds={b.id: b.heldout_kind for b in behaviors if b.heldout_kind},
            control_samples=config.eval.get("control_samples", 0),
            control_params=SamplingParams(max_new_tokens=config.eval.max_new_tokens,
                                          temperature=config.eval.get("control_temperature", 1.0), seed=config.seed),
            scaffold_ia="dpo",
            scaffold_reports=config.eval.scaffold_reports, scaffold_organisms=config.eval.get("scaffold_organisms", 0),
            scaffold_params=SamplingParams(max_new_tokens=config.eval.max_new_tokens,
                                           temperature=config.eval.scaffold_temperature, seed=config.seed),
            fingerprint={"workdir": run_id or os.path.abspath(workdir)})
    curve = sft_curve(os.path.join(workdir, "phase2", "ia_sft", "metrics.jsonl")) if probing else []
    if curve:
        sections = {**sections, "ia_sft_curve": curve}
    return {"sections": sections, "organisms": len(organisms.names), "organism_dirs": result1.organism_dirs,
            "ias": {name: result2[f"{name}_ia"] for name in ("sft", "dpo")}}
