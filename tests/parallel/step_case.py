"""A small fixed training case shared by the distributed worker and the single-process reference."""

import jax
import numpy as np
from flax import nnx

from ia_jax import lora, models
from ia_jax.training import train_step as ts

CONFIG = models.ModelConfig(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True)
ORGANISMS = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.0)
IA = lora.LoraConfig(rank=2, alpha=4.0, dropout=0.0)


def build_case(optimizer, mesh):
    """Trainer of a shared IA on 3 frozen organisms; all weights from numpy seeds (same in every process)."""
    model = models.CausalLM(CONFIG, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(1)
    organisms = jax.tree.map(lambda x: 0.1 * rng.standard_normal(x.shape, np.float32),
                             lora.init_adapter(CONFIG, ORGANISMS, jax.random.key(0), num_slots=3).weights)
    ia = jax.tree.map(lambda x: 0.1 * rng.standard_normal(x.shape, np.float32),
                      lora.init_adapter(CONFIG, IA, jax.random.key(1)).weights)
    weights = {"base": jax.device_get(nnx.to_pure_dict(state)), "adapters": [organisms, ia]}
    composition = ts.Composition(graphdef, (ts.AdapterSlot(ORGANISMS, 3), ts.AdapterSlot(IA)), trainable=1)
    return ts.Trainer(composition, ts.sft_objective, optimizer, mesh, base_state=state, weights=weights), weights


def global_batch():
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, CONFIG.vocab_size, (1, 8, 10)).astype(np.int32)
    loss_mask = np.zeros_like(tokens)
    loss_mask[..., 4:] = 1
    return {"tokens": tokens, "attention_mask": np.ones_like(tokens), "loss_mask": loss_mask,
            "organism_ids": rng.integers(-1, 3, (1, 8)).astype(np.int32)}
