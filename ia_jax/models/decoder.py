"""One Flax NNX decoder for Llama 3.x, Qwen3 and Qwen2.5.

Module and attribute names follow Hugging Face (`model.layers.self_attn.q_proj`, ...), so checkpoint
conversion is a transpose/reshape per tensor. Decoder layers are stored stacked (every layer weight
has a leading `layers` axis) and run with `jax.lax.scan`: compile time stays flat in depth (80 layers
for Llama 3.3 70B) and per-layer rematerialisation is a `jax.checkpoint` around the scan body.

Every weight carries `logical_axes` metadata (`embed`, `heads`, `mlp`, ...); `ia_jax.parallel.sharding`
maps those names to mesh axes with one rules table.

Shape suffixes: b batch, t query positions, s key positions, d hidden, n query heads, k kv heads,
g query heads per kv head, h head_dim, f intermediate, v vocab, l layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ia_jax.models import rope
from ia_jax.models.config import ModelConfig

_INIT_STDDEV = 0.02  # transformers' initializer_range default, so from-scratch models start alike.


def _normal(rngs: nnx.Rngs, shape, dtype, axes, **metadata) -> nnx.Param:
    return nnx.Param(_INIT_STDDEV * jax.random.normal(rngs.params(), shape, dtype), logical_axes=axes, **metadata)


class Projection(nnx.Module):
    """A dense layer written as a named einsum, kernel laid out `[in..., out...]`."""

    def __init__(self, equation, in_shape, out_shape, in_axes, out_axes, *, bias, stack, config, rngs):
        prefix_axes = ("layers",) * len(stack)
        self.equation = equation
        self.dtype = config.compute_dtype
        # `in_ndim`: how many kernel axes (after `layers`) are inputs; checkpoint conversion and LoRA need it.
        self.kernel = _normal(
            rngs,
            (*stack, *in_shape, *out_shape),
            config.weight_dtype,
            (*prefix_axes, *in_axes, *out_axes),
            in_ndim=len(in_shape),
        )
        self.bias = (
            nnx.Param(jnp.zeros((*stack, *out_shape), config.weight_dtype), logical_axes=(*prefix_axes, *out_axes))
            if bias
            else None
        )

    def __call__(self, x):
        y = jnp.einsum(self.equation, x, self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """Normalises in float32 and scales in the compute dtype, exactly as transformers does."""

    def __init__(self, dim, axis_name, *, eps, stack, config):
        self.eps = eps
        self.dtype = config.compute_dtype
        self.weight = nnx.Param(
            jnp.ones((*stack, dim), config.weight_dtype), logical_axes=(*("layers",) * len(stack), axis_name)
        )

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(variance + self.eps)).astype(self.dtype)
        return self.weight[...].astype(self.dtype) * normed


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, stack, rngs):
        d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        common = dict(stack=stack, config=config, rngs=rngs)
        self.q_proj = Projection("btd,dnh->btnh", (d,), (n, h), ("embed",), ("heads", "head_dim"),
                                 bias=config.qkv_bias, **common)
        self.k_proj = Projection("btd,dkh->btkh", (d,), (k, h), ("embed",), ("kv_heads", "head_dim"),
                                 bias=config.qkv_bias, **common)
        self.v_proj = Projection("btd,dkh->btkh", (d,), (k, h), ("embed",), ("kv_heads", "head_dim"),
                                 bias=config.qkv_bias, **common)
        self.o_proj = Projection("btnh,nhd->btd", (n, h), (d,), ("heads", "head_dim"), ("embed",),
                                 bias=config.o_bias, **common)
        if config.qk_norm:
            self.q_norm = RMSNorm(h, "head_dim", eps=config.rms_norm_eps, stack=stack, config=config)
            self.k_norm = RMSNorm(h, "head_dim", eps=config.rms_norm_eps, stack=stack, config=config)
        else:
            self.q_norm = self.k_norm = None
        self.num_kv_heads = k
        self.scale = h**-0.5

    def __call__(self, x_btd, cos_bth, sin_bth, visible_bts):
        q_btnh = self.q_proj(x_btd)
        k_btkh = self.k_proj(x_btd)
        v_btkh = self.v_proj(x_btd)
        if self.q_norm is not None:
            q_btnh, k_btkh = self.q_norm(q_btnh), self.k_norm(k_btkh)
        q_btnh = rope.apply_rope(q_btnh, cos_bth, sin_bth)
        k_btkh = rope.apply_rope(k_btkh, cos_bth, sin_bth)
        b, t, n, h = q_btnh.shape
        q_btkgh = q_btnh.reshape(b, t, self.num_kv_heads, n // self.num_kv_heads, h)
        scores_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_btkh, preferred_element_type=jnp.float32)
        scores_bkgts = jnp.where(visible_bts[:, None, None], scores_bkgts * self.scale, jnp.finfo(jnp.float32).min)
        probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1).astype(v_btkh.dtype)
        out_btkgh = jnp.einsum("bkgts,bskh->btkgh", probs_bkgts, v_btkh)
        return self.o_proj(out_btkgh.reshape(b, t, n, h))


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, *, stack, rngs):
        d, f = config.hidden_size, config.intermediate_size
        common = dict(bias=config.mlp_bias, stack=stack, config=config, rngs=rngs)
        self.gate_proj = Projection("btd,df->btf", (d,), (f,), ("embed",), ("mlp",), **common)
        self.up_proj = Projection("btd,df->btf", (d,), (f,), ("embed",), ("mlp",), **common)
        self.down_proj = Projection("btf,fd->btd", (f,), (d,), ("mlp",), ("embed",), **common)

    def __call__(self, x_btd):
        return self.down_proj(jax.nn.silu(self.gate_proj(x_btd)) * self.up_proj(x_btd))


class DecoderLayer(nnx.Module):
    """Pre-norm block. Built with `stack=(num_layers,)`; the scan body sees one layer's slice."""

    def __init__(self, config: ModelConfig, *, stack, rngs):
        self.self_attn = Attention(config, stack=stack, rngs=rngs)
        self.mlp = MLP(config, stack=stack, rngs=rngs)
        norm = dict(eps=config.rms_norm_eps, stack=stack, config=config)
        self.input_layernorm = RMSNorm(config.hidden_size, "norm", **norm)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, "norm", **norm)

    def __call__(self, x_btd, cos_bth, sin_bth, visible_bts):
        x_btd = x_btd + self.self_attn(self.input_layernorm(x_btd), cos_bth, sin_bth, visible_bts)
        return x_btd + self.mlp(self.post_attention_layernorm(x_btd))


class Embedding(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs):
        self.embedding = _normal(rngs, (config.vocab_size, config.hidden_size), config.weight_dtype, ("vocab", "embed"))


class Model(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs):
        self.embed_tokens = Embedding(config, rngs=rngs)
        self.layers = DecoderLayer(config, stack=(config.num_layers,), rngs=rngs)
        self.norm = RMSNorm(config.hidden_size, "norm", eps=config.rms_norm_eps, stack=(), config=config)


class CausalLM(nnx.Module):
    """`CausalLM(config, rngs=...)(tokens_bt)` -> float32 logits `[batch, seq, vocab]`."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = Model(config, rngs=rngs)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Projection("btd,dv->btv", (config.hidden_size,), (config.vocab_size,), ("embed",),
                                      ("vocab",), bias=False, stack=(), config=config, rngs=rngs)
        self.remat = False

    def __call__(self, tokens_bt, *, positions_bt=None, attention_mask_bt=None):
        """Causal attention over real tokens only.

        `attention_mask_bt` (1 = real token, 0 = padding) hides padding keys. Positions default to the
        count of real tokens before each token, so a left-padded, right-padded or unpadded sequence
        gets the same logits on its real tokens; pass `positions_bt` to override.
        """
        config = self.config
        tokens_bt = jnp.asarray(tokens_bt, jnp.int32)
        b, t = tokens_bt.shape
        if attention_mask_bt is None:
            real_bt = jnp.ones((b, t), jnp.bool_)
        else:
            real_bt = jnp.asarray(attention_mask_bt).astype(jnp.bool_)
        if positions_bt is None:
            positions_bt = jnp.maximum(jnp.cumsum(real_bt, axis=1) - 1, 0)
        causal_ts = jnp.tril(jnp.ones((t, t), jnp.bool_))
        visible_bts = causal_ts[None] & real_bt[:, None, :]
        cos_bth, sin_bth = rope.rope_cos_sin(
            positions_bt, rope.inverse_frequencies(config.rope, config.head_dim)
        )

        embedding_vd = self.model.embed_tokens.embedding[...]
        x_btd = jnp.take(embedding_vd, tokens_bt, axis=0).astype(config.compute_dtype)

        layer_def, layer_state = nnx.split(self.model.layers)

        def layer_step(x_btd, one_layer_state):
            layer = nnx.merge(layer_def, one_layer_state)
            return layer(x_btd, cos_bth, sin_bth, visible_bts), None

        if self.remat:
            layer_step = jax.checkpoint(layer_step)
        x_btd, _ = jax.lax.scan(layer_step, x_btd, layer_state)
        x_btd = self.model.norm(x_btd)

        if self.lm_head is None:
            head_dv = embedding_vd.T
        else:
            head_dv = self.lm_head.kernel[...]
        return jnp.einsum(
            "btd,dv->btv", x_btd, head_dv.astype(config.compute_dtype), preferred_element_type=jnp.float32
        )
