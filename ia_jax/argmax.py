"""`jnp.argmax` over a vocabulary-wide last axis, in two single-output reductions.

XLA:CPU lowers `argmax` to a reduction that carries a value and an index together, which it does not
vectorise: greedy decoding's argmax over `[32, 32000]` logits took 2.5 ms per step on the 2-core
AVX-512 benchmark VM, 6% of a batch-32 decode step and as long as a layer's attention. The maximum of
each block of 128, then the argmax of those block maxima, then the argmax inside the winning block,
gives the same index in 0.15 ms. Other backends keep `jnp.argmax`: nothing measured it there, and a
vocabulary sharded over devices would have to be split into blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def argmax(x: jax.Array, block: int = 128) -> jax.Array:
    """int32 index of the maximum along the last axis, exactly `jnp.argmax(x, axis=-1)`: the first
    maximum on ties, and the first NaN when there is one (both are the first of the first block that
    holds them)."""
    *lead, size = x.shape
    if size <= block or jax.default_backend() != "cpu":
        return jnp.argmax(x, axis=-1).astype(jnp.int32)
    pad = -size % block
    if pad:  # padding after the real entries never wins a tie, as it comes later
        low = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
        x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, pad)], constant_values=low)
    x_ncb = x.reshape(*lead, -1, block)
    block_n = jnp.argmax(jnp.max(x_ncb, axis=-1), axis=-1)
    within_nb = jnp.take_along_axis(x_ncb, block_n[..., None, None], axis=-2)[..., 0, :]
    return (block_n * block + jnp.argmax(within_nb, axis=-1)).astype(jnp.int32)
