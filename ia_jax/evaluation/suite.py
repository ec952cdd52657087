"""The evaluation suite for trained IAs: every section of `report.json` that needs self-reports.

Verbalization rates on training, held-out and out-of-distribution organisms without the IA and with
each IA variant (e.g. SFT and DPO), by two judges: the strict one (`verbalization_rate`: every content
word of the description) and the paper-faithful one (`type_match_rate`: the same judge against each
organism's type description, which leaves out what the organism only reads, such as a trigger).
Held-out organisms are also reported by kind (compositional or novel). The false-positive rate is
measured on a population of control organisms (fine-tuned on generic chat only, greedy and sampled
answers) and, as before, on the base model. The summarization scaffold runs on held-out organisms.
Self-reports go to one JSONL per condition under `out_dir`, so an interrupted evaluation resumes; the
sampler's IA is swapped in place between conditions, so every condition reuses the same compiled programs.
"""

from __future__ import annotations

import math
import statistics
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


def _by_kind(split: dict, kinds: Mapping[str, Sequence[str]]) -> dict:
    """Per held-out kind, both judges' rates: means over that kind's organisms, as the split's are."""
    out = {}
    for kind, names in kinds.items():
        out[kind] = {"organisms": len(names)}
        for key, by_organism in (("verbalization_rate", split["by_organism"]),
                                 ("type_match_rate", split["type_match_by_organism"])):
            conditions = sorted({c for n in names for c in by_organism[n]})
            out[kind][key] = {c: statistics.fmean(by_organism[n][c] for n in names if c in by_organism[n])
                              for c in conditions}
    return out


def _round_robin(names: Sequence[str], categories: Mapping[str, str], count: int) -> list[str]:
    """Up to `count` names (0: all), one from each category in turn, so a few cover every category."""
    queues: dict[str, list[str]] = {}
    for name in names:
        queues.setdefault(categories[name], []).append(name)
    order = [q[i] for i in range(max(map(len, queues.values()))) for q in queues.values() if i < len(q)]
    return order[:count] if count else order


def evaluate_ias(chat: ChatSampler, ias: Mapping[str, LoraAdapter], *, roles: Mapping[str, str],
                 categories: Mapping[str, str], descriptions: Mapping[str, str], judge: Judge,
                 questions: Sequence[str], samples: int, params: SamplingParams, out_dir: str,
                 type_descriptions: Mapping[str, str] | None = None, heldout_kinds: Mapping[str, str] | None = None,
                 control_samples: int = 0, control_params: SamplingParams | None = None,
                 scaffold_ia: str | None = None, scaffold_reports: int = 100, scaffold_organisms: int = 0,
                 scaffold_params: SamplingParams | None = None, fingerprint: Mapping | None = None,
                 progress: bool = True) -> dict:
    """Report sections `train`, `heldout`, `ood`, `ood_type_match_rate`, `false_positive_rate`,
    `false_positive` and `scaffold`.

    `ias` maps a variant name ("sft", "dpo") to its adapter; conditions are named `with_ia_<name>`.
    Organisms are grouped by role: "sft" -> train, "eval" -> heldout, "ood" -> ood by category,
    "control" -> the false-positive population. `type_descriptions` (default: the descriptions) are
    what the type-match judge asks for; `heldout_kinds` maps held-out organisms to "compositional" or
    "novel". Controls answer each question greedily (`params`) and `control_samples` more times with
    `control_params`. `scaffold_params` (default `params`) sample the scaffold's many reports: they need
    a temperature for diversity even where the rates are measured greedily.
    """
    respond = sampler_respondent(chat, params)
    type_descriptions = {**descriptions, **(type_descriptions or {})}
    train = [n for n, r in roles.items() if r == "sft"]
    heldout = [n for n, r in roles.items() if r == "eval"]
    ood = [n for n, r in roles.items() if r == "ood"]
    controls = [n for n, r in roles.items() if r == "control"]
    asked = train + heldout + ood
    run = dict(fingerprint or {})
    behaviors = sorted({descriptions[n] for n, r in roles.items() if r in ("sft", "dpo", "eval", "ood")})
    behavior_types = sorted({type_descriptions[n] for n, r in roles.items() if r in ("sft", "dpo", "eval", "ood")})

    def reports(names, with_ia, condition, count=samples, qs=questions, sampling=params):
        path = f"{out_dir}/reports_{condition}.jsonl"
        answer = respond if sampling is params else sampler_respondent(chat, sampling)
        return collect_self_reports(answer, names, qs, count, [with_ia], path, batch_size=64, progress=progress,
                                    fingerprint={**run, "condition": condition, "params": repr(sampling)})

    def control_reports(with_ia, condition):
        greedy = reports(controls, with_ia, f"controls_{condition}", count=1)
        sampled = []
        if control_samples:
            sampled = reports(controls, with_ia, f"controls_sampled_{condition}", count=control_samples,
                              sampling=control_params or params)
        return greedy, sampled

    by_condition: dict[str, list[SelfReport]] = {"without_ia": reports(asked, False, "without_ia")}
    false_positive: dict[str, float] = {}
    detail: dict = {"controls": len(controls), "reports_per_control": len(questions) * (1 + control_samples),
                    "type_match_rate": {}, "greedy": {}, "sampled": {}, "base": {}}

    def score_controls(condition, greedy, sampled):
        def rate(rs, candidates):
            return false_positive_rate(rs, candidates, judge, progress=False)
        false_positive[condition] = rate(greedy + sampled, behaviors)
        detail["type_match_rate"][condition] = rate(greedy + sampled, behavior_types)
        detail["greedy"][condition] = rate(greedy, behaviors)
        if sampled:
            detail["sampled"][condition] = rate(sampled, behaviors)

    if controls:
        score_controls("without_ia", *control_reports(False, "without_ia"))
    for name, ia in ias.items():
        chat.sampler.set_ia(ia)
        condition = f"with_ia_{name}"
        by_condition[condition] = reports(asked, True, condition)
        base_reports = reports([BASE], True, f"base_{condition}")
        detail["base"][condition] = false_positive_rate(base_reports, behaviors, judge, progress=False)
        if controls:
            score_controls(condition, *control_reports(True, condition))
    if not controls:  # no population: the base's own rate is all there is
        false_positive = dict(detail["base"])
    if not detail["sampled"]:
        del detail["sampled"]

    def split(names):
        if not names:
            return None
        parts, type_parts = [], []
        for condition, all_reports in by_condition.items():
            chosen = [r for r in all_reports if r.organism in names]
            name = condition if condition != "without_ia" else "with_ia"
            parts.append(verbalization_rates(chosen, descriptions, categories, judge, with_ia_name=name,
                                             progress=False))
            type_parts.append(verbalization_rates(chosen, type_descriptions, categories, judge, with_ia_name=name,
                                                  progress=False))
        merged, typed = _merge(parts), _merge(type_parts)
        merged["type_match_rate"] = typed["verbalization_rate"]
        merged["type_match_by_category"] = typed["by_category"]
        merged["type_match_by_organism"] = typed["by_organism"]
        return merged

    section: dict = {"false_positive_rate": false_positive, "false_positive": detail}
    for key, names in (("train", train), ("heldout", heldout)):
        if names:
            section[key] = split(names)
    if heldout and heldout_kinds:
        kinds: dict[str, list[str]] = {}
        for name in heldout:
            if name in heldout_kinds:
                kinds.setdefault(heldout_kinds[name], []).append(name)
        section["heldout"]["by_kind"] = _by_kind(section["heldout"], dict(sorted(kinds.items())))
    if ood:
        families = sorted({categories[n] for n in ood})
        per_family = {f: split([n for n in ood if categories[n] == f]) for f in families}
        section["ood"] = {f: rates["verbalization_rate"] for f, rates in per_family.items()}
        section["ood_type_match_rate"] = {f: rates["type_match_rate"] for f, rates in per_family.items()}

    if scaffold_ia is not None and heldout:
        chat.sampler.set_ia(ias[scaffold_ia])
        per_question = math.ceil(scaffold_reports / len(questions))
        summarized = _round_robin(heldout, categories, scaffold_organisms)
        many = reports(summarized, True, f"scaffold_with_ia_{scaffold_ia}", count=per_question,
                       sampling=scaffold_params or params)
        outcome = {}
        for name in summarized:
            answers = [r.answer for r in many if r.organism == name][:scaffold_reports]
            outcome[name] = scaffold_success(summarize(answers, k=5), descriptions[name], judge)
        section["scaffold"] = {"top5_success": sum(outcome.values()) / len(outcome),
                               "condition": f"with_ia_{scaffold_ia}", "reports_per_organism": scaffold_reports,
                               "by_organism": outcome}
    return section
