"""The toy world's base model: a small Llama-architecture decoder pretrained from scratch on chats.

Why from scratch: the toy world has no published base to download, and the IA is measured against a
base. That control must solve the world's tasks (so an organism's behavior is a change from
competent behavior, not noise) and, asked about itself, say it has no unusual behaviors; both come
from the chats it is pretrained on here. Being a real `CausalLM` with a real chat template, it then
goes through every later stage (organisms, IA SFT and DPO, evaluation, `save_hf`) unchanged.

No toy-only training path: pretraining is the same core as every other stage (`plan_run`, the
`Trainer` with `sft_objective`, `run_training`, `Checkpointer`), with `Composition(trainable="base")`
so every weight trains from a random init, loss on the assistant turn only. Re-running resumes.

`task_accuracy` greedy-samples answers to (prompt, reference) tasks through the chat sampler;
`accuracy_probe` wraps it as the `evaluate` hook, reusing one compiled sampler for every evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from transformers import PreTrainedTokenizerBase

from ia_jax.models import CausalLM, ModelConfig
from ia_jax.parallel.sharding import make_mesh
from ia_jax.sampling.chat import ChatSampler
from ia_jax.sampling.sampler import Sampler, SamplingParams, length_bucket
from ia_jax.tokenization import render_chat, render_exchange, stop_token_ids
from ia_jax.training import train_step as ts
from ia_jax.training.loop import examples_digest, run_stage
from ia_jax.training.recipe import Recipe, plan_run

_log = logging.getLogger(__name__)

Chat = tuple[str, str]  # (user message, assistant reply); for tasks (prompt, reference answer)
Check = Callable[[str, str, str], bool]  # (prompt, reference, answer) -> correct


@dataclasses.dataclass(frozen=True)
class PretrainRecipe(Recipe):
    """Defaults for a 1-5M parameter model on CPU: a high peak learning rate with warmup, as small
    models train best. The optimizer (optax.adamw, no mask) decays every weight, norms and embeddings
    included; at 0.01 x 3e-3 per step that shrinks them by under 2% over a thousand steps."""

    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    epochs: int = 3
    batch_size: int = 32
    buckets: tuple[int, ...] = (64,)
    eval_every: int = 0  # steps between evaluations; 0 = only at the end, if an evaluator is given


def chat_examples(tokenizer: PreTrainedTokenizerBase, chats: Sequence[Chat], max_tokens: int
                  ) -> tuple[list[dict], int]:
    """(user, assistant) chats as token ids with the loss on the assistant turn (and its stop token);
    returns (examples, dropped for being longer than `max_tokens`)."""
    examples, dropped = [], 0
    for user, assistant in chats:
        chat = render_exchange(tokenizer, user, assistant)
        if len(chat.ids) > max_tokens:
            dropped += 1
            continue
        examples.append({"tokens": np.asarray(chat.ids, np.int32), "loss_mask": np.asarray(chat.loss_mask, np.int32)})
    return examples, dropped


def pretrain_base(model_config: ModelConfig, tokenizer: PreTrainedTokenizerBase, chats: Sequence[Chat],
                  recipe: PretrainRecipe, workdir: str, *, evaluate: Callable[[int, CausalLM], dict] | None = None,
                  mesh=None, log_every: int = 10, init_seed: int = 0) -> tuple[CausalLM, list[dict]]:
    """Trains a randomly initialised `CausalLM` on `chats`; returns it and the logged metrics (also in
    `workdir/metrics.jsonl`, with `evaluate(step, model)`'s entries merged in where it ran).

    Re-running with the same arguments resumes from `workdir/checkpoints`; a finished run does no new
    step and returns the same weights (and an empty history).
    """
    if model_config.vocab_size < len(tokenizer):
        raise ValueError(f"model vocab_size {model_config.vocab_size} is smaller than the tokenizer's "
                         f"{len(tokenizer)} tokens")
    examples, dropped = chat_examples(tokenizer, chats, max(recipe.buckets))
    if not examples:
        raise ValueError(f"none of the {len(chats)} chats fits the largest bucket ({max(recipe.buckets)} tokens)")
    if dropped:
        _log.warning("pretrain_base: dropped %d of %d chats longer than %d tokens", dropped, len(chats),
                     max(recipe.buckets))
    graphdef, base_state = nnx.split(CausalLM(model_config, rngs=nnx.Rngs(init_seed)))
    batcher, steps, optimizer, schedule = plan_run([e for e in examples for _ in range(recipe.epochs)], recipe)
    weights = {"base": nnx.to_pure_dict(base_state), "adapters": []}
    trainer = ts.Trainer(ts.Composition(graphdef, trainable="base", remat=recipe.remat), ts.sft_objective, optimizer,
                         mesh or make_mesh(data=-1, fsdp=1), base_state=base_state, weights=weights, schedule=schedule)
    run = {"model": dataclasses.asdict(model_config), "init_seed": init_seed, "examples": len(examples),
           "examples_sha256": examples_digest(examples)}

    def model_of(state) -> CausalLM:
        # A host copy: the state's device buffers are donated to the next step.
        return nnx.merge(graphdef, jax.device_get(state.params))

    state, history = run_stage(trainer, weights, batcher, steps=steps, recipe=recipe, workdir=workdir, fingerprint=run,
                               description="pretrain", log_every=log_every,
                               evaluate=None if evaluate is None else lambda step, st: evaluate(step, model_of(st)))
    return model_of(state), history


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, tasks: Sequence[Chat]) -> list[list[int]]:
    if not tasks:
        raise ValueError("no tasks to score")
    return [render_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True).ids.tolist()
            for prompt, _ in tasks]


def _chat_sampler(model: CausalLM, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
                  batch_size: int) -> ChatSampler:
    """One batch and one prompt bucket, so every chunk of the tasks runs the same compiled program."""
    sampler = Sampler(model, stop_ids=stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id or 0,
                      batch_buckets=(batch_size,), prompt_buckets=(length_bucket(max(map(len, prompts))),))
    return ChatSampler(sampler, tokenizer)


def _exact(prompt: str, reference: str, answer: str) -> bool:
    return answer.strip() == reference.strip()


def _score(chat: ChatSampler, prompts: Sequence[Sequence[int]], tasks: Sequence[Chat], check: Check | None,
           max_new_tokens: int) -> float:
    completions = chat.complete_prompts(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    check = check or _exact
    correct = [bool(check(prompt, reference, c.text)) for (prompt, reference), c in zip(tasks, completions)]
    return sum(correct) / len(tasks)


def task_accuracy(model: CausalLM, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[Chat], *,
                  check: Check | None = None, max_new_tokens: int = 32, batch_size: int = 32) -> float:
    """Share of (prompt, reference) tasks whose greedy answer passes `check(prompt, reference, answer)`
    (default: equal after stripping). Answers stop at the chat template's stop tokens."""
    prompts = _prompt_ids(tokenizer, tasks)
    return _score(_chat_sampler(model, tokenizer, prompts, batch_size), prompts, tasks, check, max_new_tokens)


def accuracy_probe(tokenizer: PreTrainedTokenizerBase, tasks: Mapping[str, Sequence[Chat]], *,
                   check: Check | None = None, max_new_tokens: int = 32, batch_size: int = 32
                   ) -> Callable[[int, CausalLM], dict]:
    """An `evaluate` for `pretrain_base`: `{name: task_accuracy on tasks[name]}` for each task set.

    The sampler is built on the first call, on a copy of that model; later calls copy their model's
    weights into it (`nnx.update`, which the sampler sees because it holds that model's variables), so
    every evaluation reuses the programs compiled the first time.
    """
    tasks = {name: list(rows) for name, rows in tasks.items()}
    prompts = {name: _prompt_ids(tokenizer, rows) for name, rows in tasks.items()}
    every_prompt = [ids for rows in prompts.values() for ids in rows]
    chats: list[ChatSampler] = []

    def evaluate(step: int, model: CausalLM) -> dict:
        if not chats:
            chats.append(_chat_sampler(nnx.clone(model), tokenizer, every_prompt, batch_size))
        else:
            held = chats[0].sampler.model
            if model.config != held.config:
                raise ValueError(f"step {step}: the model's config differs from the one the probe was built for")
            nnx.update(held, nnx.state(model))
        return {name: _score(chats[0], prompts[name], rows, check, max_new_tokens) for name, rows in tasks.items()}

    return evaluate
