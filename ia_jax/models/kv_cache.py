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
    # Keys [layers, batch, kv_heads, head_dim, slots] and values [layers, batch, kv_heads, slots, head_dim]:
    # kv-head major, the layouts attention's dots read as plain matmuls (`decoder.attention`); or,
    # `per_layer()`, tuples of each layer's arrays.
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
    values_shape = (config.num_layers, batch, config.num_kv_heads, slots, config.head_dim)
    return KVCache(
        keys=jnp.zeros((*values_shape[:3], config.head_dim, slots), config.compute_dtype),
        values=jnp.zeros(values_shape, config.compute_dtype),
        valid_bs=jnp.zeros((batch, slots), jnp.bool_),
        index=jnp.zeros((), jnp.int32),
    )
