"""Phase 2 end to end: IA SFT on the SFT organisms, then DPO on the DPO organisms, each exported.

Stages and what marks them finished (a re-run skips finished stages; unfinished ones resume):

1. `ia_sft/`: training (orbax checkpoints, `metrics.jsonl`), then `ia_sft/peft/` with `ia_card.json`.
2. `ia_dpo/self_reports.jsonl` and `judgments.jsonl`: K self-reports per (DPO organism, question)
   from the SFT IA, judged; `datasets/dpo_pairs` (TFDS) and `ia_dpo/pairs_stats.json`.
3. `ia_dpo/`: DPO training, then `ia_dpo/peft/` with its card.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Mapping, Sequence

import numpy as np
from flax import nnx
from transformers import PreTrainedTokenizerBase

from ia_jax.datasets import introspection, tfds_io
from ia_jax.evaluation.metrics import judge_reports
from ia_jax.evaluation.respondent import sampler_respondent
from ia_jax.evaluation.self_reports import ReportRequest, collect_self_reports
from ia_jax.evaluation.verdict import Judge
from ia_jax.introspection.card import ia_card, write_card
from ia_jax.introspection.dpo import DpoRecipe, build_pairs, control_pairs, tokenize_pairs, train_ia_dpo
from ia_jax.introspection.sft import IaRecipe, introspection_examples, train_ia_sft
from ia_jax.lora.adapter import LoraAdapter
from ia_jax.lora.peft_io import load_peft, save_peft
from ia_jax.sampling.chat import ChatSampler
from ia_jax.sampling.sampler import Sampler, SamplingParams
from ia_jax.tokenization import stop_token_ids

PAIRS_DATASET = "dpo_pairs"
PAIRS_FEATURES = {"organism": "text", "question": "text", "chosen": "text", "rejected": "text", "source": "text"}


@dataclasses.dataclass(frozen=True)
class Phase2Config:
    sft: IaRecipe = IaRecipe()
    dpo: DpoRecipe = DpoRecipe()
    report_sampling: SamplingParams = SamplingParams(max_new_tokens=64, temperature=1.0)
    sampler_batch: int = 32
    log_every: int = 10  # steps between metric fetches (and the granularity of SFT evaluations)


@dataclasses.dataclass(frozen=True)
class Organisms:
    """The organisms phase 2 sees: stacked adapter (slot i = names[i]), and per name its category,
    role ("sft" | "dpo" | "eval") and behavior description."""

    adapter: LoraAdapter
    names: Sequence[str]
    categories: Mapping[str, str]
    roles: Mapping[str, str]
    descriptions: Mapping[str, str]

    @property
    def slots(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


def _last_metrics(directory: str) -> dict:
    """The last logged metrics of a stage (a resumed run's own history may be empty)."""
    path = os.path.join(directory, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def _export(ia: LoraAdapter, directory: str, card: dict) -> str:
    """PEFT directory plus card, renamed into place last so its existence means finished; the card is
    also written beside the stage's orbax checkpoints (`directory/checkpoints`)."""
    final, partial = os.path.join(directory, "peft"), os.path.join(directory, "peft.partial")
    write_card(directory, card)
    save_peft(ia, partial)
    write_card(partial, card)
    os.replace(partial, final)
    return final


def chat_sampler(model, organisms: Organisms, ia: LoraAdapter, tokenizer, config: Phase2Config,
                 buckets: Sequence[int]) -> ChatSampler:
    sampler = Sampler(model, organisms=organisms.adapter, ia=ia, stop_ids=stop_token_ids(tokenizer),
                      pad_id=tokenizer.pad_token_id or 0, prompt_buckets=buckets,
                      batch_buckets=(config.sampler_batch,))
    return ChatSampler(sampler, tokenizer, organisms.slots)


def verbalization_probe(chat: ChatSampler, organisms: Organisms, groups: Mapping[str, Sequence[str]],
                        questions: Sequence[str], judge: Judge, params: SamplingParams, *,
                        type_descriptions: Mapping[str, str] | None = None) -> Callable[[int, LoraAdapter], dict]:
    """An `evaluate` for IA training: verbalization rate of the current IA on a few organisms per group
    (e.g. {"train": [...], "heldout": [...]}), one answer per question, nothing written to disk. With
    `type_descriptions` (organism -> the text the type-match judge asks for), the same answers are also
    judged against those (`type_match_<group>`), so one probe gives both judges' curves. The sampler's
    IA is swapped in place, so every probe reuses the same compiled programs."""
    requests = [ReportRequest(name, True, q, 0) for names in groups.values() for name in names for q in questions]
    respond = sampler_respondent(chat, params)
    judged = {"verbalization": organisms.descriptions}
    if type_descriptions is not None:
        judged["type_match"] = {n: type_descriptions.get(n, d) for n, d in organisms.descriptions.items()}

    def evaluate(step: int, ia: LoraAdapter) -> dict:
        chat.sampler.set_ia(ia)
        answers = respond(requests)
        metrics = {}
        for rate, truths in judged.items():
            verdicts = judge.judge_many([(a, truths[r.organism]) for r, a in zip(requests, answers)])
            matches: dict[str, int] = {}
            for request, verdict in zip(requests, verdicts):
                matches[request.organism] = matches.get(request.organism, 0) + verdict.match
            metrics.update({f"{rate}_{group}": sum(matches.get(n, 0) for n in names) / (len(names) * len(questions))
                            for group, names in groups.items() if names})
        return metrics

    return evaluate


def run_phase2(graphdef, base_state, tokenizer: PreTrainedTokenizerBase, organisms: Organisms,
               introspection_dataset: str, judge: Judge, config: Phase2Config, workdir: str, *,
               datasets_dir: str | None = None, evaluate: Callable[[int, LoraAdapter], dict] | None = None,
               mesh=None, progress: bool = True) -> dict:
    """Runs (or finishes, or skips) IA SFT and DPO; returns paths, pair stats and training histories."""
    datasets_dir = datasets_dir or os.path.join(workdir, "datasets")
    model_config = nnx.merge(graphdef, base_state).config
    base_model = {"model_type": model_config.model_type, "num_layers": model_config.num_layers,
                  "hidden_size": model_config.hidden_size}
    slots = organisms.slots
    out: dict = {}

    # 1. SFT.
    sft_dir = os.path.join(workdir, "ia_sft")
    sft_peft = os.path.join(sft_dir, "peft")
    if os.path.exists(sft_peft):
        sft_ia = load_peft(sft_peft, model_config)
    else:
        reader = tfds_io.read_dataset(introspection_dataset, "sft")
        examples, dropped = introspection_examples(tokenizer, (reader[i] for i in range(len(reader))), slots,
                                                   config.sft.buckets[-1])
        sft_ia, out["sft_history"] = train_ia_sft(graphdef, base_state, organisms.adapter, examples, config.sft,
                                                  sft_dir, evaluate=evaluate, mesh=mesh, log_every=config.log_every)
        card = ia_card("sft", organisms.roles, organisms.categories, recipe=config.sft, base_model=base_model,
                       metrics={"examples": len(examples), "dropped_too_long": dropped, **_last_metrics(sft_dir)})
        _export(sft_ia, sft_dir, card)
    out["sft_ia"] = sft_peft

    # 2. Self-reports of the SFT IA on the DPO organisms, judged, into preference pairs.
    dpo_dir = os.path.join(workdir, "ia_dpo")
    dpo_peft = os.path.join(dpo_dir, "peft")
    dpo_organisms = [n for n in organisms.names if organisms.roles[n] == "dpo"]
    if not dpo_organisms:
        raise ValueError("no organisms have the role 'dpo'; DPO needs organisms held out of SFT")
    if not os.path.exists(dpo_peft):
        os.makedirs(dpo_dir, exist_ok=True)
        if not tfds_io.dataset_complete(datasets_dir, PAIRS_DATASET):
            reader = tfds_io.read_dataset(introspection_dataset, "dpo")
            questions = sorted({reader[i]["question"] for i in range(len(reader))})
            if config.dpo.questions:
                order = np.random.default_rng(config.dpo.seed).permutation(len(questions))
                questions = sorted(questions[i] for i in order[:config.dpo.questions])
            model = nnx.merge(graphdef, base_state)
            chat = chat_sampler(model, organisms, sft_ia, tokenizer, config, config.dpo.buckets)
            reports = collect_self_reports(
                sampler_respondent(chat, config.report_sampling), dpo_organisms, questions,
                config.dpo.samples_per_question, [True], os.path.join(dpo_dir, "self_reports.jsonl"),
                batch_size=config.sampler_batch, progress=progress,
                # The IA by its place in the workdir, not by an absolute path: a resumed run may work in
                # a mirror of a gs:// workdir elsewhere (another host of a pod, another machine).
                fingerprint={"sampling": dataclasses.asdict(config.report_sampling),
                             "ia": os.path.relpath(sft_peft, workdir)})
            verdicts = judge_reports([(r, organisms.descriptions[r.organism]) for r in reports], judge,
                                     os.path.join(dpo_dir, "judgments.jsonl"), progress=progress)
            templates = introspection.load_templates()
            # Wrong labels only from organisms the IA trains on: a held-out or OOD organism's description
            # must appear in no training pair, not even as the rejected side.
            trained = {n: d for n, d in organisms.descriptions.items() if organisms.roles[n] in ("sft", "dpo")}
            pairs, stats = build_pairs(reports, [v.match for v in verdicts], trained, templates,
                                       wrong_labels_per_question=config.dpo.wrong_labels_per_question,
                                       seed=config.dpo.seed,
                                       categories=organisms.categories if config.dpo.wrong_labels == "sibling" else None)
            controls = [n for n in organisms.names if organisms.roles[n] == "control_dpo"]
            negatives = control_pairs(controls, questions, [organisms.descriptions[n] for n in dpo_organisms],
                                      templates, per_question=config.dpo.wrong_labels_per_question,
                                      seed=config.dpo.seed)
            pairs += negatives
            stats["pairs"] += len(negatives)
            if negatives:
                stats["by_source"]["control_vs_label"] = len(negatives)
            with open(os.path.join(dpo_dir, "pairs_stats.json"), "w", encoding="utf-8") as f:
                json.dump(stats, f, indent=2)
            tfds_io.write_dataset(datasets_dir, PAIRS_DATASET, {"train": pairs}, PAIRS_FEATURES)
        reader = tfds_io.read_dataset(tfds_io.dataset_path(datasets_dir, PAIRS_DATASET), "train")
        pairs, dropped = tokenize_pairs(tokenizer, [reader[i] for i in range(len(reader))], slots,
                                        config.dpo.buckets[-1])
        # 3. DPO from the SFT IA.
        dpo_ia, out["dpo_history"] = train_ia_dpo(graphdef, base_state, organisms.adapter, sft_ia, pairs,
                                                  config.dpo, dpo_dir, mesh=mesh, log_every=config.log_every)
        stats_path = os.path.join(dpo_dir, "pairs_stats.json")
        stats = json.load(open(stats_path, encoding="utf-8")) if os.path.exists(stats_path) else {}
        card = ia_card("dpo", organisms.roles, organisms.categories, recipe=config.dpo, base_model=base_model,
                       metrics={**stats, "dropped_too_long": dropped, **_last_metrics(dpo_dir)})
        _export(dpo_ia, dpo_dir, card)
    out["dpo_ia"] = dpo_peft
    return out
