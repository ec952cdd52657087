"""IA DPO: refine the SFT IA on organisms it never saw, preferring accurate self-reports.

On organisms held out of SFT, the SFT IA answers each question K times; a judge marks each answer
accurate or not against the organism's behavior. Pairs prefer (1) an accurate report or the
ground-truth label over each inaccurate report, and (2) the ground-truth label over an inserted wrong
label (another behavior's description), which teaches the IA to say what *this* organism does rather
than a plausible behavior. Labels are worded with the same answer templates as SFT. The reference
policy is the SFT IA itself; its log-probs are computed once and stored with the pairs.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from typing import Mapping, Sequence

import numpy as np
from flax import nnx
from transformers import PreTrainedTokenizerBase

from ia_jax.datasets.introspection import PLACEHOLDER, Templates
from ia_jax.evaluation.self_reports import SelfReport
from ia_jax.lora.adapter import LoraAdapter
from ia_jax.parallel import multihost
from ia_jax.parallel.sharding import make_mesh
from ia_jax.tokenization import render_exchange
from ia_jax.training import train_step as ts
from ia_jax.training.dpo_reference import attach_reference_log_probs
from ia_jax.training.loop import examples_digest, run_stage
from ia_jax.training.recipe import Recipe, plan_run


@dataclasses.dataclass(frozen=True)
class DpoRecipe(Recipe):
    learning_rate: float = 1e-5
    buckets: tuple[int, ...] = (128, 256, 512, 1024)
    beta: float = 0.1
    label_smoothing: float = 0.0
    samples_per_question: int = 4  # K self-reports per (organism, question)
    questions: int = 0  # questions each DPO organism is asked (a seeded draw from the DPO rows'; 0: all)
    wrong_labels_per_question: int = 1
    # Where wrong labels come from: "any" other behavior, or "sibling": one of the same category when
    # there is one (a near miss, "cheapest" for "first listed", so the pair is about the words that
    # tell siblings apart rather than the category).
    wrong_labels: str = "any"

    def __post_init__(self):
        super().__post_init__()
        if self.wrong_labels not in WRONG_LABELS:
            raise ValueError(f"DpoRecipe.wrong_labels must be one of {WRONG_LABELS}, got {self.wrong_labels!r}")


WRONG_LABELS = ("any", "sibling")


def _rng(seed: int, *keys: str) -> np.random.Generator:
    digest = hashlib.sha256("\0".join(keys).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:4], "little")])


def control_pairs(controls: Sequence[str], questions: Sequence[str], descriptions: Sequence[str],
                  templates: Templates, *, per_question: int = 1, seed: int = 0) -> list[dict]:
    """Pairs for models without a behavior: a plain "no unusual behavior" answer over an inserted
    behavior label. DPO's other pairs all prefer naming a behavior; without these, DPO teaches the IA
    to name one for any model (the control population's false-positive rate rose from 0.15 to 0.43)."""
    descriptions = sorted({d for d in descriptions if d})
    if controls and not descriptions:
        raise ValueError("control pairs need at least one behavior description to reject")
    pairs = []
    for organism in controls:
        for question in questions:
            rng = _rng(seed, organism, question)
            for _ in range(per_question):
                wrong = descriptions[rng.integers(len(descriptions))]
                pairs.append({"organism": organism, "question": question,
                              "chosen": templates.no_behavior_answers[rng.integers(len(templates.no_behavior_answers))],
                              "rejected": templates.answers[rng.integers(len(templates.answers))].replace(PLACEHOLDER,
                                                                                                         wrong),
                              "source": "control_vs_label"})
    return pairs


def build_pairs(reports: Sequence[SelfReport], accurate: Sequence[bool], descriptions: Mapping[str, str],
                templates: Templates, *, wrong_labels_per_question: int = 1, seed: int = 0,
                categories: Mapping[str, str] | None = None) -> tuple[list[dict], dict]:
    """Preference pairs `{organism, question, chosen, rejected, source}` and their counts.

    `descriptions` must hold every reported organism and at least one other behavior (the source of
    wrong labels). `source` says what each side is: "report_vs_report" (an accepted report over an
    inaccurate one), "label_vs_report" (the ground-truth label over an inaccurate report) or
    "wrong_label" (the label over another behavior's). With `categories` (organism -> category), a
    wrong label is a sibling's (same category, another description) where the category has one.
    """
    if len(reports) != len(accurate):
        raise ValueError(f"{len(reports)} reports but {len(accurate)} verdicts")
    missing = sorted({r.organism for r in reports} - set(descriptions))
    if missing:
        raise ValueError(f"no ground-truth description for organisms {missing}")
    groups: dict[tuple[str, str], list[tuple[str, bool]]] = collections.defaultdict(list)
    for report, ok in zip(reports, accurate):
        groups[report.organism, report.question].append((report.answer, bool(ok)))
    pairs: list[dict] = []
    empty = 0
    accepted: dict[str, list[bool]] = collections.defaultdict(list)
    for (organism, question), answers in groups.items():
        rng = _rng(seed, organism, question)
        # Other behaviors' descriptions; organisms without one (controls) have none to lend.
        others = sorted({d for name, d in descriptions.items()
                         if name != organism and d and d != descriptions[organism]})
        if categories is not None:
            siblings = sorted({d for name, d in descriptions.items() if categories.get(name) == categories.get(organism)
                               and name != organism and d and d != descriptions[organism]})
            others = siblings or others
        if not others and wrong_labels_per_question:
            raise ValueError("wrong labels need at least one other behavior's description")

        def label(description: str) -> str:
            return templates.answers[rng.integers(len(templates.answers))].replace(PLACEHOLDER, description)

        good = [a for a, ok in answers if ok]
        accepted[organism].extend(ok for _, ok in answers)
        for answer, ok in answers:
            if not ok and not answer.strip():
                empty += 1  # nothing to render as an assistant turn; an empty report teaches nothing
            elif not ok:  # an accurate report when there is one, else the label, beats each inaccurate one
                on_policy = bool(good) and rng.random() < 0.5
                chosen = good[rng.integers(len(good))] if on_policy else label(descriptions[organism])
                pairs.append({"organism": organism, "question": question, "chosen": chosen, "rejected": answer,
                              "source": "report_vs_report" if on_policy else "label_vs_report"})
        for _ in range(wrong_labels_per_question):
            pairs.append({"organism": organism, "question": question, "chosen": label(descriptions[organism]),
                          "rejected": label(others[rng.integers(len(others))]), "source": "wrong_label"})
    all_verdicts = [ok for verdicts in accepted.values() for ok in verdicts]
    on_policy = sum(p["source"] == "report_vs_report" for p in pairs)
    stats = {"pairs": len(pairs), "by_source": dict(collections.Counter(p["source"] for p in pairs)),
             # Pairs whose chosen side is the IA's own accepted report: what DPO can learn from its own
             # successes, rather than only from labels it never produced.
             "pairs_with_on_policy_chosen": on_policy,
             "groups_with_accepted_report": sum(any(ok for _, ok in a) for a in groups.values()),
             "groups": len(groups),
             "skipped_empty_reports": empty,
             "reports": len(all_verdicts), "judge_accept_rate": float(np.mean(all_verdicts)) if all_verdicts else 0.0,
             "judge_accept_rate_by_organism": {o: float(np.mean(v)) for o, v in accepted.items()}}
    return pairs, stats


def tokenize_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Mapping], slots: Mapping[str, int],
                   max_tokens: int, **template_kwargs) -> tuple[list[dict], int]:
    """Pairs as token arrays for the DPO step; returns (pairs, dropped for being too long)."""
    tokenized, dropped = [], 0
    for pair in pairs:
        if pair["organism"] not in slots:
            raise ValueError(f"pair for organism {pair['organism']!r}, which is not among the loaded organisms")
        sides = {}
        for side in ("chosen", "rejected"):
            chat = render_exchange(tokenizer, pair["question"], pair[side], **template_kwargs)
            sides[side] = chat
        if max(len(c.ids) for c in sides.values()) > max_tokens:
            dropped += 1
            continue
        example = {"organism_id": slots[pair["organism"]]}
        for side, chat in sides.items():
            example[f"{side}_tokens"] = np.asarray(chat.ids, np.int32)
            example[f"{side}_loss_mask"] = np.asarray(chat.loss_mask, np.int32)
        tokenized.append(example)
    return tokenized, dropped


def train_ia_dpo(graphdef, base_state, organisms: LoraAdapter, sft_ia: LoraAdapter, pairs: Sequence[dict],
                 recipe: DpoRecipe, workdir: str, *, mesh=None, log_every: int = 5,
                 fingerprint: Mapping | None = None) -> tuple[LoraAdapter, list[dict]]:
    """DPO from the SFT IA, with the SFT IA as reference; resumes from `workdir/checkpoints`.

    `pairs` come from `tokenize_pairs`; reference log-probs are attached here (and cached in
    `workdir/reference_log_probs.npz` so a resumed run does not recompute them).
    """
    if not pairs:
        raise ValueError("no DPO pairs to train on")
    model_config = nnx.merge(graphdef, base_state).config
    # Without dropout, as is usual for DPO: the policy starts equal to its reference (loss log 2) and
    # the margins measure preferences, not dropout noise.
    ia_config = dataclasses.replace(sft_ia.config, dropout=0.0)
    composition = ts.Composition(graphdef, (ts.AdapterSlot(organisms.config, organisms.num_slots),
                                            ts.AdapterSlot(ia_config)), trainable=1, remat=recipe.remat)
    weights = {"base": nnx.to_pure_dict(base_state), "adapters": [organisms.weights, sft_ia.weights]}

    def repeated(examples):
        return [p for p in examples for _ in range(recipe.epochs)]

    # The plan (steps, schedule) depends on the pairs' lengths only, not on their reference scores.
    _, _, optimizer, schedule = plan_run(repeated(pairs), recipe)
    trainer = ts.Trainer(composition, ts.dpo_objective(recipe.beta, recipe.label_smoothing), optimizer,
                         mesh or make_mesh(data=-1, fsdp=1), base_state=base_state, weights=weights, schedule=schedule)
    os.makedirs(workdir, exist_ok=True)
    cache = os.path.join(workdir, "reference_log_probs.npz")
    if os.path.exists(cache):
        with np.load(cache, allow_pickle=False) as stored:
            chosen, rejected = stored["chosen"], stored["rejected"]
        if len(chosen) != len(pairs):
            raise ValueError(f"{cache}: holds {len(chosen)} reference scores for {len(pairs)} pairs; "
                             "it belongs to another run, use a new workdir")
        scored = [{**p, "reference_chosen": float(c), "reference_rejected": float(r)}
                  for p, c, r in zip(pairs, chosen, rejected)]
    else:
        scored = attach_reference_log_probs(pairs, trainer, weights, batch_size=recipe.batch_size,
                                            buckets=recipe.buckets)
        np.savez(cache + ".partial.npz", chosen=np.array([p["reference_chosen"] for p in scored], np.float32),
                 rejected=np.array([p["reference_rejected"] for p in scored], np.float32))
        os.replace(cache + ".partial.npz", cache)
    batcher, steps, _, _ = plan_run(repeated(scored), recipe)
    run = {"model": dataclasses.asdict(model_config), "pairs_sha256": examples_digest(pairs),
           **(dict(fingerprint or {}))}
    state, history = run_stage(trainer, weights, batcher, steps=steps, recipe=recipe, workdir=workdir, fingerprint=run,
                               description="ia dpo", log_every=log_every)
    return LoraAdapter(weights=multihost.fetch(state.params), config=sft_ia.config), history
