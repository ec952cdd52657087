"""LoRA adapters as pytrees of their own, apart from the frozen base weights.

The method composes many adapters on one base: N frozen organism adapters, selected per example, plus
one trainable introspection adapter shared by every example. So an adapter here is just weights:

    weights[target] = {"lora_a": [layers, (slots,) in..., rank], "lora_b": [layers, (slots,) rank, out...]}

A *stacked* adapter has a `slots` axis and is applied to example i through slot `ids[i]` (-1: none); a
*shared* adapter has no slot axis and is applied to every example. The forward pass adds
`scale * (dropout(x) @ lora_a) @ lora_b` per adapter to each targeted projection, so any number of
adapters compose in one pass and the base is never copied per adapter. `lora_b` starts at zero, so a
new adapter is the identity. `scale = alpha / rank`, as in peft.

Example: the IA trained on top of 64 frozen organisms is `forward(tokens, adapters=((organisms,
organism_ids_b), (ia, None)))`; only `ia.weights` receives gradients.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ia_jax import initializers

if TYPE_CHECKING:  # models.decoder imports this module
    from ia_jax.models.config import ModelConfig

# Our short names -> the projection modules they adapt, in both naming schemes users know.
TARGETS = {
    "q": ("self_attn", "q_proj"),
    "k": ("self_attn", "k_proj"),
    "v": ("self_attn", "v_proj"),
    "o": ("self_attn", "o_proj"),
    "gate": ("mlp", "gate_proj"),
    "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
}


class AdapterError(ValueError):
    """An adapter that does not fit the base model or its call; the message names target and shapes."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

    def __post_init__(self):
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise AdapterError(f"unknown LoRA targets {unknown}; choose from {list(TARGETS)}")
        if self.rank < 1:
            raise AdapterError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def projection_shapes(config: ModelConfig, target: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input dims, output dims) of a targeted projection, in the kernel layout of `decoder.Projection`."""
    d, f, h = config.hidden_size, config.intermediate_size, config.head_dim
    return {
        "q": ((d,), (config.num_heads, h)),
        "k": ((d,), (config.num_kv_heads, h)),
        "v": ((d,), (config.num_kv_heads, h)),
        "o": ((config.num_heads, h), (d,)),
        "gate": ((d,), (f,)),
        "up": ((d,), (f,)),
        "down": ((f,), (d,)),
    }[target]


def projection_axes(target: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Logical axis names of a projection's inputs and outputs (see `ia_jax.parallel.sharding`)."""
    return {
        "q": (("embed",), ("heads", "head_dim")),
        "k": (("embed",), ("kv_heads", "head_dim")),
        "v": (("embed",), ("kv_heads", "head_dim")),
        "o": (("heads", "head_dim"), ("embed",)),
        "gate": (("embed",), ("mlp",)),
        "up": (("embed",), ("mlp",)),
        "down": (("mlp",), ("embed",)),
    }[target]


@struct.dataclass
class LoraAdapter:
    weights: dict
    config: LoraConfig = struct.field(pytree_node=False)
    num_slots: int | None = struct.field(pytree_node=False, default=None)
    # Slot g serves rows [g * rows_per_slot, (g + 1) * rows_per_slot) of the batch (see `per_group`); the
    # ids then only switch rows off (-1). None: each row's id picks its slot.
    rows_per_slot: int | None = struct.field(pytree_node=False, default=None)

    @property
    def stacked(self) -> bool:
        return self.num_slots is not None

    def per_group(self, slots_g: jax.Array, rows_per_group: int) -> tuple[LoraAdapter, jax.Array]:
        """This stack gathered once into one slot per group of `rows_per_group` consecutive rows (group g
        runs slot `slots_g[g]`, -1 none), with the row ids that address it.

        A decode loop runs the same rows through the same organisms at every step. Gathering each group's
        weights once, rather than each row's in every projection of every step, keeps the loop from
        copying `rows x rank x (in + out)` weights per layer per token; and rows that share an organism,
        put next to each other by the sampler, read its weights once per step instead of once per row
        (batch 32 of 8 organisms: a quarter of the bytes)."""
        if not self.stacked or self.rows_per_slot is not None:
            raise ValueError("per_group needs a stacked adapter addressed by slot ids")
        if rows_per_group < 1:
            raise ValueError(f"per_group: rows_per_group={rows_per_group}, need >= 1")
        slots_g = jnp.asarray(slots_g, jnp.int32)
        groups = slots_g.shape[0]
        grouped = LoraAdapter(weights=jax.tree.map(lambda w: w[:, jnp.maximum(slots_g, 0)], self.weights),
                              config=self.config, num_slots=groups, rows_per_slot=rows_per_group)
        return grouped, jnp.repeat(jnp.where(slots_g >= 0, jnp.arange(groups, dtype=jnp.int32), -1), rows_per_group)

    def logical_axes(self) -> dict:
        """Per-weight logical axes, same structure as `weights`, for sharding adapters like the base."""
        slot = ("adapters",) if self.stacked else ()
        axes = {}
        for target in self.weights:
            in_axes, out_axes = projection_axes(target)
            axes[target] = {
                "lora_a": ("layers", *slot, *in_axes, "lora_rank"),
                "lora_b": ("layers", *slot, "lora_rank", *out_axes),
            }
        return axes


def init_adapter(model_config: ModelConfig, lora_config: LoraConfig, rng: jax.Array, *,
                 num_slots: int | None = None, dtype=jnp.float32) -> LoraAdapter:
    """A fresh adapter: `lora_a` uniform in +-1/sqrt(fan_in) (peft's kaiming init), `lora_b` zero."""
    weights = _init_weights(model_config, lora_config, rng, num_slots, jnp.dtype(dtype))
    return LoraAdapter(weights=weights, config=lora_config, num_slots=num_slots)


@functools.partial(jax.jit, static_argnums=(0, 1, 3, 4))
def _init_weights(model_config, lora_config, rng, num_slots, dtype) -> dict:
    """One compiled program for all weights: eager per-weight random ops would each compile."""
    slot = () if num_slots is None else (num_slots,)
    layers = model_config.num_layers
    weights = {}
    for target, key in zip(lora_config.targets, jax.random.split(rng, len(lora_config.targets))):
        in_shape, out_shape = projection_shapes(model_config, target)
        bound = 1.0 / math.sqrt(math.prod(in_shape))
        weights[target] = {
            "lora_a": initializers.uniform(key, (layers, *slot, *in_shape, lora_config.rank), dtype, -bound, bound),
            "lora_b": jnp.zeros((layers, *slot, lora_config.rank, *out_shape), dtype),
        }
    return weights


def check_fits(adapter: LoraAdapter, model_config: ModelConfig, name: str = "adapter") -> None:
    """Raises AdapterError naming the first weight whose shape does not fit `model_config`."""
    slot = () if adapter.num_slots is None else (adapter.num_slots,)
    rank = adapter.config.rank
    for target, pair in adapter.weights.items():
        if target not in TARGETS:
            raise AdapterError(f"{name}: unknown target {target!r}; choose from {list(TARGETS)}")
        in_shape, out_shape = projection_shapes(model_config, target)
        expected = {
            "lora_a": (model_config.num_layers, *slot, *in_shape, rank),
            "lora_b": (model_config.num_layers, *slot, rank, *out_shape),
        }
        for key, shape in expected.items():
            actual = tuple(pair[key].shape)
            if actual != shape:
                raise AdapterError(
                    f"{name}: {target}.{key} has shape {list(actual)}, but the base model needs {list(shape)}"
                )


def check_ids(ids_b, num_slots: int, name: str = "adapter") -> None:
    """Host-side check of per-example slot ids (-1 = no adapter); traced ids cannot be checked here."""
    if isinstance(ids_b, jax.core.Tracer):
        return
    ids_b = np.asarray(ids_b)
    bad = ids_b[(ids_b < -1) | (ids_b >= num_slots)]
    if bad.size:
        raise AdapterError(f"{name}: ids {sorted(set(bad.tolist()))} are outside the stack of {num_slots} "
                           f"adapters (valid: -1 for none, 0..{num_slots - 1})")
