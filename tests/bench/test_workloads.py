"""The benchmark's timing loop: sides take turns, so drift in the machine's speed cannot favour one."""

import time

from ia_jax.bench import workloads


def test_interleaved_takes_turns_reverses_every_other_round_and_drops_warmup():
    order = []

    def call(name, seconds):
        def run():
            order.append(name)
            time.sleep(seconds)
        return run

    timings = workloads.interleaved({"a": call("a", 0.02), "b": call("b", 0.001)}, warmup=1, repeats=4)
    # first calls (compiling), the warm-up round, then four timed rounds in alternating order
    assert order == ["a", "b"] + ["a", "b"] + ["b", "a", "a", "b", "b", "a", "a", "b"]
    (first_a, times_a), (first_b, times_b) = timings["a"], timings["b"]
    assert len(times_a) == len(times_b) == 4
    assert min(times_a) >= 0.02 and first_a >= 0.02
    assert max(times_b) < 0.02 and first_b < 0.02

