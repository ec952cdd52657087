"""Cached decoding must reproduce uncached forwards and transformers' greedy generate, token for token."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from ia_jax import lora, models
from ia_jax.parallel.sharding import make_mesh
from ia_jax.sampling.sampler import Sampler, SamplingParams, group_rows, largest_group

NEW = 10


def _prompts(seed=0, lengths=(5, 9, 3)):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 97, n).tolist() for n in lengths]


@nnx.jit
def _forward(model, tokens, adapters):
    return model(tokens, adapters=adapters)


def _uncached_greedy(model, prompt, steps, adapters=()):
    """The slow reference: a full forward over the whole sequence for every new token (right-padded to
    one width, which causal attention cannot see, so it compiles once)."""
    tokens = list(prompt)
    width = len(prompt) + steps
    for _ in range(steps):
        padded = np.zeros((1, width), np.int32)
        padded[0, : len(tokens)] = tokens
        logits = _forward(model, padded, adapters)
        tokens.append(int(np.argmax(np.asarray(logits)[0, len(tokens) - 1])))
    return tokens[len(prompt):]


@pytest.mark.parametrize("unroll_layers", [True, False])
@pytest.mark.parametrize("name", ["llama_gqa_llama3rope", "qwen3_gqa_tied"])
def test_greedy_matches_uncached_and_transformers_generate(reference_checkpoint, name, unroll_layers):
    path, torch_model = reference_checkpoint(name)
    model = models.load_hf(path)
    sampler = Sampler(model, prompt_buckets=(16,), batch_buckets=(4,), unroll_layers=unroll_layers)
    prompts = _prompts()
    ours = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW))
    for prompt, generated in zip(prompts, ours):
        assert generated == _uncached_greedy(model, prompt, NEW)
        with torch.no_grad():
            theirs = torch_model.generate(torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False,
                                          eos_token_id=None, pad_token_id=0)
        assert generated == theirs[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def adapted(reference_checkpoint):
    path, _ = reference_checkpoint("qwen3_gqa_tied")
    model = models.load_hf(path)
    rng = np.random.default_rng(0)
    randomise = lambda a: a.replace(weights=jax.tree.map(  # noqa: E731
        lambda x: 0.5 * rng.standard_normal(x.shape, np.float32), a.weights))
    organisms = randomise(lora.init_adapter(model.config, lora.LoraConfig(rank=4, alpha=8.0), jax.random.key(0),
                                            num_slots=3))
    ia = randomise(lora.init_adapter(model.config, lora.LoraConfig(rank=2, alpha=4.0), jax.random.key(1)))
    return model, organisms, ia


@pytest.mark.parametrize("unroll_layers", [True, False])
@pytest.mark.parametrize("organism_ids, rows_per_group", [
    ([2, -1, 0, 2], None),  # 4 groups of one row would outnumber the 3 slots: each row's slot gathered per step
    ([2, -1], 1),  # one row per group, gathered once per call
    ([2, 0, 0, 2], 2),  # rows 0 and 3 moved next to each other: two groups of two
    ([1, 1, 1, 1], 4),  # one organism for the whole batch
])
def test_per_row_organism_and_ia_match_uncached_composition(adapted, unroll_layers, organism_ids, rows_per_group):
    model, organisms, ia = adapted
    rows = len(organism_ids)
    sampler = Sampler(model, organisms=organisms, ia=ia, prompt_buckets=(16,), batch_buckets=(rows,),
                      unroll_layers=unroll_layers)
    prompts = _prompts(1, (6, 4, 7, 5)[:rows])
    use_ia = [True, True, False, False][:rows]
    calls = []
    sampler._jitted = (lambda jitted: lambda *a, **k: calls.append(k["rows_per_group"]) or jitted(*a, **k))(
        sampler._jitted)
    ours = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW), organism_ids=organism_ids, use_ia=use_ia)
    assert calls == [rows_per_group]
    for prompt, organism, ia_on, generated in zip(prompts, organism_ids, use_ia, ours):
        adapters = []
        if organism >= 0:
            adapters.append((organisms, np.array([organism], np.int32)))
        if ia_on:
            adapters.append((ia, None))
        assert generated == _uncached_greedy(model, prompt, NEW, tuple(adapters)), (organism, ia_on)
    assert len({tuple(g) for g in ours}) == rows  # the adapters really change the answers


def test_rows_of_one_organism_are_grouped_in_the_largest_groups_that_fit():
    def best(ids, batch):
        group = largest_group(ids, batch)
        return (*group_rows(ids, batch, group), group)

    assert best([5, 3, 5, 3], 4) == ([0, 2, 1, 3], [5, 3], 2)
    assert best([5, 3, 5, 3], 8) == ([0, 2, -1, -1, 1, 3, -1, -1], [5, 3], 4)
    assert best([7, 7, 7], 4) == ([0, 1, 2, -1], [7], 4)
    assert best([7, -1, 7, 7, 7], 8) == ([0, 2, 3, 4, 1, -1, -1, -1], [7, -1], 4)
    assert best([1, 1, 1, 2], 4) == ([0, 1, 2, 3], [1, 1, 1, 2], 1)  # 1 + 1 groups of 2 or more do not fit
    assert best([1, 2], 3) == ([0, 1, -1], [1, 2, -1], 1)  # a batch bucket that is not a power of two
    assert best([], 2) == ([-1, -1], [-1], 2)
    assert group_rows([5, 3, 5, 3], 4, 1) == ([0, 2, 1, 3], [5, 5, 3, 3])
    for call in (largest_group, lambda ids, batch: group_rows(ids, batch, 1)):
        with pytest.raises(ValueError, match="3 rows do not fit a batch of 2"):
            call([0, 0, 0], 2)
    for group in (2, 0):
        with pytest.raises(ValueError,
                           match=rf"rows of organisms \[1, 1, 1, 2\] do not fit a batch of 4 in groups of {group}"):
            group_rows([1, 1, 1, 2], 4, group)


def test_a_chunk_reuses_a_compiled_group_size_that_fits_rather_than_compile_its_best(adapted):
    """Each group size is a program of its own: a later chunk that fits a size already compiled for its
    shape uses it, and the answers do not depend on the layout."""
    model, organisms, ia = adapted
    prompts, params = _prompts(3, (6, 4, 7, 5)), SamplingParams(max_new_tokens=NEW)
    sampler = Sampler(model, organisms=organisms, ia=ia, prompt_buckets=(16,), batch_buckets=(4,))
    calls, jitted = [], sampler._jitted
    sampler._jitted = lambda *a, **k: calls.append(k["rows_per_group"]) or jitted(*a, **k)
    mixed = sampler.generate(prompts, params, organism_ids=[2, 0, 0, 2], use_ia=True)
    one = sampler.generate(prompts, params, organism_ids=[1, 1, 1, 1], use_ia=True)  # would fit groups of 4
    assert calls == [2, 2] and jitted._cache_size() == 1
    sampler.generate(prompts[:3], params, organism_ids=[0, 1, 2])  # fits no compiled size: per-step gather
    assert calls[-1] is None and jitted._cache_size() == 2
    fresh = Sampler(model, organisms=organisms, ia=ia, prompt_buckets=(16,), batch_buckets=(4,))
    assert fresh.generate(prompts, params, organism_ids=[1, 1, 1, 1], use_ia=True) == one  # in groups of 4
    assert fresh.generate(prompts, params, organism_ids=[2, 0, 0, 2], use_ia=True) == mixed


def test_swapping_the_ia_reuses_compiled_programs_and_matches_a_fresh_sampler(adapted):
    model, organisms, ia = adapted
    other = ia.replace(weights={t: {"lora_a": w["lora_a"], "lora_b": -2 * w["lora_b"]} for t, w in ia.weights.items()})
    prompts, params = _prompts(2, (6, 4)), SamplingParams(max_new_tokens=NEW)
    sampler = Sampler(model, organisms=organisms, ia=ia, prompt_buckets=(16,), batch_buckets=(4,))
    first = sampler.generate(prompts, params, organism_ids=[0, 1], use_ia=True)
    sampler.set_ia(other)
    swapped = sampler.generate(prompts, params, organism_ids=[0, 1], use_ia=True)
    fresh = Sampler(model, organisms=organisms, ia=other, prompt_buckets=(16,), batch_buckets=(4,))
    assert swapped == fresh.generate(prompts, params, organism_ids=[0, 1], use_ia=True) != first
    assert sampler.compiled_variants() == 1
    with pytest.raises(ValueError, match="config and shapes"):
        sampler.set_ia(lora.init_adapter(model.config, lora.LoraConfig(rank=3, alpha=4.0), jax.random.key(2)))


def _transposed_shapes(jaxpr) -> set:
    """Operand shapes of every transpose in a jaxpr, nested jaxprs (the decode loop's body) included."""
    shapes = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "transpose":
            shapes.add(tuple(eqn.invars[0].aval.shape))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            shapes |= _transposed_shapes(sub)
    return shapes


def test_unrolled_sampler_lays_out_the_base_once_not_per_call(adapted):
    """The base's per-layer `[out, in]` kernel copies are kept between calls; a `generate`
    call transposes no layer kernel (slicing them per call cost the benchmark's batch-1 call about 0.2
    s of 2)."""
    model, organisms, ia = adapted
    sampler = Sampler(model, organisms=organisms, ia=ia, prompt_buckets=(16,), batch_buckets=(2,),
                      unroll_layers=True)
    jitted, captured = sampler._jitted, {}

    def spy(*args, **kwargs):
        captured.update(args=args, kwargs=kwargs)
        return jitted(*args, **kwargs)

    sampler._jitted = spy
    sampler.generate(_prompts(1, (6, 4)), SamplingParams(max_new_tokens=3), organism_ids=[0, 2], use_ia=True)
    graphdef, state = nnx.split(model)
    kernel_slices = {tuple(w.shape[1:]) for w in jax.tree.leaves(nnx.state(model.model.layers)) if w.ndim >= 3}
    per_call = jax.jit(lambda state: nnx.merge(graphdef, state).layer_slices()).trace(state).jaxpr
    assert _transposed_shapes(per_call.jaxpr) & kernel_slices  # the check sees slicing where it happens
    assert not _transposed_shapes(jitted.trace(*captured["args"], **captured["kwargs"]).jaxpr.jaxpr) & kernel_slices


def test_weights_updated_in_place_reach_the_unrolled_sampler(adapted):
    """A sampler holds its model's variables: after `nnx.update` (an evaluation during training) it
    decodes with the new weights, its kept decode copies remade, as a fresh sampler would."""
    model, _, _ = adapted
    model = nnx.clone(model)
    prompts, params = _prompts(4, (6, 4)), SamplingParams(max_new_tokens=NEW)
    sampler = Sampler(model, prompt_buckets=(16,), batch_buckets=(2,), unroll_layers=True)
    before = sampler.generate(prompts, params)
    kept = sampler._base_layers
    assert sampler.generate(prompts, params) == before
    assert sampler._base_layers is kept  # unchanged weights: the kept copies serve, not remade
    rng = np.random.default_rng(3)
    nnx.update(model, jax.tree.map(lambda w: w + 0.2 * rng.standard_normal(w.shape, np.float32), nnx.state(model)))
    after = sampler.generate(prompts, params)
    assert sampler._base_layers is not kept
    assert after == Sampler(model, prompt_buckets=(16,), batch_buckets=(2,), unroll_layers=False).generate(
        prompts, params) != before
    assert sampler.compiled_variants() == 1


def test_stop_tokens_limits_and_one_compile_per_bucket(adapted):
    model, _, _ = adapted
    sampler = Sampler(model, prompt_buckets=(8, 16), batch_buckets=(2, 4))
    prompts = _prompts(2, (5, 7, 6))
    hot = SamplingParams(max_new_tokens=12, temperature=1.0, seed=1)  # varied answers (greedy repeats itself)
    free = sampler.generate(prompts, hot)
    row, position = next((r, i) for r, answer in enumerate(free) for i in range(1, len(answer))
                         if answer[i] not in answer[:i])
    stop = free[row][position]
    stopped = Sampler(model, stop_ids=[stop], prompt_buckets=(8, 16), batch_buckets=(2, 4)).generate(prompts, hot)
    for full, cut in zip(free, stopped):
        expected = full[: full.index(stop) + 1] if stop in full else full
        assert cut == expected
    assert stopped[row][-1] == stop and len(stopped[row]) == position + 1
    assert [len(g) for g in sampler.generate(prompts, SamplingParams(max_new_tokens=5))] == [5, 5, 5]
    sampler.generate(_prompts(3, (4, 2, 8)), SamplingParams(max_new_tokens=9, temperature=0.7, top_p=0.9))
    assert sampler.compiled_variants() == 1  # same buckets: one program for every length and setting
    for n in (100, 101, 120):
        sampler.generate(prompts[:1], SamplingParams(max_new_tokens=n))
    assert sampler.compiled_variants() == 2  # 100..128 share one decode-length bucket


def test_sampling_is_seeded_and_cuts_behave(adapted):
    model, _, _ = adapted
    sampler = Sampler(model, prompt_buckets=(16,), batch_buckets=(4,))
    prompts = _prompts(4, (5, 5, 5, 5))
    prompts[2] = prompts[3] = prompts[0]
    hot = SamplingParams(max_new_tokens=NEW, temperature=1.5, seed=3)
    first = sampler.generate(prompts, hot)
    assert first == sampler.generate(prompts, hot)
    assert first != sampler.generate(prompts, SamplingParams(max_new_tokens=NEW, temperature=1.5, seed=4))
    # A row's answer depends on its prompt and seed only, not on the batch around it.
    assert sampler.generate(prompts[2:3], hot)[0] == first[2]
    per_row = [dataclasses.replace(hot, seed=s) for s in (10, 11, 10, 11)]
    mixed = sampler.generate(prompts, per_row)  # rows 0, 2 (same prompt, same seed) agree; row 3 differs
    assert mixed[0] == mixed[2] and mixed[0] != mixed[3]
    greedy = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW))
    assert sampler.generate(prompts, SamplingParams(max_new_tokens=NEW, temperature=1.5, top_k=1)) == greedy
    assert sampler.generate(prompts, SamplingParams(max_new_tokens=NEW, temperature=1.5, top_p=1e-6)) == greedy


def test_batch_composition_and_padding_do_not_change_greedy_answers(adapted):
    model, _, _ = adapted
    sampler = Sampler(model, prompt_buckets=(8, 16), batch_buckets=(1, 8))
    prompts = _prompts(5, (3, 11, 6, 8, 2))
    together = sampler.generate(prompts, SamplingParams(max_new_tokens=NEW))
    alone = [sampler.generate([p], SamplingParams(max_new_tokens=NEW))[0] for p in prompts]
    assert together == alone


@pytest.mark.parametrize("unroll_layers", [True, False])
def test_sharded_model_generates_the_same(reference_checkpoint, unroll_layers):
    path, _ = reference_checkpoint("llama_gqa_llama3rope")
    prompts = _prompts(6, (5, 6, 7, 8))
    expected = Sampler(models.load_hf(path), prompt_buckets=(16,), batch_buckets=(4,)).generate(
        prompts, SamplingParams(max_new_tokens=NEW))
    sharded = models.load_hf(path, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    assert Sampler(sharded, prompt_buckets=(16,), batch_buckets=(4,), unroll_layers=unroll_layers).generate(
        prompts, SamplingParams(max_new_tokens=NEW)) == expected


def test_bad_requests_are_refused(adapted):
    model, organisms, _ = adapted
    sampler = Sampler(model, organisms=organisms, prompt_buckets=(16,), batch_buckets=(4,))
    with pytest.raises(ValueError, match=r"organism ids \[5\] are outside the 3 loaded organisms"):
        sampler.generate(_prompts(), organism_ids=[0, 5, -1])
    with pytest.raises(ValueError, match="no introspection adapter"):
        sampler.generate(_prompts(), use_ia=True)
    with pytest.raises(ValueError, match="prompt length 20 exceeds the largest bucket 16"):
        sampler.generate([list(range(1, 21))])


@pytest.mark.parametrize("top_k,top_p", [(0, 0.6), (3, 1.0), (3, 0.6), (10, 0.35), (1, 0.9), (50, 0.95)])
def test_top_k_and_top_p_keep_what_transformers_warpers_keep(top_k, top_p):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from ia_jax.sampling.sampler import _filter_logits

    logits = np.random.default_rng(top_k).standard_normal((4, 40)).astype(np.float32) * 2
    temperature = 0.7
    scores = torch.tensor(logits / temperature)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    expected = np.isfinite(scores.numpy())
    ours = _filter_logits(logits, np.full(4, temperature, np.float32), np.full(4, top_p, np.float32),
                          np.full(4, top_k, np.int32))
    np.testing.assert_array_equal(np.isfinite(np.asarray(ours)), expected)


def test_sampling_params_are_validated():
    with pytest.raises(ValueError, match=r"top_p=0.0 \(need in \(0, 1\]\), top_k=-1 \(need >= 0\)"):
        SamplingParams(top_p=0.0, top_k=-1)


def test_a_full_cache_refuses_more_tokens(adapted):
    from ia_jax.models.kv_cache import init_cache

    model, _, _ = adapted
    _, cache = model(np.ones((1, 3), np.int32), cache=init_cache(model.config, 1, 4))
    with pytest.raises(ValueError, match="cache holds 4 slots; 3 are used and 2 more tokens do not fit"):
        model(np.ones((1, 2), np.int32), cache=cache)


def test_unrolled_layers_match_the_scan_and_refuse_a_mismatched_cache(adapted):
    """`layers=layer_slices(...)` with a per-layer cache is the scanned forward, logits and cache,
    for a prompt and then one decode step, with adapters on."""
    from ia_jax.models.kv_cache import init_cache

    model, organisms, ia = adapted
    adapters = ((organisms, np.array([2, 0], np.int32)), (ia, None))
    prompt = np.asarray(_prompts(7, (6, 6)), np.int32)
    mask = np.ones_like(prompt)
    mask[1, :2] = 0
    logits, cache = model(prompt, attention_mask_bt=mask, adapters=adapters, cache=init_cache(model.config, 2, 8))
    layers = model.layer_slices(adapters)
    reused = model.layer_slices(adapters, base_layers=model.base_layer_slices())
    for a, b in zip(jax.tree.leaves(layers), jax.tree.leaves(reused)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="base_layers: 1 slices for 2 layers"):
        model.layer_slices(adapters, base_layers=model.base_layer_slices()[:1])
    # Each layer's own copy, projection kernels `[out..., in...]` (what decoding multiplies fastest on CPU).
    c = model.config
    attn = layers[1][0]["self_attn"]
    kernel = model.model.layers.self_attn.q_proj.kernel[...]
    np.testing.assert_array_equal(attn["q_proj"]["kernel"][...], np.transpose(kernel[1], (1, 2, 0)))
    assert attn["o_proj"]["kernel"][...].shape == (c.hidden_size, c.num_heads, c.head_dim)
    assert attn["q_proj"]["kernel"].logical_axes == ("heads", "head_dim", "embed")
    assert layers[1][0]["mlp"]["down_proj"]["kernel"][...].shape == (c.hidden_size, c.intermediate_size)
    unrolled_logits, unrolled = model(prompt, attention_mask_bt=mask, adapters=adapters, layers=layers,
                                      cache=init_cache(model.config, 2, 8).per_layer())
    np.testing.assert_allclose(unrolled_logits, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.stack(unrolled.keys), cache.keys, rtol=1e-5, atol=1e-5)
    step = np.array([[5], [7]], np.int32)
    next_logits, next_cache = model(step, adapters=adapters, cache=cache)
    unrolled_next, unrolled_cache = model(step, adapters=adapters, cache=unrolled, layers=layers)
    np.testing.assert_allclose(unrolled_next, next_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.stack(unrolled_cache.values), next_cache.values, rtol=1e-5, atol=1e-5)
    assert int(unrolled_cache.index) == int(next_cache.index) == 7
    with pytest.raises(ValueError, match="unrolled layers need a per_layer"):
        model(step, adapters=adapters, cache=cache, layers=layers)
    with pytest.raises(ValueError, match="a per_layer.. cache needs `layers`"):
        model(step, adapters=adapters, cache=unrolled)
    with pytest.raises(ValueError, match=f"layers: 1 slices for {model.config.num_layers} layers"):
        model(step, adapters=adapters, cache=unrolled, layers=layers[:1])
    with pytest.raises(ValueError, match="layers: sliced with 2 adapters, called with 1"):
        model(step, adapters=adapters[:1], cache=unrolled, layers=layers)
