"""Reference log-probs for DPO, computed once before training and stored with each pair.

The reference is the policy at the start of DPO (the SFT IA on its organism), so its scores never
change during training: computing them once saves a second forward of the reference every step.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np

from ia_jax.data.batching import Batcher
from ia_jax.training.train_step import Composition, policy_log_probs


def attach_reference_log_probs(pairs: Sequence[Mapping], composition: Composition, weights: dict, *,
                               batch_size: int, buckets: Sequence[int]) -> list[dict]:
    """Copies of `pairs` with `reference_chosen` / `reference_rejected` (summed completion log-probs)."""
    indexed = [{**{k: v for k, v in p.items() if not k.startswith("reference_")}, "pair_index": i}
               for i, p in enumerate(pairs)]
    batcher = Batcher(indexed, batch_size=batch_size, buckets=buckets, shuffle=False)

    @jax.jit
    def score(weights, batch):
        return policy_log_probs(lambda t, a, ids: composition.forward(weights, t, a, ids), batch)

    weights = jax.device_put(weights)  # once, not with every batch
    chosen = np.zeros(len(pairs), np.float32)
    rejected = np.zeros(len(pairs), np.float32)
    for _ in range(batcher.batches_per_epoch()):
        batch = jax.tree.map(lambda x: x[0], next(batcher))
        index = batch.pop("pair_index")
        logp_chosen, logp_rejected = jax.device_get(score(weights, batch))
        real = index >= 0
        chosen[index[real]] = logp_chosen[real]
        rejected[index[real]] = logp_rejected[real]
    return [{**p, "reference_chosen": float(c), "reference_rejected": float(r)}
            for p, c, r in zip(pairs, chosen, rejected)]
