"""Memory as the benchmark measures it: XLA's buffers for our step, the process's peak for a side."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ia_jax.bench import calls, memory


def test_compiled_bytes_count_a_donated_argument_once():
    x = jnp.ones((256, 256), jnp.float32)  # 256 KiB
    plain = memory.compiled_bytes(jax.jit(lambda x: x * 2).lower(x).compile())
    donated = memory.compiled_bytes(jax.jit(lambda x: x * 2, donate_argnums=0).lower(x).compile())
    assert plain["argument"] == plain["output"] == x.nbytes and plain["alias"] == 0
    assert plain["peak"] == 2 * x.nbytes + plain["temp"]
    assert donated["alias"] == x.nbytes and donated["peak"] == x.nbytes + donated["temp"]


def test_the_resident_peak_sees_an_allocation_and_starts_over_after_a_reset():
    if not memory.reset_resident_peak():
        pytest.skip("this OS cannot reset the resident peak")
    before = memory.resident_peak_bytes()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert memory.resident_peak_bytes() >= before + 60 * 2**20
    del block
    assert memory.reset_resident_peak()
    assert memory.resident_peak_bytes() < before + 32 * 2**20


def test_organism_costs_split_fixed_cost_and_per_organism_cost():
    # S = 10 s, s = 2 s: a single job 12 s, a job of 32 organisms 74 s.
    costs = calls.organism_costs(74.0, [11.5, 12.5], 32, bound_seconds=0.5)
    assert costs["per_organism_seconds"] == pytest.approx(2.0) and costs["fixed_cost_seconds"] == pytest.approx(10.0)
    assert costs["speedup_bound"] == pytest.approx(32 * 10.5 / (10 + 16))
    assert "fixed_cost_seconds" not in calls.organism_costs(12.0, [12.0], 1, bound_seconds=0.5)
