"""Folding one adapter (one slot of a stacked adapter) into the base weights, and taking it out again.

Merged models are how an organism is exported as a full checkpoint and how tests check composed
forwards: base + stacked slot i + shared adapter must equal the base with both merged.
"""

from __future__ import annotations

from flax import nnx

from ia_jax.lora.adapter import TARGETS, LoraAdapter, check_fits


def _fold(model, adapter: LoraAdapter, slot: int | None, sign: float):
    check_fits(adapter, model.config)
    if adapter.stacked and slot is None:
        raise ValueError(f"a stacked adapter of {adapter.num_slots} slots needs the slot to merge")
    if adapter.stacked and not 0 <= slot < adapter.num_slots:
        raise ValueError(f"slot {slot} is outside the stack of {adapter.num_slots} adapters")
    merged = nnx.clone(model)  # new Variables sharing the arrays; we replace arrays, never mutate them
    for target, pair in adapter.weights.items():
        a, b = pair["lora_a"], pair["lora_b"]
        if adapter.stacked:
            a, b = a[:, slot], b[:, slot]
        kernel = getattr(getattr(merged.model.layers, TARGETS[target][0]), TARGETS[target][1]).kernel
        base = kernel.get_value()
        a2 = a.reshape(a.shape[0], -1, a.shape[-1]).astype("float32")
        b2 = b.reshape(b.shape[0], b.shape[1], -1).astype("float32")
        delta = (a2 @ b2).reshape(base.shape) * adapter.config.scale
        kernel.set_value((base.astype("float32") + sign * delta).astype(base.dtype))
    return merged


def merge(model, adapter: LoraAdapter, slot: int | None = None):
    """A new model with `adapter` (slot `slot` if stacked) folded in; `model` is left unchanged."""
    return _fold(model, adapter, slot, 1.0)


def unmerge(model, adapter: LoraAdapter, slot: int | None = None):
    """Inverse of `merge` (exact up to floating-point rounding of the base weights)."""
    return _fold(model, adapter, slot, -1.0)
