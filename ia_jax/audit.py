"""Audit any model with an IA: ask it about itself many times and summarize what it says.

    python -m ia_jax.audit --model=HF_DIR [--adapter=PEFT_OR_CHECKPOINT_DIR] --ia=IA_PEFT_DIR \
        [--questions=direct] [--samples=20] [--out=./audit] [--no_ia]

`--model` is the base (or a full fine-tuned checkpoint, audited as it is); `--adapter` is an organism
on top of it (a PEFT directory, or a full fine-tuned checkpoint of `--model`, imported as a LoRA).
Every self-report is written to `OUT/self_reports_{ia,no_ia}.jsonl` as it is sampled (a re-run resumes),
and the summarized top-k predictions are printed and written to `OUT/top_{ia,no_ia}.json`. `--no_ia`
asks the same questions without the IA: the baseline a reader compares against.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

from absl import app, flags

from ia_jax import model_flags
from ia_jax.evaluation.questions import load_questions
from ia_jax.evaluation.respondent import sampler_respondent
from ia_jax.evaluation.scaffold import summarize
from ia_jax.evaluation.self_reports import SelfReport, collect_self_reports
from ia_jax.organisms.sources import load_chat_sampler
from ia_jax.sampling.chat import BASE
from ia_jax.sampling.sampler import SamplingParams

ORGANISM = "organism"
DEFAULT_OUT = "./audit"


def audit(model_dir: str, *, adapter: str | None, ia: str | None, use_ia: bool, questions: Sequence[str],
          samples: int, params: SamplingParams, out_dir: str, top_k: int = 5, batch_size: int = 32,
          dtype: str | None = None, template_kwargs: dict | None = None, full_rank: int = 64,
          progress: bool = True) -> tuple[list[SelfReport], list[str]]:
    """The self-reports (one per question and sample) and the top-k summary of them."""
    if use_ia and not ia:
        raise ValueError("--ia is required (or pass --no_ia for the baseline without it)")
    chat = load_chat_sampler(model_dir, {ORGANISM: adapter} if adapter else {}, ia if use_ia else None,
                             max_batch=batch_size, dtype=dtype, full_rank=full_rank, template_kwargs=template_kwargs)
    condition = "ia" if use_ia else "no_ia"
    os.makedirs(out_dir, exist_ok=True)
    fingerprint = {"model": os.path.abspath(model_dir), "adapter": adapter and os.path.abspath(adapter),
                   "ia": ia and use_ia and os.path.abspath(ia), "sampling": dataclasses.asdict(params),
                   "dtype": dtype, "template_kwargs": template_kwargs or {}}
    reports = collect_self_reports(sampler_respondent(chat, params), [ORGANISM if adapter else BASE], questions,
                                   samples, [use_ia], os.path.join(out_dir, f"self_reports_{condition}.jsonl"),
                                   batch_size=batch_size, progress=progress, fingerprint=fingerprint)
    top = summarize([r.answer for r in reports], k=top_k)
    with open(os.path.join(out_dir, f"top_{condition}.json"), "w", encoding="utf-8") as f:
        json.dump({"condition": condition, "top": top, "reports": len(reports), **fingerprint}, f, indent=2)
    return reports, top


_NO_IA = flags.DEFINE_bool("no_ia", False, "Ask without the IA (the baseline).")
_QUESTIONS = flags.DEFINE_string("questions", "direct", "direct, investigation, all, or a .txt/.json file.")
_SAMPLES = flags.DEFINE_integer("samples", 20, "Times each question is asked.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Predictions in the summary.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0 = greedy).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "Longest self-report in tokens.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (sample k of a question always gets the same seed).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Self-reports sampled together.")


def main(argv):
    del argv
    if not model_flags.MODEL.value:
        raise app.UsageError("--model is required")
    params = SamplingParams(max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                            seed=_SEED.value)
    try:
        _, top = audit(model_flags.MODEL.value, adapter=model_flags.ADAPTER.value, ia=model_flags.IA.value,
                       use_ia=not _NO_IA.value, questions=load_questions(_QUESTIONS.value), samples=_SAMPLES.value,
                       params=params, out_dir=model_flags.OUT.value or DEFAULT_OUT, top_k=_TOP_K.value,
                       batch_size=_BATCH.value,
                       dtype=model_flags.DTYPE.value, template_kwargs=model_flags.template_kwargs(),
                       full_rank=model_flags.FULL_RANK.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    print(f"top {len(top)} predictions ({'without' if _NO_IA.value else 'with'} the IA):")
    for rank, prediction in enumerate(top, 1):
        print(f"  {rank}. {prediction}")


if __name__ == "__main__":
    app.run(main)
