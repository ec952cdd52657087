"""Reference log-probs for DPO, computed once before training and stored with each pair.

The reference is the policy at the start of DPO (the SFT IA on its organism), so its scores never
change during training: computing them once saves a second forward of the reference every step. They
are computed with the DPO trainer's own weight shardings and batch layout, so at step 0 the policy's
log-probs equal the stored ones, and on several processes each scores its own rows of every batch.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np

from ia_jax.data.batching import Batcher
from ia_jax.parallel import multihost
from ia_jax.training.train_step import Trainer, policy_log_probs


def attach_reference_log_probs(pairs: Sequence[Mapping], trainer: Trainer, weights: dict, *,
                               batch_size: int, buckets: Sequence[int]) -> list[dict]:
    """Copies of `pairs` with `reference_chosen` / `reference_rejected` (summed completion log-probs
    of `trainer`'s composition with `weights`), the same on every process."""
    indexed = [{**{k: v for k, v in p.items() if not k.startswith("reference_")}, "pair_index": i}
               for i, p in enumerate(pairs)]
    batcher = Batcher(indexed, batch_size=batch_size, buckets=buckets, shuffle=False,
                      process_index=jax.process_index(), process_count=jax.process_count())
    composition = trainer.composition

    @jax.jit
    def score(weights, batch):
        batch = jax.tree.map(lambda x: x[0], batch)  # one micro-batch
        index = batch.pop("pair_index")
        logp_chosen, logp_rejected = policy_log_probs(
            lambda t, a, ids, positions=None: composition.forward(weights, t, a, ids, logit_positions_bl=positions),
            batch)
        return logp_chosen, logp_rejected, index

    weights = trainer.place_weights(weights)  # once, not with every batch
    chosen = np.zeros(len(pairs), np.float32)
    rejected = np.zeros(len(pairs), np.float32)
    for _ in range(batcher.batches_per_epoch()):
        logp_chosen, logp_rejected, index = multihost.fetch(score(weights, trainer.put_batch(next(batcher))))
        real = index >= 0
        chosen[index[real]] = logp_chosen[real]
        rejected[index[real]] = logp_rejected[real]
    return [{**p, "reference_chosen": float(c), "reference_rejected": float(r)}
            for p, c, r in zip(pairs, chosen, rejected)]
