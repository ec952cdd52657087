import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ia_jax.argmax import argmax


@pytest.mark.parametrize("shape", [(3, 32000), (2, 5, 300), (4, 100), (1, 129)])
def test_matches_jnp_argmax(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    np.testing.assert_array_equal(argmax(x), jnp.argmax(x, axis=-1))
    assert argmax(x).dtype == jnp.int32


def test_ties_pick_the_first_maximum_across_and_inside_blocks():
    x = np.zeros((4, 1000), np.float32)
    x[0, [700, 5, 300]] = 2.0  # first in an earlier block
    x[1, [130, 129]] = 3.0  # two in one block
    x[2, 999] = 1.0  # in the padded last block
    x[3] = -np.inf  # all equal: index 0
    np.testing.assert_array_equal(argmax(jnp.asarray(x)), [5, 129, 999, 0])


def test_nan_wins_as_in_jnp_argmax():
    x = np.ones((2, 600), np.float32)
    x[0, [400, 450]] = np.nan
    x[1, 599] = np.nan
    np.testing.assert_array_equal(argmax(jnp.asarray(x)), jnp.argmax(jnp.asarray(x), axis=-1))
    np.testing.assert_array_equal(argmax(jnp.asarray(x)), [400, 599])


def test_integer_input_is_padded_with_its_minimum():
    x = jnp.asarray(np.random.default_rng(0).integers(-5, 5, (3, 301)), jnp.int32)
    np.testing.assert_array_equal(argmax(x), jnp.argmax(x, axis=-1))


def test_under_jit():
    x = jax.random.normal(jax.random.key(1), (8, 777))
    np.testing.assert_array_equal(jax.jit(argmax)(x), jnp.argmax(x, axis=-1))
