"""What every training stage (organisms, IA SFT, IA DPO) is configured by, and how it becomes a run.

The knobs are those of published recipes (learning rate, warmup, weight decay, epochs, effective batch
= `batch_size * micro_batches`); a stage adds its own (its LoRA, DPO's beta). `plan_run` turns a list
of examples into the batcher, the step count and the optimizer, the same way for every stage.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import optax

from ia_jax.data.batching import Batcher
from ia_jax.models.decoder import check_remat
from ia_jax.training.optimizer import OptimizerConfig, make_optimizer


@dataclasses.dataclass(frozen=True)
class Recipe:
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 8
    micro_batches: int = 1
    buckets: tuple[int, ...] = (64, 128, 256, 512)
    checkpoint_every: int = 50
    seed: int = 0
    # What each layer keeps for the backward pass (ia_jax/models/decoder.py REMAT_POLICIES): "projections"
    # is the fastest measured; "full" (recompute each layer) is what thousands of tokens on 70B layers need.
    remat: str = "projections"

    def __post_init__(self):
        check_remat(self.remat, f"{type(self).__name__}.remat")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise ValueError(f"{type(self).__name__}.checkpoint_every={self.checkpoint_every!r}: need an integer "
                             ">= 1 (steps between checkpoints; larger than the stage saves only its last step)")


def plan_run(examples: Sequence[dict], recipe: Recipe) -> tuple[Batcher, int, optax.GradientTransformation,
                                                                optax.Schedule]:
    """(batcher, steps for one pass over `examples`, optimizer, schedule). Repeat examples for epochs
    before calling; each process feeds its own rows of the global batch."""
    batcher = Batcher(list(examples), batch_size=recipe.batch_size, micro_batches=recipe.micro_batches,
                      buckets=recipe.buckets, seed=recipe.seed, process_index=jax.process_index(),
                      process_count=jax.process_count())
    # Bucketed batches leave padding rows, so a pass may take a few more steps than examples / batch.
    steps = max(math.ceil(len(examples) / (recipe.batch_size * recipe.micro_batches)), batcher.batches_per_epoch())
    optimizer, schedule = make_optimizer(OptimizerConfig(
        learning_rate=recipe.learning_rate, warmup_steps=min(recipe.warmup_steps, steps - 1), total_steps=steps,
        weight_decay=recipe.weight_decay))
    return batcher, steps, optimizer, schedule
