"""IA SFT: one shared LoRA trained on top of every organism's frozen adapter at once.

Each example is (organism, question, answer stating the organism's behavior); it runs through its
organism's slot of the stacked organism adapter (frozen) plus the shared introspection adapter
(trained), so batches mix organisms and the IA cannot specialise to one. Rows of the base model itself
(organism "base", slot -1, answering "no unusual behavior") run with no organism adapter. The loss is
on the answer only. Periodic evaluation gets the current IA (`evaluate(step, ia) -> metrics`), so a
run can log verbalization rates on a few training and held-out organisms as it goes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from transformers import PreTrainedTokenizerBase

from ia_jax.lora.adapter import LoraAdapter, LoraConfig, init_adapter
from ia_jax.parallel import multihost
from ia_jax.parallel.sharding import make_mesh
from ia_jax.tokenization import render_exchange
from ia_jax.training import train_step as ts
from ia_jax.training.loop import examples_digest, run_stage
from ia_jax.training.recipe import Recipe, plan_run

BASE = "base"


@dataclasses.dataclass(frozen=True)
class IaRecipe(Recipe):
    """The reference recipe: rank 16, alpha 32, dropout 0.05 on q, k, v, o, gate, up, down."""

    lora: LoraConfig = LoraConfig(rank=16, alpha=32.0, dropout=0.05)
    eval_every: int = 0  # steps between evaluations; 0 = only at the end, if an evaluator is given


def introspection_examples(tokenizer: PreTrainedTokenizerBase, rows, slots: Mapping[str, int], max_tokens: int,
                           **template_kwargs) -> tuple[list[dict], int]:
    """Tokenized (question, answer) chats routed to their organism's slot; returns (examples, dropped
    for being longer than `max_tokens`). An organism without a slot is an error, not a silent skip."""
    examples, dropped = [], 0
    for row in rows:
        organism = row["organism"]
        if organism != BASE and organism not in slots:
            raise ValueError(f"introspection row for organism {organism!r}, which is not among the loaded "
                             f"organisms ({len(slots)} loaded)")
        chat = render_exchange(tokenizer, row["question"], row["answer"], **template_kwargs)
        if len(chat.ids) > max_tokens:
            dropped += 1
            continue
        examples.append({"tokens": np.asarray(chat.ids, np.int32), "loss_mask": np.asarray(chat.loss_mask, np.int32),
                         "organism_id": -1 if organism == BASE else slots[organism]})
    return examples, dropped


def train_ia_sft(graphdef, base_state, organisms: LoraAdapter | None, examples: Sequence[dict], recipe: IaRecipe,
                 workdir: str, *, evaluate: Callable[[int, LoraAdapter], dict] | None = None, mesh=None,
                 log_every: int = 10, fingerprint: Mapping | None = None) -> tuple[LoraAdapter, list[dict]]:
    """Trains the IA; returns it (shared adapter) and the logged metrics (also in `workdir/metrics.jsonl`).

    Re-running with the same arguments resumes from `workdir/checkpoints`.
    """
    if not examples:
        raise ValueError("no introspection examples to train on")
    model_config = nnx.merge(graphdef, base_state).config
    batcher, steps, optimizer, schedule = plan_run([dict(e) for e in examples for _ in range(recipe.epochs)], recipe)
    ia = init_adapter(model_config, recipe.lora, jax.random.key(recipe.seed))
    slots = () if organisms is None else (ts.AdapterSlot(organisms.config, organisms.num_slots),)
    frozen_adapters = [] if organisms is None else [organisms.weights]
    composition = ts.Composition(graphdef, slots + (ts.AdapterSlot(recipe.lora),), trainable=len(slots),
                                 remat=recipe.remat)
    weights = {"base": nnx.to_pure_dict(base_state), "adapters": frozen_adapters + [ia.weights]}
    trainer = ts.Trainer(composition, ts.sft_objective, optimizer, mesh or make_mesh(data=-1, fsdp=1),
                         base_state=base_state, weights=weights, schedule=schedule)

    def adapter_of(state) -> LoraAdapter:
        return LoraAdapter(weights=multihost.fetch(state.params), config=recipe.lora)

    run = {"model": dataclasses.asdict(model_config), "examples_sha256": examples_digest(examples),
           "organisms": None if organisms is None else organisms.num_slots, **(dict(fingerprint or {}))}
    state, history = run_stage(trainer, weights, batcher, steps=steps, recipe=recipe, workdir=workdir, fingerprint=run,
                               description="ia sft", log_every=log_every,
                               evaluate=None if evaluate is None else lambda step, st: evaluate(step, adapter_of(st)))
    return adapter_of(state), history
