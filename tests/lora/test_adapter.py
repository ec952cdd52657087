"""Composed adapters must equal the base with the same adapters merged, row by row."""

import jax
import numpy as np
import pytest
from flax import nnx

from ia_jax import lora, models
from ia_jax.lora import apply

CONFIG = models.ModelConfig(model_type="qwen3", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=12, qk_norm=True)
TOKENS = np.random.RandomState(0).randint(0, 61, (5, 11)).astype(np.int32)
# Composed adapters against adapters merged into the weights: the merged kernels round differently, which
# has reached 1.1e-5 on logits of about 0.1 (Intel Xeon VM); the wrong slot differs by more than 0.25.
MERGED = dict(rtol=1e-5, atol=5e-5)


@nnx.jit
def forward(model, tokens, adapters=(), dropout_rng=None):
    return model(tokens, adapters=adapters, dropout_rng=dropout_rng)


@jax.jit
def traced_forward(model, tokens, adapters):
    """For `jax.grad` of adapter weights: nnx.jit would write the module back across trace levels."""
    return model(tokens, adapters=adapters)


def _randomised(adapter, seed):
    """Nonzero lora_b, so every adapter changes the logits."""
    rng = np.random.default_rng(seed)
    return adapter.replace(weights=jax.tree.map(lambda x: 0.3 * rng.standard_normal(x.shape, np.float32),
                                                adapter.weights))


@pytest.fixture(scope="module")
def setup():
    model = models.CausalLM(CONFIG, rngs=nnx.Rngs(0))
    stack_config = lora.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "o", "down"))
    ia_config = lora.LoraConfig(rank=2, alpha=3.0)
    organisms = _randomised(lora.init_adapter(CONFIG, stack_config, jax.random.key(1), num_slots=3), 2)
    ia = _randomised(lora.init_adapter(CONFIG, ia_config, jax.random.key(3)), 4)
    return model, organisms, ia


def test_new_adapter_is_the_identity(setup):
    model, _, _ = setup
    fresh = lora.init_adapter(CONFIG, lora.LoraConfig(rank=2, alpha=3.0), jax.random.key(0))
    np.testing.assert_array_equal(forward(model, TOKENS, [(fresh, None)]), forward(model, TOKENS))


def test_stacked_rows_equal_merged_slots_and_minus_one_is_the_base(setup):
    model, organisms, _ = setup
    ids = np.array([2, -1, 0, 1, 2], np.int32)
    composed = np.asarray(forward(model, TOKENS, [(organisms, ids)]))
    base = np.asarray(forward(model, TOKENS))
    for row, slot in enumerate(ids):
        expected = base[row] if slot < 0 else np.asarray(forward(lora.merge(model, organisms, int(slot)), TOKENS))[row]
        np.testing.assert_allclose(composed[row], expected, **MERGED)
    assert np.abs(composed[0] - base[0]).max() > 1e-2  # the adapter really does something


def test_stacked_then_shared_equals_both_merged(setup):
    model, organisms, ia = setup
    ids = np.array([1, 0, -1, 2, 1], np.int32)
    composed = np.asarray(forward(model, TOKENS, [(organisms, ids), (ia, None)]))
    ia_only = np.asarray(forward(lora.merge(model, ia), TOKENS))
    for row, slot in enumerate(ids):
        if slot < 0:
            expected = ia_only[row]
        else:
            merged = lora.merge(lora.merge(model, organisms, int(slot)), ia)
            expected = np.asarray(forward(merged, TOKENS))[row]
        np.testing.assert_allclose(composed[row], expected, **MERGED)


@pytest.mark.parametrize("length", [1, 11])  # one token: the shared delta is its own product; 11: joined per row
def test_per_row_gather_and_one_slot_switch_equal_the_merged_adapters(setup, length):
    """The sampler's forms: organisms gathered per row once, the IA as a one-slot stack switched per row."""
    model, organisms, ia = setup
    tokens = TOKENS[:, :length]
    ids = np.array([1, 0, -1, 2, 1], np.int32)
    ia_on = np.array([0, -1, 0, 0, -1], np.int32)
    one_slot = lora.LoraAdapter(weights=jax.tree.map(lambda w: w[:, None], ia.weights), config=ia.config, num_slots=1)
    rows, row_ids = organisms.per_group(ids, 1)
    assert rows.num_slots == 5 and row_ids.tolist() == [0, 1, -1, 3, 4]
    with pytest.raises(ValueError, match=r"adapters\[0\]: an adapter of 5 groups of 1 rows applied to a batch of 4"):
        model(tokens[:4], adapters=[(rows, row_ids[:4])])
    composed = np.asarray(forward(model, tokens, [(rows, row_ids), (one_slot, ia_on)]))
    for row, (slot, on) in enumerate(zip(ids, ia_on)):
        merged = model if slot < 0 else lora.merge(model, organisms, int(slot))
        merged = merged if on < 0 else lora.merge(merged, ia)
        np.testing.assert_allclose(composed[row], np.asarray(forward(merged, tokens))[row], **MERGED)


@pytest.mark.parametrize("length", [1, 11])
def test_groups_of_rows_sharing_an_organism_equal_the_merged_adapters(setup, length):
    """The sampler's grouped form: each group of 3 consecutive rows runs one gathered organism (-1: none),
    the IA switched per row inside the groups."""
    model, organisms, ia = setup
    tokens = np.concatenate([TOKENS, TOKENS[::-1], TOKENS[:2]])[:, :length]  # 12 rows
    one_slot = lora.LoraAdapter(weights=jax.tree.map(lambda w: w[:, None], ia.weights), config=ia.config, num_slots=1)
    groups, row_ids = organisms.per_group(np.array([2, -1, 0, 2], np.int32), 3)
    assert groups.num_slots == 4 and groups.rows_per_slot == 3
    assert row_ids.tolist() == [0, 0, 0, -1, -1, -1, 2, 2, 2, 3, 3, 3]
    ia_on = np.array([0, -1, 0] * 4, np.int32)
    composed = np.asarray(forward(model, tokens, [(groups, row_ids), (one_slot, ia_on)]))
    for row, on in enumerate(ia_on):
        slot = (2, -1, 0, 2)[row // 3]
        merged = model if slot < 0 else lora.merge(model, organisms, slot)
        merged = merged if on < 0 else lora.merge(merged, ia)
        np.testing.assert_allclose(composed[row], np.asarray(forward(merged, tokens))[row], **MERGED)
    with pytest.raises(ValueError, match=r"adapters\[0\]: an adapter of 4 groups of 3 rows applied to a batch of 6"):
        model(tokens[:6], adapters=[(groups, row_ids[:6])])
    with pytest.raises(ValueError, match="per_group needs a stacked adapter addressed by slot ids"):
        groups.per_group(np.array([0], np.int32), 12)
    with pytest.raises(ValueError, match="per_group: rows_per_group=0, need >= 1"):
        organisms.per_group(np.array([0], np.int32), 0)
    pairs, pair_ids = organisms.per_group(np.arange(6) % 3, 2)
    with pytest.raises(ValueError, match=r"adapters gathered per groups of different sizes \[2, 3\] in one call"):
        forward(model, tokens, [(groups, row_ids), (pairs, pair_ids)])
    layer_weights = jax.tree.map(lambda w: w[0], groups.weights)
    with pytest.raises(ValueError, match="a batch of 12 rows does not split into groups of 5"):
        apply.lora_delta("btd,dnh->btnh", "q", np.zeros((12, 1, CONFIG.hidden_size), np.float32),
                         [apply.LayerLora(layer_weights, row_ids, 1.0, 0.0, None, rows_per_slot=5)])


def test_gradients_through_stacked_and_shared_equal_those_of_the_merged_models(setup):
    """Organisms per row plus a shared IA run as one product with its own gradient rule, which differentiates
    only the factors being trained; plain autodiff through merged models (one adapter kind each) must agree,
    training the IA over frozen organisms and the organisms under a frozen IA."""
    model, organisms, ia = setup
    ids = np.array([1, 0, -1, 2, 1], np.int32)
    weights_btv = np.random.RandomState(1).standard_normal((*TOKENS.shape, CONFIG.vocab_size)).astype(np.float32)

    def loss(model, adapters, rows=slice(None)):
        return (traced_forward(model, TOKENS[rows], adapters) * weights_btv[rows]).sum()

    ia_grad = jax.grad(lambda w: loss(model, [(organisms, ids), (ia.replace(weights=w), None)]))(ia.weights)
    expected = jax.tree.map(np.zeros_like, ia.weights)
    for row, slot in enumerate(ids):
        merged = model if slot < 0 else lora.merge(model, organisms, int(slot))
        row_grad = jax.grad(lambda w: loss(merged, [(ia.replace(weights=w), None)], slice(row, row + 1)))(ia.weights)
        expected = jax.tree.map(np.add, expected, row_grad)
    for got, want in zip(jax.tree.leaves(ia_grad), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)

    organism_grad = jax.grad(lambda w: loss(model, [(organisms.replace(weights=w), ids), (ia, None)]))(
        organisms.weights)
    with_ia = lora.merge(model, ia)
    expected = jax.grad(lambda w: loss(with_ia, [(organisms.replace(weights=w), ids)]))(organisms.weights)
    for got, want in zip(jax.tree.leaves(organism_grad), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    assert min(np.abs(g).max() for g in jax.tree.leaves(organism_grad) + jax.tree.leaves(ia_grad)) > 1e-3


def test_per_row_product_gradients_equal_plain_autodiff():
    """The per-row delta's own gradient rule (organism training) against autodiff of the same einsum, with
    both factors trained and with either one frozen."""
    rng = np.random.default_rng(0)
    low_btr, b_bro = rng.standard_normal((3, 5, 4), np.float32), rng.standard_normal((3, 4, 7), np.float32)
    weights_bto = rng.standard_normal((3, 5, 7), np.float32)

    def loss(product, low, b):
        return (product(low, b) * weights_bto).sum()

    plain = lambda low, b: jax.numpy.einsum("btr,bro->bto", low, b)  # noqa: E731
    for argnums in ((0, 1), 0, 1):
        got = jax.grad(lambda *xs: loss(apply._rows_delta, *xs), argnums)(low_btr, b_bro)
        want = jax.grad(lambda *xs: loss(plain, *xs), argnums)(low_btr, b_bro)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
            assert np.abs(g).max() > 0.1
    np.testing.assert_allclose(apply._rows_delta(low_btr, b_bro), plain(low_btr, b_bro), rtol=1e-6)


def test_merge_leaves_the_model_alone_and_unmerge_restores_it(setup):
    model, organisms, _ = setup
    before = np.asarray(model.model.layers.self_attn.q_proj.kernel.get_value())
    merged = lora.merge(model, organisms, 1)
    assert not np.allclose(merged.model.layers.self_attn.q_proj.kernel.get_value(), before)
    np.testing.assert_array_equal(model.model.layers.self_attn.q_proj.kernel.get_value(), before)
    restored = lora.unmerge(merged, organisms, 1)
    np.testing.assert_allclose(forward(restored, TOKENS), forward(model, TOKENS), rtol=1e-5, atol=1e-5)


def test_dropout_only_with_an_rng_and_then_deterministic(setup):
    model, _, ia = setup
    ia = ia.replace(config=lora.LoraConfig(rank=2, alpha=3.0, dropout=0.5))
    plain = forward(model, TOKENS, [(ia, None)])
    dropped = forward(model, TOKENS, [(ia, None)], jax.random.key(7))
    again = forward(model, TOKENS, [(ia, None)], jax.random.key(7))
    assert np.abs(np.asarray(dropped) - np.asarray(plain)).max() > 1e-3
    np.testing.assert_array_equal(dropped, again)


def test_adapter_for_another_base_is_refused_by_name(setup):
    model, _, _ = setup
    other = models.ModelConfig(**{**CONFIG.__dict__, "hidden_size": 48})
    wrong = lora.init_adapter(other, lora.LoraConfig(targets=("up",)), jax.random.key(0))
    with pytest.raises(lora.AdapterError, match=r"adapters\[0\]: up\.lora_a has shape \[2, 48, 16\], "
                                                r"but the base model needs \[2, 32, 16\]"):
        model(TOKENS, adapters=[(wrong, None)])


def test_ids_outside_the_stack_are_refused(setup):
    model, organisms, _ = setup
    with pytest.raises(lora.AdapterError, match=r"ids \[3\] are outside the stack of 3 adapters"):
        model(TOKENS, adapters=[(organisms, np.array([0, 1, 2, 3, -1]))])
    with pytest.raises(ValueError, match=r"ids have shape \[4\], expected \[5\]"):
        model(TOKENS, adapters=[(organisms, np.array([0, 1, 2, 0]))])
    with pytest.raises(ValueError, match="needs per-example ids"):
        model(TOKENS, adapters=[(organisms, None)])


def test_unknown_target_and_bad_rank_are_refused():
    with pytest.raises(lora.AdapterError, match=r"unknown LoRA targets \['qkv'\]"):
        lora.LoraConfig(targets=("q", "qkv"))
    with pytest.raises(lora.AdapterError, match="rank must be >= 1"):
        lora.LoraConfig(rank=0)


def test_bfloat16_compute_with_float32_adapters_stays_close_to_float32(setup):
    model, organisms, ia = setup
    bf16 = models.CausalLM(CONFIG.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))  # same weights, bf16 compute
    adapters = [(organisms, np.array([0, 1, 2, -1, 0], np.int32)), (ia, None)]
    out = np.asarray(forward(bf16, TOKENS, adapters))
    reference = np.asarray(forward(model, TOKENS, adapters))
    assert out.dtype == np.float32
    error = np.abs(out - reference).max() / np.abs(reference).max()
    assert 1e-5 < error < 5e-2  # tiny random logits: relative error runs higher than on real models
