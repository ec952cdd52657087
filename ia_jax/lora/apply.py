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
    """One adapter's weights for one layer, as the scan body sees them.

    `rows_per_slot`: a stacked adapter whose slot g already serves the g-th group of that many consecutive
    rows (gathered once per group, as the decode loop does), so `ids_b` only switches rows off (-1) and no
    per-step gather runs."""

    weights: dict
    ids_b: jax.Array | None
    scale: float
    dropout: float
    rng: jax.Array | None
    rows_per_slot: int | None = None


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
    Rows switched off (id -1) get zero low-rank activations, so they add nothing. A one-slot stack (the
    sampler's IA, on or off per row) runs as a shared adapter with that switch, gathering nothing.

    With an adapter gathered per group of G rows (`rows_per_slot`), the rows are viewed as `[b / G, G * t]`
    throughout, so each group's weights meet all its rows' tokens in one product.
    """
    groups = {lora.rows_per_slot for lora in loras if lora.rows_per_slot is not None and target in lora.weights}
    if len(groups) > 1:
        raise ValueError(f"adapters gathered per groups of different sizes {sorted(groups)} in one call")
    group = groups.pop() if groups else 1
    b, t = x.shape[:2]
    if b % group:
        raise ValueError(f"a batch of {b} rows does not split into groups of {group}")
    delta = _lora_delta(equation, target, x.reshape(b // group, group * t, *x.shape[2:]), loras, group, t)
    return delta if delta is None or group == 1 else delta.reshape(b, t, *delta.shape[2:])


def _lora_delta(equation: str, target: str, x, loras: Sequence[LayerLora], group: int, length: int):
    in_letters, out_letters = _letters(equation)
    shared, per_example = [], []  # (low-rank activations [b, t, r], b: [r, out...] or per row [b, r, out...])
    for lora in loras:
        if target not in lora.weights:
            continue
        a = lora.weights[target]["lora_a"].astype(x.dtype)
        b = lora.weights[target]["lora_b"].astype(x.dtype)
        x_in = x
        if lora.dropout > 0.0 and lora.rng is not None:
            x_in = dropout(x, jax.random.fold_in(lora.rng, _TARGET_INDEX[target]), lora.dropout)
        scale = jnp.asarray(lora.scale, x.dtype)
        if lora.ids_b is None:
            shared.append((tokens_einsum(f"bt{in_letters},{in_letters}r->btr", x_in, a) * scale, b))
            continue
        on_b = (lora.ids_b >= 0).astype(x.dtype) * scale
        # Each row's switch, laid out as the (grouped) rows: `[b / G, G * t, 1]`.
        on_b1r = on_b[:, None, None] if group == 1 else jnp.repeat(on_b, length).reshape(x.shape[0], -1, 1)
        if a.shape[0] == 1 and lora.rows_per_slot is None:
            shared.append((tokens_einsum(f"bt{in_letters},{in_letters}r->btr", x_in, a[0]) * on_b1r, b[0]))
            continue
        if lora.rows_per_slot is None:
            slots_b = jnp.maximum(lora.ids_b, 0)
            a, b = a[slots_b], b[slots_b]
        per_example.append((jnp.einsum(f"bt{in_letters},b{in_letters}r->btr", x_in, a) * on_b1r, b))
    if not shared and not per_example:
        return None
    t = x.shape[1]
    shared_rank = sum(low.shape[-1] for low, _ in shared)
    if per_example and shared and shared_rank >= t:
        # Decoding (t = 1): broadcasting the shared `b`s to every row would copy them `rows` times over;
        # a second full-width product costs less.
        return _per_example_delta(per_example) + _shared_delta(shared, out_letters)
    if not per_example:
        return _shared_delta(shared, out_letters)
    if not shared:
        return _per_example_delta(per_example)
    # Shared `b`s broadcast to `[b, r, out...]` join the per-row ones: one product for all adapters.
    low_rows, b_rows = _concat(per_example, 1)
    low_shared, b_shared = _concat(shared, 0)
    out_shape = b_rows.shape[2:]
    delta_bto = _rows_and_shared_delta(low_rows, low_shared, b_rows.reshape(*b_rows.shape[:2], -1),
                                       b_shared.reshape(b_shared.shape[0], -1))
    return delta_bto.reshape(*delta_bto.shape[:2], *out_shape)


def _all_b(b_rows_bro, b_shared_ro):
    rows = b_rows_bro.shape[0]
    return jnp.concatenate([b_rows_bro, jnp.broadcast_to(b_shared_ro, (rows, *b_shared_ro.shape))], axis=1)


@jax.custom_vjp
def _rows_and_shared_delta(low_rows_btr, low_shared_btr, b_rows_bro, b_shared_ro):
    """`[low_rows, low_shared] @ [b_rows; b_shared]` per row, with a gradient that differentiates only
    what is trained.

    Autodiff of the one product would form the gradient of the whole broadcast `[b, r, out]` stack:
    the frozen organisms' rows included, the output gradient copied into `[b, out, t]` for a dot that
    contracts time per row, and a sum over rows for the shared part (IA SFT step on the benchmark model:
    4.45 -> 4.13 s, median of 10). Here the shared (trained) `b` gets one flat `[tokens, r]` x
    `[tokens, out]` dot, per-row `b`s a gradient only when they are trained (organism training), and
    the backward pass keeps only the low-rank activations it reads, so remat need not recompute the
    rest.
    """
    low_btr = jnp.concatenate([low_rows_btr, low_shared_btr], axis=-1)
    return jnp.einsum("btr,bro->bto", low_btr, _all_b(b_rows_bro, b_shared_ro))


def _rows_and_shared_fwd(low_rows_btr, low_shared_btr, b_rows_bro, b_shared_ro):
    primals = (low_rows_btr, low_shared_btr, b_rows_bro, b_shared_ro)
    delta_bto = _rows_and_shared_delta(*(p.value for p in primals))
    need_lows, need_rows, need_shared = ((low_rows_btr.perturbed or low_shared_btr.perturbed),
                                         b_rows_bro.perturbed, b_shared_ro.perturbed)
    # `None` in place of what the backward pass will not read: residuals that remat would recompute.
    return delta_bto, (low_rows_btr.value if need_rows else None, low_shared_btr.value if need_shared else None,
                       b_rows_bro.value if need_lows else None, b_shared_ro.value if need_lows else None)


def _rows_and_shared_bwd(residuals, d_bto):
    low_rows_btr, low_shared_btr, b_rows_bro, b_shared_ro = residuals
    if isinstance(d_bto, jax.custom_derivatives.SymbolicZero):
        return None, None, None, None
    d_low_rows = d_low_shared = d_rows = d_shared = None
    if b_rows_bro is not None:
        d_low_btr = jnp.einsum("bto,bro->btr", d_bto, _all_b(b_rows_bro, b_shared_ro))
        rows_rank = b_rows_bro.shape[1]
        d_low_rows, d_low_shared = d_low_btr[..., :rows_rank], d_low_btr[..., rows_rank:]
    if low_rows_btr is not None:
        d_rows = jnp.einsum("btr,bto->bro", low_rows_btr, d_bto)
    if low_shared_btr is not None:
        d_shared = jnp.einsum("Tr,To->ro", low_shared_btr.reshape(-1, low_shared_btr.shape[-1]),
                              d_bto.reshape(-1, d_bto.shape[-1]))
    return d_low_rows, d_low_shared, d_rows, d_shared


_rows_and_shared_delta.defvjp(_rows_and_shared_fwd, _rows_and_shared_bwd, symbolic_zeros=True)


def _concat(pairs, b_axis):
    lows, bs = zip(*pairs)
    if len(pairs) == 1:
        return lows[0], bs[0]
    return jnp.concatenate(lows, axis=-1), jnp.concatenate(bs, axis=b_axis)


def _shared_delta(pairs, out_letters):
    low_btr, b = _concat(pairs, 0)
    return tokens_einsum(f"btr,r{out_letters}->bt{out_letters}", low_btr, b)


def _per_example_delta(pairs):
    """The output axes are flattened for the product (`_rows_delta`) and restored after it."""
    low_btr, b = _concat(pairs, 1)
    delta_bto = _rows_delta(low_btr, b.reshape(*b.shape[:2], -1))
    return delta_bto.reshape(*delta_bto.shape[:2], *b.shape[2:])


@jax.custom_vjp
def _rows_delta(low_btr, b_bro):
    """`low @ b` per row, with `b`'s gradient written `btr,bto->bro`.

    Autodiff's transpose of the product led XLA:CPU to copy the output gradient to `[b, out, t]` and
    run the `b` gradient dot in that layout, about 7x slower than this one (`[8, 256, 2048]`: 7.8
    against 1.2 ms): in the organism step, about 150 ms of copies and dots. As in
    `_rows_and_shared_delta`, only what the backward pass reads is kept.
    """
    return jnp.einsum("btr,bro->bto", low_btr, b_bro)


def _rows_fwd(low_btr, b_bro):
    delta_bto = _rows_delta(low_btr.value, b_bro.value)
    return delta_bto, (low_btr.value if b_bro.perturbed else None, b_bro.value if low_btr.perturbed else None)


def _rows_bwd(residuals, d_bto):
    low_btr, b_bro = residuals
    if isinstance(d_bto, jax.custom_derivatives.SymbolicZero):
        return None, None
    d_low = None if b_bro is None else jnp.einsum("bto,bro->btr", d_bto, b_bro)
    d_b = None if low_btr is None else jnp.einsum("btr,bto->bro", low_btr, d_bto)
    return d_low, d_b


_rows_delta.defvjp(_rows_fwd, _rows_bwd, symbolic_zeros=True)
