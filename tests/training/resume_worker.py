"""A small IA training run for the kill-and-resume tests:
`resume_worker.py WORKDIR STEPS [KILL_AT_STEP [SIGNAL]]`.

It trains a shared adapter (with LoRA dropout, so the per-step randomness must resume too) on top of
frozen organisms from padded batches of mixed lengths, checkpointing every 3 steps. With KILL_AT_STEP it
sends itself SIGNAL (default KILL) right after that step: SIGKILL as a crash would, SIGTERM as a TPU
maintenance event or spot reclaim does (then it must save and exit with the preemption code, as the
entry points do). At the end it writes the trained adapter to WORKDIR/final.npz.
"""

import os
import signal
import sys

import jax
import numpy as np
from flax import nnx

from ia_jax import lora, models
from ia_jax.data.batching import Batcher
from ia_jax.parallel.sharding import make_mesh
from ia_jax.training import preemption
from ia_jax.training import train_step as ts
from ia_jax.training.checkpoints import Checkpointer
from ia_jax.training.loop import run_training
from ia_jax.training.optimizer import OptimizerConfig, make_optimizer

CONFIG = models.ModelConfig(model_type="llama", vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8)
ORGANISMS = lora.LoraConfig(rank=2, alpha=4.0, dropout=0.0)
IA = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.1)


def examples(n=40, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(6, 20))
        mask = np.zeros(length, np.int32)
        mask[length // 2:] = 1
        out.append({"tokens": rng.integers(0, CONFIG.vocab_size, length).astype(np.int32), "loss_mask": mask,
                    "organism_id": int(rng.integers(0, 3))})
    return out


def main(workdir, steps, kill_at_step=None, signal_name="KILL"):
    preemption.install()
    model = models.CausalLM(CONFIG, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(1)
    organisms = jax.tree.map(lambda x: 0.1 * rng.standard_normal(x.shape, np.float32),
                             lora.init_adapter(CONFIG, ORGANISMS, jax.random.key(0), num_slots=3).weights)
    ia = lora.init_adapter(CONFIG, IA, jax.random.key(1)).weights
    weights = {"base": nnx.to_pure_dict(state), "adapters": [organisms, ia]}
    composition = ts.Composition(graphdef, (ts.AdapterSlot(ORGANISMS, 3), ts.AdapterSlot(IA)), trainable=1)
    optimizer_config = OptimizerConfig(learning_rate=3e-3, warmup_steps=2, total_steps=steps, weight_decay=0.01)
    optimizer, schedule = make_optimizer(optimizer_config)
    trainer = ts.Trainer(composition, ts.sft_objective, optimizer, make_mesh(1, 1, 1, devices=jax.devices()[:1]),
                         base_state=state, weights=weights, schedule=schedule)
    batcher = Batcher(examples(), batch_size=4, buckets=(24,), seed=0)
    fingerprint = {"model": CONFIG.__dict__, "ia": IA.__dict__, "optimizer": optimizer_config.__dict__,
                   "batch_size": 4}
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), fingerprint=fingerprint, save_every=3, keep=2)

    def maybe_die(step, _):
        if step == kill_at_step:
            os.kill(os.getpid(), getattr(signal, f"SIG{signal_name}"))

    try:
        final, _ = run_training(trainer, weights, batcher, steps=steps, rng=jax.random.key(42),
                                checkpointer=checkpointer, log_every=1, on_metrics=maybe_die)
    except preemption.Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(preemption.PREEMPTED_EXIT_CODE)
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(final.params))[0]
    np.savez(os.path.join(workdir, "final.npz"), **{jax.tree_util.keystr(p): v for p, v in flat})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None, *sys.argv[4:5])
