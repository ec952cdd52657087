"""Many organisms trained in one job, over one copy of the base weights.

Each organism is a slot of one stacked LoRA adapter; every example is routed to its organism's slot,
so a batch mixes organisms and the base is loaded once however many organisms there are (the
published run trained 682). Each organism keeps its own example count and number of epochs: its
examples are repeated that many times in the job's single pass, shuffled together with the others.
Slots absent from a batch keep their weights and optimizer moments, so an organism's training does
not depend on which others share the job. Per-organism losses are logged for curves.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ia_jax.lora.adapter import LoraAdapter, LoraConfig, init_adapter
from ia_jax.parallel import multihost
from ia_jax.parallel.sharding import make_mesh
from ia_jax.training import losses
from ia_jax.training import train_step as ts
from ia_jax.training.loop import examples_digest, run_stage
from ia_jax.training.recipe import Recipe, plan_run


@dataclasses.dataclass(frozen=True)
class OrganismRecipe(Recipe):
    """The knobs of published organism recipes; `epochs` is the default an organism may override.

    `shared_init`: every organism's `lora_a` starts from one draw, as organisms trained one at a time by
    the same script with a fixed seed do; organisms then differ only by what their data taught them,
    not by a random signature an IA could look up."""

    lora: LoraConfig = LoraConfig(rank=16, alpha=32.0, dropout=0.05)
    shared_init: bool = False


@dataclasses.dataclass(frozen=True)
class OrganismData:
    name: str
    examples: Sequence[dict]  # {"tokens", "loss_mask"}: tokenized chats without the teacher's system prompt
    epochs: int | None = None


def per_organism_objective(num_organisms: int) -> ts.Objective:
    """SFT, plus each organism's summed loss and token count (ratios give per-organism curves)."""

    def objective(forward, batch):
        ids = batch["organism_ids"]
        logits, targets, weights = ts.scored_logits(forward, batch)
        loss_sum, count, sums = losses.target_sums(logits, targets, weights)
        nll_b = -losses.target_log_probs(logits, targets, weights)
        slots = jnp.where(ids >= 0, ids, num_organisms)  # padding rows go to a spill slot, then dropped
        sums["organism_nll"] = jax.ops.segment_sum(nll_b, slots, num_organisms + 1)[:num_organisms]
        sums["organism_tokens"] = jax.ops.segment_sum(jnp.sum(weights, -1), slots, num_organisms + 1)[:num_organisms]
        return loss_sum, count, sums

    return objective


def init_organisms(model_config, recipe: OrganismRecipe, num: int) -> LoraAdapter:
    """`num` stacked fresh adapters: independent draws, or with `recipe.shared_init` one draw in every slot."""
    key = jax.random.key(recipe.seed)
    if not recipe.shared_init:
        return init_adapter(model_config, recipe.lora, key, num_slots=num)
    one = init_adapter(model_config, recipe.lora, key)
    weights = {target: {name: jnp.broadcast_to(w[:, None], (w.shape[0], num, *w.shape[1:]))
                        for name, w in pair.items()} for target, pair in one.weights.items()}
    return LoraAdapter(weights=weights, config=recipe.lora, num_slots=num)


def _job_examples(organisms: Sequence[OrganismData], recipe: OrganismRecipe) -> list[dict]:
    examples = []
    for slot, organism in enumerate(organisms):
        if not organism.examples:
            raise ValueError(f"organism {organism.name!r} has no training examples")
        for _ in range(organism.epochs or recipe.epochs):
            examples.extend({"tokens": np.asarray(e["tokens"], np.int32),
                             "loss_mask": np.asarray(e["loss_mask"], np.int32), "organism_id": slot}
                            for e in organism.examples)
    return examples


def train_organisms(graphdef, base_state, organisms: Sequence[OrganismData], recipe: OrganismRecipe, workdir: str,
                    *, mesh=None, log_every: int = 5) -> tuple[LoraAdapter, list[dict]]:
    """Trains every organism in one job; returns the stacked adapter and the logged metrics.

    Re-running with the same arguments resumes from `workdir/checkpoints`. Per-organism losses of each
    logged step go to `workdir/organism_losses.jsonl` (one line per step: {step, loss: {name: value}}).
    """
    names = [o.name for o in organisms]
    if len(set(names)) != len(names):
        raise ValueError(f"organism names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    model_config = nnx.merge(graphdef, base_state).config
    num = len(organisms)
    examples = _job_examples(organisms, recipe)
    batcher, steps, optimizer, schedule = plan_run(examples, recipe)
    adapter = init_organisms(model_config, recipe, num)
    composition = ts.Composition(graphdef, (ts.AdapterSlot(recipe.lora, num),), trainable=0, remat=recipe.remat)
    weights = {"base": nnx.to_pure_dict(base_state), "adapters": [adapter.weights]}
    trainer = ts.Trainer(composition, per_organism_objective(num), optimizer, mesh or make_mesh(data=-1, fsdp=1),
                         base_state=base_state, weights=weights, schedule=schedule)
    fingerprint = {"organisms": names, "examples": [len(o.examples) for o in organisms],
                   "epochs": [o.epochs or recipe.epochs for o in organisms], "model": dataclasses.asdict(model_config),
                   "examples_sha256": examples_digest(examples)}
    curves_path = os.path.join(workdir, "organism_losses.jsonl")

    def log_organisms(step, metrics):
        nll, tokens = np.asarray(metrics["organism_nll"]), np.asarray(metrics["organism_tokens"])
        seen = {names[i]: float(nll[i] / tokens[i]) for i in range(num) if tokens[i] > 0}
        with open(curves_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "loss": seen}) + "\n")

    state, history = run_stage(trainer, weights, batcher, steps=steps, recipe=recipe, workdir=workdir,
                               fingerprint=fingerprint, description="organisms", log_every=log_every,
                               on_metrics=log_organisms)
    return LoraAdapter(weights=multihost.fetch(state.params), config=recipe.lora, num_slots=num), history
