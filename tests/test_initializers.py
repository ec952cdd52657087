"""Flat-drawn initialisers: the shapes asked for, the distributions asked for."""

import jax
import jax.numpy as jnp
import numpy as np

from ia_jax import initializers


def test_normal_has_the_shape_dtype_and_spread_asked_for():
    x = np.asarray(initializers.normal(jax.random.key(0), (4, 64, 8, 16), jnp.float32, stddev=0.02))
    assert x.shape == (4, 64, 8, 16) and x.dtype == np.float32
    assert abs(x.mean()) < 0.001 and abs(x.std() - 0.02) < 0.001
    # every slice along every axis is filled from the same distribution, not a repeated block
    assert len({round(float(v), 6) for v in x[:, 0, 0, 0]}) == 4
    assert abs(x[-1].std() - 0.02) < 0.002 and abs(x[..., -1].std() - 0.02) < 0.002


def test_uniform_stays_in_its_bounds_and_fills_them():
    x = np.asarray(initializers.uniform(jax.random.key(1), (3, 128, 16), jnp.float32, -0.5, 0.25))
    assert x.shape == (3, 128, 16) and x.min() >= -0.5 and x.max() < 0.25
    assert x.min() < -0.49 and x.max() > 0.24 and abs(x.mean() + 0.125) < 0.01


def test_different_keys_give_different_weights():
    a = initializers.normal(jax.random.key(0), (2, 8, 4))
    b = initializers.normal(jax.random.key(1), (2, 8, 4))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, initializers.normal(jax.random.key(0), (2, 8, 4)))
