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

from ia_jax.lora.dropout import dropout

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


def tokens_einsum(equation: str, x, kernel, **kwargs):
    """`einsum(equation, x, kernel)` with batch and time merged into one token axis.

    XLA:CPU runs a dot whose contraction spans two axes (the weight gradient of `btd,df->btf`
    contracts b and t) about 5x slower than the same dot on a flat `[tokens, d]` operand, and on
    accelerators the merge is free, so every projection and its gradients see flat tokens.
    """
    b, t = x.shape[:2]
    flat_x = x.reshape(b * t, *x.shape[2:])
    y = jnp.einsum(equation.replace("bt", "T"), flat_x, kernel, **kwargs)
    return y.reshape(b, t, *y.shape[1:])


def lora_delta(equation: str, target: str, x, loras: Sequence[LayerLora]):
    """Sum of every adapter's `scale * (dropout(x) @ a) @ b` for this projection, or None if none apply.

    Each adapter's low-rank activations `scale * (x @ a)` (`[b, t, r]`, cheap) are concatenated along
    the rank, and one product with the concatenated `b`s makes the whole delta: the full-width
    `[b, t, out]` tensor is written once, not once per adapter plus a sum and a scaling, which is most
    of what LoRA costs on a bandwidth-bound CPU (about a quarter of a projection with two adapters).
    Padding rows (id -1) of a stacked adapter get zero low-rank activations, so they add nothing.
    """
    in_letters, out_letters = _letters(equation)
    lows, bs, per_example = [], [], False
    for lora in loras:
        if target not in lora.weights:
            continue
        a = lora.weights[target]["lora_a"].astype(x.dtype)
        b = lora.weights[target]["lora_b"].astype(x.dtype)
        x_in = x
        if lora.dropout > 0.0 and lora.rng is not None:
            x_in = dropout(x, jax.random.fold_in(lora.rng, _TARGET_INDEX[target]), lora.dropout)
        if lora.ids_b is None:
            low_btr = tokens_einsum(f"bt{in_letters},{in_letters}r->btr", x_in, a)
        else:
            valid_b = lora.ids_b >= 0
            slots_b = jnp.where(valid_b, lora.ids_b, 0)
            low_btr = jnp.einsum(f"bt{in_letters},b{in_letters}r->btr", x_in, a[slots_b])
            low_btr = low_btr * valid_b[:, None, None].astype(low_btr.dtype)
            b = b[slots_b]
            per_example = True
        lows.append(low_btr * jnp.asarray(lora.scale, low_btr.dtype))
        bs.append(b)
    if not lows:
        return None
    low_btr = lows[0] if len(lows) == 1 else jnp.concatenate(lows, axis=-1)
    if not per_example:
        b = bs[0] if len(bs) == 1 else jnp.concatenate(bs, axis=0)
        return tokens_einsum(f"btr,r{out_letters}->bt{out_letters}", low_btr, b)
    rows = x.shape[0]
    # Shared `b`s are `[r, out...]`; stacked ones were gathered to `[b, r, out...]`.
    bs = [jnp.broadcast_to(b, (rows, *b.shape)) if b.ndim == 1 + len(out_letters) else b for b in bs]
    b = bs[0] if len(bs) == 1 else jnp.concatenate(bs, axis=1)
    return jnp.einsum(f"btr,br{out_letters}->bt{out_letters}", low_btr, b)
