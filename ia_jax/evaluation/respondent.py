"""Self-report requests answered by the sampler: the bridge between `collect_self_reports` and models.

Each answer's seed comes from (seed, sample index), so sample k of a question is the same answer
whether it was drawn in the first run or after a resume, in whatever batch.
"""

from __future__ import annotations

import dataclasses

from ia_jax.evaluation.self_reports import ReportRequest, Respondent
from ia_jax.sampling.chat import ChatSampler
from ia_jax.sampling.sampler import SamplingParams


def sample_seed(seed: int, sample: int) -> int:
    return (seed * 1_000_003 + sample) % 2**32


def sampler_respondent(chat: ChatSampler, params: SamplingParams) -> Respondent:
    def respond(requests: list[ReportRequest]) -> list[str]:
        completions = chat.complete(
            [[{"role": "user", "content": r.question}] for r in requests],
            [dataclasses.replace(params, seed=sample_seed(params.seed, r.sample)) for r in requests],
            organisms=[r.organism for r in requests],
            use_ia=[r.with_ia for r in requests],
        )
        return [c.text for c in completions]

    return respond
