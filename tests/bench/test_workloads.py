"""The benchmark's timing loop: sides take turns, so drift in the machine's speed cannot favour one."""

from ia_jax.bench import workloads


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
