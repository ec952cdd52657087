"""The benchmark's timing loop: sides take turns, so drift in the machine's speed cannot favour one."""

import numpy as np
from flax import nnx

from ia_jax.bench import workloads
from ia_jax.models.config import ModelConfig
from ia_jax.models.decoder import CausalLM


def test_interleaved_takes_turns_reverses_every_other_round_and_drops_warmup(monkeypatch):
    # A fake clock: each call advances it by its own cost, so every timing is exact and attributable.
    clock = {"now": 0.0}
    monkeypatch.setattr(workloads.time, "perf_counter", lambda: clock["now"])
    order = []

    def call(name, seconds):
        def run():
            order.append(name)
            clock["now"] += seconds(len([n for n in order if n == name]))
        return run

    timings = workloads.interleaved({"a": call("a", lambda n: 10.0 if n == 1 else n),
                                     "b": call("b", lambda n: 100.0 * n)}, warmup=1, repeats=4)
    # first calls (compiling), the warm-up round, then four timed rounds in alternating order
    assert order == ["a", "b"] + ["a", "b"] + ["b", "a", "a", "b", "b", "a", "a", "b"]
    assert timings["a"] == (10.0, [3.0, 4.0, 5.0, 6.0])  # a's calls 3..6; its 2nd call was the warm-up
    assert timings["b"] == (100.0, [300.0, 400.0, 500.0, 600.0])


def test_the_decode_floor_runs_every_base_matmul_and_little_else():
    """XLA's own count of one step's FLOPs (its cost analysis counts a loop body once) is two per
    multiply-add of every projection weight and the LM head, for every row: no matmul dropped as dead
    code, none added."""
    config = ModelConfig(model_type="qwen3", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=3,
                         num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=True)
    base = CausalLM(config, rngs=nnx.Rngs(0))
    steps, args = workloads.matmul_floor(base, batch_size=8, new_tokens=5)
    d, f, n, k, h = 64, 128, 4, 2, 16
    weights = config.num_layers * (2 * d * n * h + 2 * d * k * h + 3 * d * f) + d * config.vocab_size
    cost = steps.lower(*args).compile().cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    assert 2 * 8 * weights <= flops <= 1.05 * 2 * 8 * weights
    assert np.all(np.isfinite(np.asarray(steps(*args))))
