"""Random weight initialisers that compile in a fraction of a second.

With `jax_threefry_partitionable` (JAX's default), XLA:CPU takes 2-3 s to compile a random draw of
three or more dimensions (`jax.random.normal(key, (8, 512, 16))`: 2.2 s on the 2-core benchmark
VM, jax 0.10.2) but 0.3 s for the same draw as one flat vector. Stacked layer kernels and LoRA
factors are all 3-D or more, so building a model or a stacked adapter spent seconds compiling per
weight, in every job's start-up and in every test with a new shape. Partitionable Threefry numbers
each element by its row-major index, so the flat draw, reshaped, is bit for bit the shaped draw:
the same weights, compiled in a fraction of the time.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def normal(key: jax.Array, shape, dtype=jnp.float32, stddev: float = 1.0) -> jax.Array:
    return (stddev * jax.random.normal(key, (math.prod(shape),), dtype)).reshape(shape)


def uniform(key: jax.Array, shape, dtype=jnp.float32, minval: float = 0.0, maxval: float = 1.0) -> jax.Array:
    return jax.random.uniform(key, (math.prod(shape),), dtype, minval, maxval).reshape(shape)
