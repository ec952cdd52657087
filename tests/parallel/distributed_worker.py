"""One process of a 2-process jax.distributed run on loopback (started by test_distributed.py).

Each process owns 2 CPU devices and half of a fixed global batch; together they take one SGD(lr=1)
step of a shared adapter on a 4-device mesh. Process 0 writes the loss and the parameter change
(minus the gradient) for comparison with a single process over the same global batch.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from ia_jax.parallel import distributed  # noqa: E402
from ia_jax.parallel.sharding import make_mesh  # noqa: E402


def main(port, process_id, out):
    distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    assert jax.process_count() == 2 and len(jax.devices()) == 4
    from step_case import build_case, global_batch

    trainer, weights = build_case(optax.sgd(1.0), make_mesh(data=2, fsdp=2, tensor=1))
    batch = global_batch()
    rows = batch["tokens"].shape[1] // 2
    local = {k: v[:, process_id * rows:(process_id + 1) * rows] for k, v in batch.items()}
    state, frozen = trainer.place(weights)
    state, metrics = trainer.step(state, frozen, trainer.put_batch(local), jax.random.key(0))
    params = multihost_utils.process_allgather(state.params, tiled=True)
    loss = float(metrics["loss"].addressable_data(0))  # replicated: every process holds it
    if process_id == 0:
        before = weights["adapters"][1]
        grads = jax.tree.map(lambda b, a: np.asarray(b) - np.asarray(a), before, params)
        flat = {jax.tree_util.keystr(p): g for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
        np.savez(out, loss=loss, **flat)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
