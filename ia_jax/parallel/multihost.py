"""What the processes of a multi-host job need besides jit: reading global arrays, sharing what only
one of them computes, and waiting for each other.

On several processes (a pod's hosts) every array of the mesh is global: each process holds only the
shards on its own devices. Weights sharded over an `fsdp` axis that crosses hosts, and whatever the
compiler leaves sharded that way (a sampler's output, a judge's probabilities), cannot be read with
`jax.device_get` or `np.asarray`; `fetch` gathers them so that every process gets the whole value.
Every process runs the same program, so each reaches every `fetch`, `share_from_first` and `barrier`
(collectives all) in the same order. On one process each is the plain single-process operation.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


def _fetch_one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return multihost_utils.process_allgather(x, tiled=True)  # every shard, to every process
    return jax.device_get(x)


def fetch(tree):
    """Numpy values of every leaf of `tree`, whole, on every process (gathered across processes where
    shards live on other hosts' devices)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return jax.tree.map(_fetch_one, tree)


def share_from_first(value: Any) -> Any:
    """`value` (anything `json` writes) as process 0 has it, on every process: for what only process 0
    should compute, such as requests to a remote judge. Other processes' `value` is ignored."""
    if jax.process_count() == 1:
        return value
    data = np.frombuffer(json.dumps(value).encode(), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    buffer = np.zeros(size, np.uint8)
    buffer[:data.size] = data
    return json.loads(multihost_utils.broadcast_one_to_all(buffer).tobytes())


def barrier(name: str) -> None:
    """Returns once every process has reached `barrier(name)`; nothing to wait for on one process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
