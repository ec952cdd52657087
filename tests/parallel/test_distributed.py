"""Two processes with jax.distributed on loopback reach the same loss and gradients as one process."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax

from ia_jax.parallel.sharding import make_mesh

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)  # step_case is shared with the worker processes
from step_case import build_case, global_batch  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    out = str(tmp_path / "two_process.npz")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    workers = [subprocess.Popen([sys.executable, os.path.join(HERE, "distributed_worker.py"), str(port), str(i), out],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    logs = []
    for worker in workers:
        try:
            logs.append(worker.communicate(timeout=240)[0])
        finally:
            worker.kill()
    assert all(w.returncode == 0 for w in workers), "\n".join(logs)[-4000:]

    trainer, weights = build_case(optax.sgd(1.0), make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    state, frozen = trainer.place(weights)
    state, metrics = trainer.step(state, frozen, trainer.put_batch(global_batch()), jax.random.key(0))
    grads = jax.tree.map(lambda b, a: np.asarray(b) - np.asarray(a), weights["adapters"][1],
                         jax.device_get(state.params))
    result = np.load(out)
    np.testing.assert_allclose(result["loss"], float(metrics["loss"]), rtol=1e-5)
    flat = {jax.tree_util.keystr(p): g for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    scale = max(np.abs(g).max() for g in flat.values())
    assert scale > 1e-4 and set(flat) == set(result.files) - {"loss"}
    for key, g in flat.items():
        np.testing.assert_allclose(result[key], g, atol=1e-5 * scale)
