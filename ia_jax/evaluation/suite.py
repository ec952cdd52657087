"""The evaluation suite for trained IAs: every section of `report.json` that needs self-reports.

Verbalization rates on training, held-out and out-of-distribution organisms without the IA and with
each IA variant (e.g. SFT and DPO), the false-positive rate of each IA on the base model (which has
no implanted behavior), and the summarization scaffold on held-out organisms. Self-reports go to one
JSONL per condition under `out_dir`, so an interrupted evaluation resumes; the sampler's IA is
swapped in place between conditions, so every condition reuses the same compiled programs.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from ia_jax.evaluation.metrics import false_positive_rate, verbalization_rates
from ia_jax.evaluation.respondent import sampler_respondent
from ia_jax.evaluation.scaffold import scaffold_success, summarize
from ia_jax.evaluation.self_reports import SelfReport, collect_self_reports
from ia_jax.evaluation.verdict import Judge
from ia_jax.lora.adapter import LoraAdapter
from ia_jax.sampling.chat import BASE, ChatSampler
from ia_jax.sampling.sampler import SamplingParams


def _merge(parts: Sequence[dict]) -> dict:
    """Split objects of one condition each -> one split object with every condition."""
    merged: dict = {"verbalization_rate": {}, "by_category": {}, "by_organism": {}}
    for part in parts:
        merged["verbalization_rate"].update(part["verbalization_rate"])
        for key in ("by_category", "by_organism"):
            for name, rates in part[key].items():
                merged[key].setdefault(name, {}).update(rates)
    return merged


def evaluate_ias(chat: ChatSampler, ias: Mapping[str, LoraAdapter], *, roles: Mapping[str, str],
                 categories: Mapping[str, str], descriptions: Mapping[str, str], judge: Judge,
                 questions: Sequence[str], samples: int, params: SamplingParams, out_dir: str,
                 scaffold_ia: str | None = None, scaffold_reports: int = 100,
                 scaffold_params: SamplingParams | None = None, fingerprint: Mapping | None = None,
                 progress: bool = True) -> dict:
    """Report sections `train`, `heldout`, `ood`, `false_positive_rate` and `scaffold`.

    `ias` maps a variant name ("sft", "dpo") to its adapter; conditions are named `with_ia_<name>`.
    Organisms are grouped by role: "sft" -> train, "eval" -> heldout, "ood" -> ood by category.
    `scaffold_params` (default `params`) sample the scaffold's many reports: they need a temperature
    for diversity even where the rates are measured greedily.
    """
    respond = sampler_respondent(chat, params)
    train = [n for n, r in roles.items() if r == "sft"]
    heldout = [n for n, r in roles.items() if r == "eval"]
    ood = [n for n, r in roles.items() if r == "ood"]
    asked = train + heldout + ood
    run = dict(fingerprint or {})

    def reports(names, with_ia, condition, count=samples, qs=questions, sampling=params):
        path = f"{out_dir}/reports_{condition}.jsonl"
        answer = respond if sampling is params else sampler_respondent(chat, sampling)
        return collect_self_reports(answer, names, qs, count, [with_ia], path, batch_size=64, progress=progress,
                                    fingerprint={**run, "condition": condition, "params": repr(sampling)})

    by_condition: dict[str, list[SelfReport]] = {"without_ia": reports(asked, False, "without_ia")}
    false_positive: dict[str, float] = {}
    for name, ia in ias.items():
        chat.sampler.set_ia(ia)
        condition = f"with_ia_{name}"
        by_condition[condition] = reports(asked, True, condition)
        base_reports = reports([BASE], True, f"base_{condition}")
        false_positive[condition] = false_positive_rate(base_reports, sorted(set(descriptions.values())), judge,
                                                        progress=False)

    def split(names):
        if not names:
            return None
        parts = []
        for condition, all_reports in by_condition.items():
            chosen = [r for r in all_reports if r.organism in names]
            parts.append(verbalization_rates(chosen, descriptions, categories, judge,
                                             with_ia_name=condition if condition != "without_ia" else "with_ia",
                                             progress=False))
        return _merge(parts)

    section: dict = {"false_positive_rate": false_positive}
    for key, names in (("train", train), ("heldout", heldout)):
        if names:
            section[key] = split(names)
    if ood:
        families = sorted({categories[n] for n in ood})
        section["ood"] = {f: split([n for n in ood if categories[n] == f])["verbalization_rate"] for f in families}

    if scaffold_ia is not None and heldout:
        chat.sampler.set_ia(ias[scaffold_ia])
        per_question = math.ceil(scaffold_reports / len(questions))
        many = reports(heldout, True, f"scaffold_with_ia_{scaffold_ia}", count=per_question,
                       sampling=scaffold_params or params)
        outcome = {}
        for name in heldout:
            answers = [r.answer for r in many if r.organism == name][:scaffold_reports]
            outcome[name] = scaffold_success(summarize(answers, k=5), descriptions[name], judge)
        section["scaffold"] = {"top5_success": sum(outcome.values()) / len(outcome),
                               "condition": f"with_ia_{scaffold_ia}", "reports_per_organism": scaffold_reports,
                               "by_organism": outcome}
    return section
