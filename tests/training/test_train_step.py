"""The jitted step: sharding-invariant, accumulation-exact, and training only what it should."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from ia_jax import lora, models
from ia_jax.data.batching import Batcher, loss_positions
from ia_jax.parallel.sharding import make_mesh
from ia_jax.training import losses
from ia_jax.training import train_step as ts
from ia_jax.training.dpo_reference import attach_reference_log_probs
from ia_jax.training.optimizer import OptimizerConfig, make_optimizer

CONFIG = models.ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8)
ORGANISM_LORA = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.0)
IA_LORA = lora.LoraConfig(rank=2, alpha=4.0, dropout=0.0)
SLOTS = 4


def _batch(micro, batch, seq=12, seed=0, ids=None):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CONFIG.vocab_size, (micro, batch, seq)).astype(np.int32)
    attention = np.ones_like(tokens)
    attention[..., -2:] = 0  # right padding
    loss_mask = np.zeros_like(tokens)
    loss_mask[..., seq // 2:-2] = 1
    if ids is None:
        ids = rng.integers(-1, SLOTS, (micro, batch)).astype(np.int32)
    return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask,
            "organism_ids": np.asarray(ids, np.int32).reshape(micro, batch)}


@pytest.fixture(scope="module")
def weights():
    model = models.CausalLM(CONFIG, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(1)
    organisms = lora.init_adapter(CONFIG, ORGANISM_LORA, jax.random.key(2), num_slots=SLOTS)
    organisms = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape, np.float32),
                             organisms.weights)
    ia = lora.init_adapter(CONFIG, IA_LORA, jax.random.key(3)).weights
    return graphdef, state, {"base": nnx.to_pure_dict(state), "adapters": [organisms, ia]}


def _trainer(weights, trainable, optimizer, mesh, objective=ts.sft_objective, remat="none"):
    graphdef, state, w = weights
    composition = ts.Composition(graphdef, (ts.AdapterSlot(ORGANISM_LORA, SLOTS), ts.AdapterSlot(IA_LORA)),
                                 trainable=trainable, remat=remat)
    return ts.Trainer(composition, objective, optimizer, mesh, base_state=state, weights=w)


def _one_step(weights, trainable, optimizer, mesh, batch, steps=1, remat="none"):
    trainer = _trainer(weights, trainable, optimizer, mesh, remat=remat)
    state, frozen = trainer.place(weights[2])
    metrics = []
    for _ in range(steps):
        state, m = trainer.step(state, frozen, trainer.put_batch(batch), jax.random.key(0))
        metrics.append(jax.device_get(m))
    return trainer, jax.device_get(state.params), metrics


def _single_device_mesh():
    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


@pytest.mark.parametrize("trainable,micro_batches,remat", [(1, 1, "projections"), ("base", 1, "projections"),
                                                          (0, 2, "full")])
def test_mesh_2x2x2_matches_single_device(weights, trainable, micro_batches, remat):
    """With SGD(lr=1) the parameter change is minus the gradient, so this compares loss and gradients;
    the sharded run also uses micro-batches and a remat policy where the reference keeps everything."""
    batch = _batch(1, 8)
    before = weights[2]["base"] if trainable == "base" else weights[2]["adapters"][trainable]
    _, single, single_metrics = _one_step(weights, trainable, optax.sgd(1.0), _single_device_mesh(), batch)
    split = jax.tree.map(lambda x: x.reshape(micro_batches, -1, *x.shape[2:]), batch)
    trainer, sharded, sharded_metrics = _one_step(weights, trainable, optax.sgd(1.0), make_mesh(2, 2, 2), split,
                                                  remat=remat)
    np.testing.assert_allclose(sharded_metrics[0]["loss"], single_metrics[0]["loss"], rtol=1e-5)
    grads_single = jax.tree.map(lambda b, a: np.asarray(b) - a, before, single)
    grads_sharded = jax.tree.map(lambda b, a: np.asarray(b) - a, before, sharded)
    scale = max(np.abs(g).max() for g in jax.tree.leaves(grads_single))
    assert scale > 1e-4
    for a, b in zip(jax.tree.leaves(grads_sharded), jax.tree.leaves(grads_single)):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale)
    if trainable == "base":
        spec = trainer.param_shardings["model"]["layers"]["mlp"]["up_proj"]["kernel"].spec
        assert tuple(spec) == (None, "fsdp", "tensor")


def test_gradient_accumulation_equals_one_big_batch(weights):
    big = _batch(1, 4, seed=5)
    big["loss_mask"][0, 0, :] = 0  # uneven token counts across micro-batches: a per-micro mean would differ
    micro = jax.tree.map(lambda x: x.reshape(2, 2, *x.shape[2:]), big)
    mesh = _single_device_mesh()
    _, one, m_one = _one_step(weights, 1, optax.sgd(1.0), mesh, big)
    _, acc, m_acc = _one_step(weights, 1, optax.sgd(1.0), mesh, micro)
    np.testing.assert_allclose(m_acc[0]["loss"], m_one[0]["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(acc), jax.tree.leaves(one)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _per_slot_change(before, after):
    delta = np.abs(np.asarray(after) - np.asarray(before))
    return delta.reshape(delta.shape[0], SLOTS, -1).max(axis=(0, 2))


def test_stacked_step_changes_only_slots_in_the_batch(weights):
    """Absent organisms keep their weights and their Adam moments, even after earlier steps moved them."""
    optimizer, _ = make_optimizer(OptimizerConfig(learning_rate=1e-2, weight_decay=0.1))
    trainer = _trainer(weights, 0, optimizer, _single_device_mesh())
    state, frozen = trainer.place(weights[2])
    state, _ = trainer.step(state, frozen, trainer.put_batch(_batch(1, 4, ids=[1, 3, 0, 2])), jax.random.key(0))
    before = jax.device_get(state)
    state, _ = trainer.step(state, frozen, trainer.put_batch(_batch(1, 4, seed=1, ids=[2, 0, 2, -1])),
                            jax.random.key(0))
    after = jax.device_get(state)
    adam_before, adam_after = before.opt_state[1][0], after.opt_state[1][0]  # (clip, adamw) -> ScaleByAdamState
    for target in before.params:
        for key in ("lora_a", "lora_b"):
            for old, new in ((before.params, after.params), (adam_before.mu, adam_after.mu),
                             (adam_before.nu, adam_after.nu)):
                per_slot = _per_slot_change(old[target][key], new[target][key])
                assert per_slot[0] > 0 and per_slot[2] > 0, (target, key)
                assert per_slot[1] == 0 and per_slot[3] == 0, (target, key)


def test_slot_subset_lists_present_slots_first_and_maps_every_slot_to_its_row():
    slots_k, rows_s, present_k = jax.device_get(ts._slot_subset(np.array([[5, -1, 2], [5, 7, -1]]), 8))
    assert list(slots_k) == [2, 5, 7, 0, 1, 3] and list(present_k) == [True] * 3 + [False] * 3  # as many as rows
    assert all(rows_s[slot] == row for row, slot in enumerate(slots_k)) and sorted(rows_s) == list(range(8))
    slots_k, _, present_k = jax.device_get(ts._slot_subset(np.array([[3, -1, -1, -1]]), 8))
    assert list(slots_k) == [3, 0, 1, 2] and list(present_k) == [True, False, False, False]


def test_a_batch_smaller_than_the_stack_trains_its_slots_as_the_whole_stack_would(weights, monkeypatch):
    """2-row batches on a 4-slot stack differentiate and update 2 slots; the same rows padded to 4
    (id -1, no loss) take the whole-stack path. Weights, Adam moments, loss and gradient norm agree,
    with clipping and weight decay on, including slots that were trained earlier and are absent now."""
    subsets = []
    original = ts._slot_subset
    monkeypatch.setattr(ts, "_slot_subset", lambda *a: subsets.append(a) or original(*a))
    optimizer, _ = make_optimizer(OptimizerConfig(learning_rate=1e-2, weight_decay=0.1, max_grad_norm=0.05))
    batches = [_batch(1, 2, seed=i, ids=ids) for i, ids in enumerate([[1, 3], [2, 2], [0, -1]])]

    def padded(batch):
        pad = {k: np.concatenate([v, np.zeros_like(v)], axis=1) for k, v in batch.items()}
        pad["organism_ids"][:, 2:] = -1
        return pad

    results = []
    for feed in (batches, [padded(b) for b in batches]):
        trainer = _trainer(weights, 0, optimizer, _single_device_mesh())
        state, frozen = trainer.place(weights[2])
        metrics = []
        for batch in feed:
            state, m = trainer.step(state, frozen, trainer.put_batch(batch), jax.random.key(0))
            metrics.append(jax.device_get(m))
        results.append((jax.device_get(state), metrics))
    assert subsets and all(a[0].size == 2 for a in subsets)  # the 2-row batches took the subset path
    (subset_state, subset_metrics), (whole_state, whole_metrics) = results
    for a, b in zip(subset_metrics, whole_metrics):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
    assert subset_metrics[0]["grad_norm"] > 0.05  # clipping was active
    for a, b in zip(jax.tree.leaves(subset_state), jax.tree.leaves(whole_state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    first = _per_slot_change(weights[2]["adapters"][0]["q"]["lora_a"], subset_state.params["q"]["lora_a"])
    assert all(change > 0 for change in first)  # every slot was trained at some step


def test_ids_outside_the_stack_are_refused_before_the_step(weights):
    trainer = _trainer(weights, 1, optax.sgd(1.0), _single_device_mesh())
    with pytest.raises(lora.AdapterError, match=r"batch organism_ids \(adapter 0\): ids \[4\] are outside the "
                                                r"stack of 4 adapters"):
        trainer.put_batch(_batch(1, 4, ids=[0, 4, 1, -1]))


def test_ia_training_lowers_loss_and_leaves_frozen_weights_alone(weights):
    optimizer, _ = make_optimizer(OptimizerConfig(learning_rate=3e-3, total_steps=20))
    batch = _batch(1, 8, seed=3)
    trainer = _trainer(weights, 1, optimizer, _single_device_mesh())
    state, frozen = trainer.place(weights[2])
    frozen_before = jax.device_get(frozen)
    global_batch = trainer.put_batch(batch)
    losses = []
    for _ in range(12):
        state, metrics = trainer.step(state, frozen, global_batch, jax.random.key(0))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 0.05
    assert trainer._step._cache_size() == 1  # compiled once for this shape
    for a, b in zip(jax.tree.leaves(jax.device_get(frozen)), jax.tree.leaves(frozen_before)):
        np.testing.assert_array_equal(a, b)


def _pairs(n=6, seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        sides = {}
        for side in ("chosen", "rejected"):
            length = int(rng.integers(7, 12))
            mask = np.zeros(length, np.int32)
            mask[4:] = 1
            sides[f"{side}_tokens"] = rng.integers(0, CONFIG.vocab_size, length).astype(np.int32)
            sides[f"{side}_loss_mask"] = mask
        pairs.append({**sides, "organism_id": int(rng.integers(0, SLOTS))})
    return pairs


def test_loss_at_gathered_positions_equals_the_loss_over_every_position(weights):
    """The batcher's `loss_positions` make the LM head run only where the loss is; the sums must not move."""
    batch = _batch(1, 8, seed=5)
    batch["loss_mask"][0, 3, 2:5] = 1  # rows with different loss spans
    batch["loss_mask"][0, 6] = 0  # and a row with none
    gathered = {**batch, "loss_positions": loss_positions(batch["loss_mask"][0], 8)[None]}
    _, full_params, full = _one_step(weights, 1, optax.sgd(1.0), _single_device_mesh(), batch)
    _, gathered_params, fast = _one_step(weights, 1, optax.sgd(1.0), _single_device_mesh(), gathered)
    for key in ("loss", "token_accuracy", "weight", "grad_norm"):
        np.testing.assert_allclose(fast[0][key], full[0][key], rtol=1e-5, err_msg=key)
    for a, b in zip(jax.tree.leaves(gathered_params), jax.tree.leaves(full_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_frozen_adapters_run_without_dropout_and_the_trained_one_with_it(weights):
    graphdef, _, w = weights
    noisy = lora.LoraConfig(rank=ORGANISM_LORA.rank, alpha=ORGANISM_LORA.alpha, dropout=0.5)
    tokens = _batch(1, 4, seed=6)["tokens"][0]
    ids = np.array([0, 1, 2, 3], np.int32)
    for trainable, changes in ((1, False), (0, True)):
        composition = ts.Composition(graphdef, (ts.AdapterSlot(noisy, SLOTS), ts.AdapterSlot(IA_LORA)),
                                     trainable=trainable)
        plain = composition.forward(w, tokens, np.ones_like(tokens), ids)
        dropped = composition.forward(w, tokens, np.ones_like(tokens), ids, dropout_rng=jax.random.key(1))
        assert (np.abs(np.asarray(dropped) - np.asarray(plain)).max() > 1e-4) == changes, trainable


def _dpo_trainer(weights, optimizer=None, mesh=None):
    graphdef, state, w = weights
    composition = ts.Composition(graphdef, (ts.AdapterSlot(ORGANISM_LORA, SLOTS), ts.AdapterSlot(IA_LORA)),
                                 trainable=1)
    return ts.Trainer(composition, ts.dpo_objective(beta=0.1), optimizer or optax.sgd(0.0),
                      mesh or _single_device_mesh(), base_state=state, weights=w)


def test_reference_log_probs_are_each_pairs_own_unpadded_score(weights):
    """Scored on a 2x2x2 mesh (the trainer's shardings, one row per batch shard), compared unsharded."""
    graphdef, _, w = weights
    composition = ts.Composition(graphdef, (ts.AdapterSlot(ORGANISM_LORA, SLOTS), ts.AdapterSlot(IA_LORA)),
                                 trainable=1)
    pairs = attach_reference_log_probs(_pairs(), _dpo_trainer(weights, mesh=make_mesh(2, 2, 2)), w, batch_size=4,
                                       buckets=(12,))
    for pair in (pairs[0], pairs[5]):
        tokens = pair["rejected_tokens"][None]
        logits = composition.forward(w, tokens, np.ones_like(tokens), np.array([pair["organism_id"]]))
        expected = losses.sequence_log_probs(logits, tokens, pair["rejected_loss_mask"][None])[0]
        np.testing.assert_allclose(pair["reference_rejected"], expected, rtol=1e-5)


def test_dpo_padding_rows_do_not_count_as_pairs(weights):
    """6 pairs in a batch of 8: the two padding rows must change neither the loss nor the metrics."""
    w = weights[2]
    trainer = _dpo_trainer(weights)
    pairs = attach_reference_log_probs(_pairs(), trainer, w, batch_size=4, buckets=(12,))
    for pair in pairs:  # pretend the reference was another model, so the loss is not exactly log 2
        pair["reference_chosen"] -= 0.5
    metrics = {}
    for batch_size in (6, 8):
        train_state, frozen = trainer.place(w)
        batch = next(Batcher(pairs, batch_size=batch_size, buckets=(12,)))
        _, metrics[batch_size] = jax.device_get(trainer.step(train_state, frozen, trainer.put_batch(batch),
                                                             jax.random.key(0)))
    assert metrics[8]["weight"] == metrics[6]["weight"] == 6
    for key in ("loss", "preference_accuracy", "reward_margin", "chosen_reward"):
        np.testing.assert_allclose(metrics[8][key], metrics[6][key], rtol=1e-5)


def test_dpo_from_the_reference_starts_at_log2_and_learns_the_preference(weights):
    w = weights[2]
    optimizer, _ = make_optimizer(OptimizerConfig(learning_rate=1e-2, total_steps=10))
    trainer = _dpo_trainer(weights, optimizer)
    pairs = attach_reference_log_probs(_pairs(), trainer, w, batch_size=4, buckets=(12,))
    batcher = Batcher(pairs, batch_size=6, buckets=(12,))
    train_state, frozen = trainer.place(w)
    history = []
    for _ in range(6):
        train_state, metrics = trainer.step(train_state, frozen, trainer.put_batch(next(batcher)), jax.random.key(0))
        history.append(jax.device_get(metrics))
    np.testing.assert_allclose(history[0]["loss"], np.log(2), rtol=1e-5)  # policy == reference at step 0
    assert history[-1]["loss"] < np.log(2) - 0.01 and history[-1]["preference_accuracy"] == 1.0
    assert history[-1]["reward_margin"] > 0
