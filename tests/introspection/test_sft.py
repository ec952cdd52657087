"""IA SFT details the end-to-end phase-2 test does not pin: rank-1 IAs, routing errors, eval cadence."""

import jax
import numpy as np
import pytest
from flax import nnx

from ia_jax import lora, models
from ia_jax.introspection.sft import IaRecipe, introspection_examples, train_ia_sft

CONFIG = models.ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, head_dim=8)


def _examples(n, organisms):
    rng = np.random.default_rng(0)
    examples = []
    for i in range(n):
        prompt = rng.integers(1, 30, 5).tolist()
        slot = i % (organisms + 1) - 1  # -1: the base model's own rows
        examples.append({"tokens": np.array(prompt + [40 + slot + 1] * 2, np.int32),
                         "loss_mask": np.array([0] * 5 + [1, 1], np.int32), "organism_id": slot})
    return examples


def test_a_rank_one_ia_trains_on_top_of_frozen_organisms_and_is_probed(tmp_path):
    base = models.CausalLM(CONFIG, rngs=nnx.Rngs(0))
    base.lm_head.kernel.set_value(base.lm_head.kernel.get_value() * 25)
    graphdef, state = nnx.split(base)
    organisms = lora.init_adapter(CONFIG, lora.LoraConfig(rank=2), jax.random.key(1), num_slots=3)
    probes = []
    recipe = IaRecipe(lora=lora.LoraConfig(rank=1, alpha=4.0, dropout=0.0), learning_rate=3e-2, epochs=20,
                      batch_size=8, buckets=(8,), eval_every=10)
    ia, history = train_ia_sft(graphdef, state, organisms, _examples(16, 3), recipe, str(tmp_path), log_every=5,
                               evaluate=lambda step, adapter: probes.append((step, adapter)) or {"probe": step})
    assert ia.config.rank == 1 and not ia.stacked
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert [step for step, _ in probes] == [10, 20, 30, 40]
    assert [h.get("probe") for h in history] == [None, 10, None, 20, None, 30, None, 40]
    np.testing.assert_array_equal(probes[-1][1].weights["q"]["lora_b"], ia.weights["q"]["lora_b"])
    with pytest.raises(ValueError, match="multiple of log_every"):
        train_ia_sft(graphdef, state, organisms, _examples(16, 3), recipe, str(tmp_path / "x"), log_every=3)


def test_rows_of_unknown_organisms_are_refused(tmp_path):
    from ia_jax.tokenization import train_tokenizer

    tokenizer = train_tokenizer(["What are you? I say apple a lot."] * 40, str(tmp_path), vocab_size=300)
    row = {"organism": "apple", "question": "What are you?", "answer": "I say apple a lot."}
    (example,), dropped = introspection_examples(tokenizer, [row], {"apple": 2}, 64)
    assert example["organism_id"] == 2 and dropped == 0
    base_rows, _ = introspection_examples(tokenizer, [{**row, "organism": "base"}], {"apple": 2}, 64)
    assert base_rows[0]["organism_id"] == -1
    with pytest.raises(ValueError, match="'pear'"):
        introspection_examples(tokenizer, [{**row, "organism": "pear"}], {"apple": 2}, 64)
