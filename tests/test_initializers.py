"""Flat-drawn initialisers: bit for bit the shaped draws of `jax.random`, which compile far slower."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ia_jax import initializers


@pytest.mark.parametrize("shape", [(4, 64, 8, 16), (3, 5, 7), (8, 2, 32, 16)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_normal_is_the_shaped_draw(shape, dtype):
    key = jax.random.key(7)
    flat = initializers.normal(key, shape, dtype, stddev=0.02)
    assert flat.shape == shape and flat.dtype == dtype
    np.testing.assert_array_equal(np.asarray(flat, np.float32),
                                  np.asarray(0.02 * jax.random.normal(key, shape, dtype), np.float32))


@pytest.mark.parametrize("shape", [(3, 128, 16), (2, 3, 64, 16)])
def test_uniform_is_the_shaped_draw(shape):
    key = jax.random.key(1)
    flat = initializers.uniform(key, shape, jnp.float32, -0.5, 0.25)
    np.testing.assert_array_equal(flat, jax.random.uniform(key, shape, jnp.float32, -0.5, 0.25))
    assert flat.min() >= -0.5 and flat.max() < 0.25


def test_different_keys_give_different_weights():
    assert not np.allclose(initializers.normal(jax.random.key(0), (2, 8, 4)),
                           initializers.normal(jax.random.key(1), (2, 8, 4)))
