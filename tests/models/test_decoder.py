"""The decoder must reproduce transformers' logits for every supported family and shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_reference import REFERENCE_CONFIGS, VOCAB, relative_max_error, torch_logits

from ia_jax import models

# Longer than original_max_position_embeddings (8) of the llama3-scaled config, so scaled bands matter.
SEQ = 24
# bfloat16 keeps 8 mantissa bits; over a few layers the logits drift by about 1% of their range.
BF16_RELATIVE_TOLERANCE = 3e-2


def _tokens(batch=2, seq=SEQ, seed=0):
    return np.random.RandomState(seed).randint(0, VOCAB, (batch, seq)).astype(np.int32)


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_logits_match_transformers(reference_checkpoint, name):
    path, torch_model = reference_checkpoint(name)
    tokens = _tokens()
    model = models.load_hf(path)
    logits = model(tokens)
    assert logits.shape == (2, SEQ, VOCAB) and logits.dtype == jnp.float32
    assert relative_max_error(logits, torch_logits(torch_model, tokens)) < 1e-4


@pytest.mark.parametrize("name", ["llama_gqa_llama3rope", "qwen3_gqa_tied"])
def test_left_and_right_padding_match_unpadded(reference_checkpoint, name):
    path, torch_model = reference_checkpoint(name)
    model = models.load_hf(path)
    lengths = [SEQ - 7, SEQ - 2]
    rows = [_tokens(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    width = max(lengths) + 3
    right = np.zeros((2, width), np.int32)
    left = np.zeros((2, width), np.int32)
    right_mask = np.zeros((2, width), np.int32)
    left_mask = np.zeros((2, width), np.int32)
    for i, row in enumerate(rows):
        right[i, : len(row)], right_mask[i, : len(row)] = row, 1
        left[i, width - len(row):], left_mask[i, width - len(row):] = row, 1
    right_logits = np.asarray(model(right, attention_mask_bt=right_mask))
    left_logits = np.asarray(model(left, attention_mask_bt=left_mask))
    for i, row in enumerate(rows):
        expected = torch_logits(torch_model, row[None])[0]
        assert relative_max_error(right_logits[i, : len(row)], expected) < 1e-4
        assert relative_max_error(left_logits[i, width - len(row):], expected) < 1e-4


def test_explicit_positions_override_mask_positions(reference_checkpoint):
    path, torch_model = reference_checkpoint("llama_gqa_llama3rope")
    model = models.load_hf(path)
    tokens = _tokens(1)
    # RoPE only sees relative positions, so a gap (not a shift) is what must change the logits.
    gapped = np.concatenate([np.arange(SEQ // 2), np.arange(SEQ // 2) + 40]).astype(np.int32)[None]
    ours = model(tokens, positions_bt=gapped)
    import torch

    with torch.no_grad():
        expected = torch_model(torch.tensor(tokens), position_ids=torch.tensor(gapped, dtype=torch.long)).logits
    assert relative_max_error(ours, expected.numpy()) < 1e-4
    assert relative_max_error(model(tokens), expected.numpy()) > 1e-3


@pytest.mark.parametrize("name", ["llama_gqa_llama3rope", "qwen3_gqa_tied"])
def test_bfloat16_compute_within_documented_tolerance(reference_checkpoint, name):
    path, torch_model = reference_checkpoint(name)
    tokens = _tokens()
    expected = torch_logits(torch_model, tokens)
    model = models.load_hf(path, dtype="bfloat16", param_dtype="bfloat16")
    assert model.model.layers.mlp.up_proj.kernel.dtype == jnp.bfloat16
    logits = model(tokens)
    assert logits.dtype == jnp.float32
    error = relative_max_error(logits, expected)
    assert 1e-5 < error < BF16_RELATIVE_TOLERANCE  # the lower bound proves bfloat16 really ran


@pytest.mark.parametrize("policy", ["projections", "full"])
def test_rematerialised_layers_give_the_same_logits_and_gradients(reference_checkpoint, policy):
    """With a stacked and a shared adapter under dropout: recomputed layers must redraw the same
    dropout masks, or the adapters' gradients would silently come from other masks than the loss."""
    from flax import nnx

    from ia_jax import lora

    path, _ = reference_checkpoint("qwen3_gqa_tied")
    model = models.load_hf(path)
    tokens = _tokens()
    graphdef, state = nnx.split(model)
    config = model.config
    stacked_config = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.0)
    stacked = lora.init_adapter(config, stacked_config, jax.random.key(1), num_slots=2)
    stacked = jax.tree.map(lambda w: w + 0.05 * jax.random.normal(jax.random.key(2), w.shape), stacked.weights)
    shared_config = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.3)
    shared = lora.init_adapter(config, shared_config, jax.random.key(3)).weights
    shared = jax.tree.map(lambda w: w + 0.05 * jax.random.normal(jax.random.key(4), w.shape), shared)

    def loss(state, shared, remat):
        m = nnx.merge(graphdef, state)
        m.remat = remat
        adapters = [(lora.LoraAdapter(stacked, stacked_config, 2), jnp.array([1, 0])),
                    (lora.LoraAdapter(shared, shared_config), None)]
        return jnp.mean(m(tokens, adapters=adapters, dropout_rng=jax.random.key(5)) ** 2)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    plain_loss, plain_grads = grad(state, shared, "none")
    remat_loss, remat_grads = grad(state, shared, policy)
    np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(plain_grads), jax.tree.leaves(remat_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # The policies differ in what they keep: fewer saved residuals, not the same program under a name.
    def kept(remat):  # elements the backward pass holds on to: the residuals inside the vjp closure
        _, backward = jax.vjp(lambda s, a: loss(s, a, remat), state, shared)
        return sum(x.size for x in jax.tree.leaves(backward))

    assert kept(policy) < kept("none")
    if policy == "projections":
        assert kept("full") < kept(policy)  # and "full" keeps less still

        def per_row_products(jaxpr):  # `btr,bro->bto`-shaped dots (per-row LoRA), nested jaxprs included
            count = 0
            for eqn in jaxpr.eqns:
                if eqn.primitive.name == "dot_general" and [v.aval.ndim for v in eqn.invars] == [3, 3]:
                    count += eqn.params["dimension_numbers"] == (((2,), (1,)), ((0,), (0,)))
                for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                    count += per_row_products(sub)
            return count

        forward_products = per_row_products(jax.make_jaxpr(loss, static_argnums=2)(state, shared, policy).jaxpr)
        gradient = jax.make_jaxpr(jax.grad(loss, argnums=1), static_argnums=2)(state, shared, policy)
        assert forward_products > 0
        assert per_row_products(gradient.jaxpr) == forward_products  # kept, not recomputed for the IA's gradient
    with pytest.raises(ValueError, match=r"remat='dots': choose one of \['none', 'projections', 'full'\]"):
        loss(state, shared, "dots")


def test_from_scratch_model_runs_under_jit():
    from flax import nnx

    config = models.ModelConfig(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    model = models.CausalLM(config, rngs=nnx.Rngs(0))
    logits = nnx.jit(lambda m, t: m(t))(model, _tokens())
    assert logits.shape == (2, SEQ, VOCAB) and np.all(np.isfinite(logits))


@pytest.mark.parametrize("block, t", [(4, 13), (8, 16), (16, 16)])
def test_blockwise_causal_attention_equals_the_full_square_with_padding(block, t):
    """Query blocks that skip keys after their end give what the full masked square gives, values
    and gradients, also with left padding and a ragged last block. (A padding query sees no key;
    what it outputs differs, is never read and gets no gradient, so it is left out.)"""
    from ia_jax.models.decoder import attention, causal_attention

    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in
               ((2, t, 6, 5), (2, 2, t, 5), (2, 2, t, 5)))  # keys kv-head major
    real_bt = np.ones((2, t), bool)
    real_bt[1, :3] = False
    visible = jnp.asarray(np.tril(np.ones((t, t), bool))[None] & real_bt[:, None, :])
    cotangent = jnp.asarray(rng.standard_normal((2, t, 6, 5)) * real_bt[:, :, None, None], jnp.float32)
    real = real_bt[:, :, None, None]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, visible) * cotangent)

    full = attention(q, k, v, visible)
    blocked = causal_attention(q, k, v, visible, block=block)
    np.testing.assert_allclose(np.where(real, blocked, 0), np.where(real, full, 0), rtol=1e-5, atol=1e-6)
    blocked_grads = jax.grad(lambda *a: loss(lambda *b: causal_attention(*b, block=block), *a), (0, 1, 2))(q, k, v)
    for got, want in zip(blocked_grads, jax.grad(lambda *a: loss(attention, *a), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The reference itself: softmax over the visible keys, by hand.
    scores = np.einsum("btkgh,bksh->bkgts", np.asarray(q).reshape(2, t, 2, 3, 5), np.asarray(k))
    scores = np.where(np.asarray(visible)[:, None, None], scores, -np.inf)
    scores[np.isneginf(scores).all(-1)] = 0.0
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    by_hand = np.einsum("bkgts,bksh->btkgh", probs, np.asarray(v)).reshape(2, t, 6, 5)
    np.testing.assert_allclose(np.where(real, full, 0), np.where(real, by_hand, 0), rtol=1e-5, atol=1e-5)
