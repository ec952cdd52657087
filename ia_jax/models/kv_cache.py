"""Key/value cache for incremental decoding, with a fixed number of slots so decoding compiles once.

Prompts are left-padded, so every row's next token goes to the same slot (`index`); `valid_bs` marks
slots holding real tokens, and a row's next position is its count of valid slots. Attention reads all
slots and masks the rest, which keeps every shape static across decode steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from ia_jax.models.config import ModelConfig


@struct.dataclass
class KVCache:
    # [layers, batch, kv_heads, slots, head_dim]: kv-head major, the layout attention's dots read; or,
    # `per_layer()`, a tuple of each layer's [batch, kv_heads, slots, head_dim].
    keys: jax.Array | tuple
    values: jax.Array | tuple
    valid_bs: jax.Array  # [batch, slots] bool
    index: jax.Array  # int32 scalar: the slot the next token is written to

    @property
    def num_slots(self) -> int:
        return self.valid_bs.shape[1]

    @property
    def is_per_layer(self) -> bool:
        return isinstance(self.keys, tuple)

    def per_layer(self) -> KVCache:
        """Each layer's keys and values as arrays of their own, for unrolled layers
        (`CausalLM.layer_slices`), which then update them in place without slicing a stack."""
        if self.is_per_layer:
            return self
        return self.replace(keys=tuple(self.keys), values=tuple(self.values))


def init_cache(config: ModelConfig, batch: int, slots: int) -> KVCache:
    shape = (config.num_layers, batch, config.num_kv_heads, slots, config.head_dim)
    return KVCache(
        keys=jnp.zeros(shape, config.compute_dtype),
        values=jnp.zeros(shape, config.compute_dtype),
        valid_bs=jnp.zeros((batch, slots), jnp.bool_),
        index=jnp.zeros((), jnp.int32),
    )
