"""The model FLOPs MFU is computed from agree with XLA's own count of the compiled programs."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ia_jax import lora, models
from ia_jax.bench import flops
from ia_jax.training import losses

# Matmuls dominate at these sizes, so XLA's count (which also counts elementwise ops) must be close.
# One layer: XLA's cost analysis counts a scan's body once, not once per layer.
CONFIG = models.ModelConfig(model_type="qwen3", vocab_size=512, hidden_size=128, intermediate_size=512, num_layers=1,
                            num_heads=4, num_kv_heads=2, head_dim=32, qk_norm=True, tie_word_embeddings=True)
ROWS, SEQ, SCORED = 2, 64, 16
ORGANISM = lora.LoraConfig(rank=8, alpha=16.0, dropout=0.0)
IA = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.0)


def _xla_flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis["flops"])


def _setup():
    model = models.CausalLM(CONFIG, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    organisms = lora.init_adapter(CONFIG, ORGANISM, jax.random.key(1), num_slots=3)
    ia = lora.init_adapter(CONFIG, IA, jax.random.key(2))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, CONFIG.vocab_size, (ROWS, SEQ)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(SEQ - SCORED - 1, SEQ - 1), (ROWS, SCORED))
    ids = jnp.array([0, 2], jnp.int32)

    def loss(ia_weights, state, organism_weights):
        adapters = [(organisms.replace(weights=organism_weights), ids), (ia.replace(weights=ia_weights), None)]
        logits = nnx.merge(graphdef, state)(tokens, adapters=adapters, logit_positions_bl=positions)
        return losses.target_sums(logits, *losses.at_positions(tokens, positions))[0]

    return loss, (ia.weights, state, organisms.weights)


def test_forward_flops_match_xla_within_elementwise_work():
    loss, args = _setup()
    ours = flops.forward_flops(CONFIG, rows=ROWS, seq=SEQ, scored=SCORED, adapters=(ORGANISM, IA))
    np.testing.assert_allclose(ours, _xla_flops(loss, *args), rtol=0.1)


def test_lora_train_step_flops_match_xla_and_are_well_below_full_finetuning():
    loss, args = _setup()
    ours = flops.lora_train_step_flops(CONFIG, rows=ROWS, seq=SEQ, scored=SCORED, frozen=(ORGANISM,), trained=IA)
    np.testing.assert_allclose(ours, _xla_flops(jax.grad(loss), *args), rtol=0.15)
    forward = flops.forward_flops(CONFIG, rows=ROWS, seq=SEQ, scored=SCORED, adapters=(ORGANISM, IA))
    assert 2 * forward < ours < 3 * forward  # frozen weights take no weight gradients
