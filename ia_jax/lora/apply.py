"""The LoRA term a projection adds, for any number of shared and per-example (stacked) adapters.

The einsums are derived from the projection's own named equation (`btd,dnh->btnh`), so every target
(q, k, v, o, gate, up, down) shares one code path. A stacked adapter gathers each example's slot
(`lora_a[ids_b]`), which keeps one base copy however many organisms a batch mixes.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

_TARGET_INDEX = {"q": 0, "k": 1, "v": 2, "o": 3, "gate": 4, "up": 5, "down": 6}


@dataclasses.dataclass(frozen=True)
class LayerLora:
    """One adapter's weights for one layer, as the scan body sees them."""

    weights: dict
    ids_b: jax.Array | None
    scale: float
    dropout: float
    rng: jax.Array | None


def _letters(equation: str) -> tuple[str, str]:
    """Input and output feature letters of a `bt<in>,<in><out>->bt<out>` equation."""
    inputs, output = equation.split("->")
    x_letters = inputs.split(",")[0]
    return x_letters[2:], output[2:]


def lora_delta(equation: str, target: str, x, loras: Sequence[LayerLora]):
    """Sum of every adapter's `scale * (dropout(x) @ a) @ b` for this projection, or None if none apply."""
    in_letters, out_letters = _letters(equation)
    total = None
    for lora in loras:
        if target not in lora.weights:
            continue
        a = lora.weights[target]["lora_a"].astype(x.dtype)
        b = lora.weights[target]["lora_b"].astype(x.dtype)
        x_in = x
        if lora.dropout > 0.0 and lora.rng is not None:
            keep = 1.0 - lora.dropout
            mask = jax.random.bernoulli(jax.random.fold_in(lora.rng, _TARGET_INDEX[target]), keep, x.shape)
            x_in = jnp.where(mask, x / keep, 0).astype(x.dtype)
        if lora.ids_b is None:
            low_btr = jnp.einsum(f"bt{in_letters},{in_letters}r->btr", x_in, a)
            delta = jnp.einsum(f"btr,r{out_letters}->bt{out_letters}", low_btr, b)
        else:
            valid_b = lora.ids_b >= 0
            slots_b = jnp.where(valid_b, lora.ids_b, 0)
            low_btr = jnp.einsum(f"bt{in_letters},b{in_letters}r->btr", x_in, a[slots_b])
            delta = jnp.einsum(f"btr,br{out_letters}->bt{out_letters}", low_btr, b[slots_b])
            delta = delta * valid_b.reshape((-1,) + (1,) * (delta.ndim - 1)).astype(delta.dtype)
        delta = delta * jnp.asarray(lora.scale, delta.dtype)
        total = delta if total is None else total + delta
    return total
