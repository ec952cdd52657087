"""Rotary position embeddings in the rotate-half layout Hugging Face checkpoints are trained with.

Using rotate-half (not interleaved pairs) keeps q/k projection weights byte-compatible with
transformers, so checkpoint conversion needs no permutation. Frequencies are computed in float32
numpy, the way transformers computes them, because the `llama3` smoothing is sensitive to rounding.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ia_jax.models.config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """`[head_dim // 2]` float32 inverse frequencies, scaled as `rope.rope_type` asks."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float32(rope.theta) ** exponents)).astype(np.float32)
    if rope.rope_type == "linear":
        return (inv_freq / np.float32(rope.factor)).astype(np.float32)
    if rope.rope_type != "llama3":
        return inv_freq
    # Llama 3.1+: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    old_context = rope.original_max_position_embeddings
    low_freq_wavelen = old_context / rope.low_freq_factor
    high_freq_wavelen = old_context / rope.high_freq_factor
    wavelen = (2 * math.pi / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / np.float32(rope.factor), inv_freq).astype(np.float32)
    smooth = ((old_context / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)).astype(
        np.float32
    )
    smoothed = ((1 - smooth) * scaled / np.float32(rope.factor) + smooth * scaled).astype(np.float32)
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions_bt: jnp.ndarray, inv_freq_h: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos/sin tables `[batch, seq, head_dim]` for explicit per-token positions (padding-aware)."""
    angles_bth = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_h)
    angles_bth = jnp.concatenate([angles_bth, angles_bth], axis=-1)
    return jnp.cos(angles_bth), jnp.sin(angles_bth)


def apply_rope(x_btnh: jnp.ndarray, cos_bth: jnp.ndarray, sin_bth: jnp.ndarray) -> jnp.ndarray:
    half = x_btnh.shape[-1] // 2
    rotated_btnh = jnp.concatenate([-x_btnh[..., half:], x_btnh[..., :half]], axis=-1)
    cos_bt1h = cos_bth[:, :, None, :].astype(x_btnh.dtype)
    sin_bt1h = sin_bth[:, :, None, :].astype(x_btnh.dtype)
    return x_btnh * cos_bt1h + rotated_btnh * sin_bt1h
