"""Conversations in, text out: the sampler behind the chat template and the tokenizer.

Organisms are addressed by name here; `organisms` maps each name to its slot in the stacked adapter
(the base model itself is the reserved name "base", slot -1).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

from ia_jax.sampling.sampler import Sampler, SamplingParams
from ia_jax.tokenization import render_chat

BASE = "base"


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (a stop token ended it) or "length"
    prompt_tokens: int
    completion_tokens: int


class ChatSampler:
    def __init__(self, sampler: Sampler, tokenizer: PreTrainedTokenizerBase, organisms: Mapping[str, int] = (),
                 **template_kwargs):
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.organisms = {BASE: -1, **dict(organisms)}
        self.template_kwargs = template_kwargs
        self._stops = set(sampler.stop_ids.tolist())

    def slot(self, organism: str) -> int:
        if organism not in self.organisms:
            raise KeyError(f"unknown organism {organism!r}; known: {sorted(self.organisms)}")
        return self.organisms[organism]

    def prompt_ids(self, conversation: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of a conversation ending in the generation prompt; raises if it cannot be sampled."""
        ids = render_chat(self.tokenizer, conversation, add_generation_prompt=True, **self.template_kwargs).ids
        if len(ids) > self.sampler.prompt_buckets[-1]:
            raise ValueError(f"the prompt has {len(ids)} tokens, more than the longest allowed "
                             f"({self.sampler.prompt_buckets[-1]})")
        return ids.tolist()

    def complete(self, conversations: Sequence[Sequence[Mapping[str, str]]],
                 params: SamplingParams | Sequence[SamplingParams] = SamplingParams(), *,
                 organisms: Sequence[str] | None = None, use_ia: Sequence[bool] | bool = False) -> list[Completion]:
        return self.complete_prompts([self.prompt_ids(c) for c in conversations], params, organisms=organisms,
                                     use_ia=use_ia)

    def complete_prompts(self, prompts: Sequence[Sequence[int]],
                         params: SamplingParams | Sequence[SamplingParams] = SamplingParams(), *,
                         organisms: Sequence[str] | None = None,
                         use_ia: Sequence[bool] | bool = False) -> list[Completion]:
        slots = None if organisms is None else [self.slot(name) for name in organisms]
        if slots is not None and self.sampler.organisms is None:
            slots = None if all(s == -1 for s in slots) else slots
        outputs = self.sampler.generate(prompts, params, organism_ids=slots, use_ia=use_ia)
        completions = []
        for prompt, tokens in zip(prompts, outputs):
            stopped = bool(tokens) and tokens[-1] in self._stops
            text = self.tokenizer.decode(tokens[:-1] if stopped else tokens, skip_special_tokens=True)
            completions.append(Completion(text.strip(), "stop" if stopped else "length", len(prompt), len(tokens)))
        return completions
