"""One Flax NNX decoder for Llama 3.x, Qwen3 and Qwen2.5.

Module and attribute names follow Hugging Face (`model.layers.self_attn.q_proj`, ...), so checkpoint
conversion is a transpose/reshape per tensor. Decoder layers are stored stacked (every layer weight
has a leading `layers` axis) and run with `jax.lax.scan`: compile time stays flat in depth (80 layers
for Llama 3.3 70B) and what the backward pass keeps of each layer is a `jax.checkpoint` policy
around the scan body (`REMAT_POLICIES`). Decoding on CPU unrolls them instead (`layer_slices`).

Every weight carries `logical_axes` metadata (`embed`, `heads`, `mlp`, ...); `ia_jax.parallel.sharding`
maps those names to mesh axes with one rules table.

Shape suffixes: b batch, t query positions, s key positions, d hidden, n query heads, k kv heads,
g query heads per kv head, h head_dim, f intermediate, v vocab, l layers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import NamedSharding

from ia_jax import initializers
from ia_jax.lora.adapter import LoraAdapter, check_fits, check_ids
from ia_jax.lora.apply import LayerLora, lora_delta, tokens_einsum
from ia_jax.models import rope
from ia_jax.models.config import ModelConfig
from ia_jax.models.kv_cache import KVCache
from ia_jax.parallel.sharding import logical_to_spec

_INIT_STDDEV = 0.02  # transformers' initializer_range default, so from-scratch models start alike.

# What each layer keeps for the backward pass (`CausalLM.remat`, the recipes' `remat`):
# - "none": everything XLA wants, attention probabilities and dropout masks included;
# - "projections": the outputs of the weight matmuls (the token-flat dots, LoRA's low-rank products
#   included) and of each projection with its LoRA delta ("lora_projection": the per-row delta is a
#   batched dot, which the dot rule would recompute, at 0.1 s of an IA SFT step, and the plain dot
#   output it replaces is then not kept); attention, norms, activations and dropout masks are
#   recomputed from them. Less memory than "none" and faster too: the scan writes (and first
#   zero-fills) every kept tensor once per layer, which on a bandwidth-bound CPU cost more than the
#   recomputation (IA SFT step 4.4 -> 4.0 s, organism step 5.9 -> 4.7 s on the 48M benchmark model);
# - "full": only each layer's input; the whole layer runs again in the backward pass (about a third
#   more compute), what sequences of thousands of tokens on 70B layers need.
REMAT_POLICIES = {
    "none": None,
    "projections": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names("lora_projection")),
    "full": jax.checkpoint_policies.nothing_saveable,
}


def check_remat(name, field: str = "remat") -> str:
    if not isinstance(name, str) or name not in REMAT_POLICIES:
        raise ValueError(f"{field}={name!r}: choose one of {list(REMAT_POLICIES)} (what each layer keeps for the "
                         "backward pass; see ia_jax/models/decoder.py)")
    return name


def _normal(rngs: nnx.Rngs, shape, dtype, axes, **metadata) -> nnx.Param:
    return nnx.Param(initializers.normal(rngs.params(), shape, dtype, _INIT_STDDEV), logical_axes=axes, **metadata)


class Projection(nnx.Module):
    """A dense layer written as a named einsum, kernel laid out `[in..., out...]`."""

    def __init__(self, equation, in_shape, out_shape, in_axes, out_axes, *, bias, stack, config, rngs, target=None):
        prefix_axes = ("layers",) * len(stack)
        self.equation = equation
        self.target = target  # LoRA target name ("q", ..., "down"); None for the LM head
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

    def __call__(self, x, loras=(), kernels_out_first=False):
        """`kernels_out_first`: the kernel is laid out `[out..., in...]`, as `CausalLM.layer_slices` copies it.
        It is multiplied as one `[out, in]` matrix: XLA:CPU copied a kernel with two output axes into
        `[in, out]` at every decode step rather than contract it as it lies."""
        kernel = self.kernel[...].astype(self.dtype)
        if kernels_out_first:
            out_shape = kernel.shape[:kernel.ndim - self.kernel.get_metadata()["in_ndim"]]
            b, t = x.shape[:2]
            y_to = jnp.einsum("Ti,oi->To", x.reshape(b * t, -1), kernel.reshape(math.prod(out_shape), -1))
            y = y_to.reshape(b, t, *out_shape)
        else:
            y = tokens_einsum(self.equation, x, kernel)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        delta = lora_delta(self.equation, self.target, x, loras) if loras else None
        return y if delta is None else checkpoint_name(y + delta, "lora_projection")


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
                                 bias=config.qkv_bias, target="q", **common)
        self.k_proj = Projection("btd,dkh->btkh", (d,), (k, h), ("embed",), ("kv_heads", "head_dim"),
                                 bias=config.qkv_bias, target="k", **common)
        self.v_proj = Projection("btd,dkh->btkh", (d,), (k, h), ("embed",), ("kv_heads", "head_dim"),
                                 bias=config.qkv_bias, target="v", **common)
        self.o_proj = Projection("btnh,nhd->btd", (n, h), (d,), ("heads", "head_dim"), ("embed",),
                                 bias=config.o_bias, target="o", **common)
        if config.qk_norm:
            self.q_norm = RMSNorm(h, "head_dim", eps=config.rms_norm_eps, stack=stack, config=config)
            self.k_norm = RMSNorm(h, "head_dim", eps=config.rms_norm_eps, stack=stack, config=config)
        else:
            self.q_norm = self.k_norm = None
        self.num_kv_heads = k
        self.scale = h**-0.5

    def __call__(self, x_btd, cos_bth, sin_bth, visible_bts, loras=(), layer_cache=None, cache_index=None,
                 kernels_out_first=False):
        """`visible_bts` covers the t new tokens (s = t) or, with `layer_cache`, every cache slot.

        `layer_cache` is `(keys_lbkhs, values_lbksh, layer)`: the whole cache, updated in place at
        this layer. Carrying it through the layer scan (rather than scanning over per-layer slices,
        which rebuilds every layer's cache as a new output each step) keeps a decode step from
        copying the cache, which at batch 32 cost as much as the layers' matmuls. With `layer` None
        the keys and values are this layer's own `[b, k, h, s]` and `[b, k, s, h]` arrays (unrolled
        layers).
        """
        q_btnh = self.q_proj(x_btd, loras, kernels_out_first)
        k_btkh = self.k_proj(x_btd, loras, kernels_out_first)
        v_btkh = self.v_proj(x_btd, loras, kernels_out_first)
        if self.q_norm is not None:
            q_btnh, k_btkh = self.q_norm(q_btnh), self.k_norm(k_btkh)
        q_btnh = rope.apply_rope(q_btnh, cos_bth, sin_bth) * self.scale
        k_btkh = rope.apply_rope(k_btkh, cos_bth, sin_bth)
        v_bkth = v_btkh.transpose(0, 2, 1, 3)
        if layer_cache is None:
            return self.o_proj(causal_attention(q_btnh, k_btkh.transpose(0, 2, 1, 3), v_bkth, visible_bts),
                               loras, kernels_out_first), None
        k_bkht = k_btkh.transpose(0, 2, 3, 1)  # the cache's key layout, slots last
        keys, values, layer = layer_cache
        if layer is None:  # this layer's own cache: keys [b, k, h, s], values [b, k, s, h]
            keys = jax.lax.dynamic_update_slice(keys, k_bkht.astype(keys.dtype), (0, 0, 0, cache_index))
            values = jax.lax.dynamic_update_slice(values, v_bkth.astype(values.dtype), (0, 0, cache_index, 0))
            out_btnh = attention(q_btnh, keys, values, visible_bts, slots_last=True)
            return self.o_proj(out_btnh, loras, kernels_out_first), (keys, values)
        keys = jax.lax.dynamic_update_slice(keys, k_bkht[None].astype(keys.dtype), (layer, 0, 0, 0, cache_index))
        values = jax.lax.dynamic_update_slice(values, v_bkth[None].astype(values.dtype), (layer, 0, 0, cache_index, 0))
        out_btnh = attention(q_btnh, keys[layer], values[layer], visible_bts, slots_last=True)
        return self.o_proj(out_btnh, loras, kernels_out_first), (keys, values)


def _softmax(scores):
    """Softmax over the last axis. Written out: XLA:CPU fused `jax.nn.softmax` after the mask about
    twice as slowly (it recomputed the masked scores for the max and for the exponentials)."""
    peak = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    unnormalised = jnp.exp(scores - peak)
    return unnormalised / jnp.sum(unnormalised, axis=-1, keepdims=True)


def attention(q_btnh, k_bksh, v_bksh, visible_bts, slots_last: bool = False):
    """Grouped-query attention of already-scaled queries; `visible_bts` says which keys each query sees.

    Keys and values come kv-head major (`[b, k, s, h]`), and each kv head's query heads and positions
    are merged into one axis (`m = g * t`), so both dots are plain batched matmuls: about twice as fast
    on XLA:CPU as the same einsums with `b, k` among the free axes. `slots_last`: keys are `[b, k, h, s]`,
    the cache's layout, so that a decode step's `q k` is a plain matmul too; XLA:CPU ran it about twice
    as slowly with the cache's slots before `h` (batch 32: 1.2 against 0.7 ms per layer)."""
    b, t, n, h = q_btnh.shape
    k = k_bksh.shape[1]
    g = n // k
    q_bkmh = q_btnh.reshape(b, t, k, g, h).transpose(0, 2, 3, 1, 4).reshape(b, k, g * t, h)
    scores_bkgts = jnp.einsum("bkmh,bkhs->bkms" if slots_last else "bkmh,bksh->bkms", q_bkmh, k_bksh,
                              preferred_element_type=jnp.float32).reshape(b, k, g, t, -1)
    scores_bkgts = jnp.where(visible_bts[:, None, None], scores_bkgts, jnp.finfo(jnp.float32).min)
    probs_bkms = _softmax(scores_bkgts).astype(v_bksh.dtype).reshape(b, k, g * t, -1)
    out_bkgth = jnp.einsum("bkms,bksh->bkmh", probs_bkms, v_bksh).reshape(b, k, g, t, h)
    return out_bkgth.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def causal_attention(q_btnh, k_bkth, v_bkth, visible_bts, block: int = 128, max_blocks: int = 16):
    """`attention` over the sequence's own tokens, in query blocks that see only the keys up to their
    end: most of the masked upper triangle (of `q k^T`, the softmax and `p v`) is never computed.

    On the 2-core CPU benchmark (sequence 256) this function with `attention`'s layout and softmax
    took the IA SFT step from 4.67 s to 4.30 s (medians of 8, interleaved); blocks of 64 were no
    faster. At most `max_blocks` blocks, so long sequences do not unroll into many small programs."""
    t = q_btnh.shape[1]
    block = max(block, -(-t // max_blocks))
    if t <= block:
        return attention(q_btnh, k_bkth, v_bkth, visible_bts)
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        outs.append(attention(q_btnh[:, start:end], k_bkth[:, :, :end], v_bkth[:, :, :end],
                              visible_bts[:, start:end, :end]))
    return jnp.concatenate(outs, axis=1)


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, *, stack, rngs):
        d, f = config.hidden_size, config.intermediate_size
        common = dict(bias=config.mlp_bias, stack=stack, config=config, rngs=rngs)
        self.gate_proj = Projection("btd,df->btf", (d,), (f,), ("embed",), ("mlp",), target="gate", **common)
        self.up_proj = Projection("btd,df->btf", (d,), (f,), ("embed",), ("mlp",), target="up", **common)
        self.down_proj = Projection("btf,fd->btd", (f,), (d,), ("mlp",), ("embed",), target="down", **common)

    def __call__(self, x_btd, loras=(), kernels_out_first=False):
        hidden_btf = (jax.nn.silu(self.gate_proj(x_btd, loras, kernels_out_first))
                      * self.up_proj(x_btd, loras, kernels_out_first))
        return self.down_proj(hidden_btf, loras, kernels_out_first)


class DecoderLayer(nnx.Module):
    """Pre-norm block. Built with `stack=(num_layers,)`; the scan body sees one layer's slice."""

    def __init__(self, config: ModelConfig, *, stack, rngs):
        self.self_attn = Attention(config, stack=stack, rngs=rngs)
        self.mlp = MLP(config, stack=stack, rngs=rngs)
        norm = dict(eps=config.rms_norm_eps, stack=stack, config=config)
        self.input_layernorm = RMSNorm(config.hidden_size, "norm", **norm)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, "norm", **norm)

    def __call__(self, x_btd, cos_bth, sin_bth, visible_bts, loras=(), layer_cache=None, cache_index=None,
                 kernels_out_first=False):
        attended_btd, layer_cache = self.self_attn(self.input_layernorm(x_btd), cos_bth, sin_bth, visible_bts,
                                                   loras, layer_cache, cache_index, kernels_out_first)
        x_btd = x_btd + attended_btd
        return x_btd + self.mlp(self.post_attention_layernorm(x_btd), loras, kernels_out_first), layer_cache


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
        self.remat = "none"  # a REMAT_POLICIES name; only differentiated calls notice it
        # (mesh, rules) when running sharded: the residual stream is then pinned to the `batch` layout
        # between layers, so XLA never has to guess (and reshuffle) activation layouts.
        self.activation_mesh = None

    def base_layer_slices(self) -> tuple:
        """Each layer's weights as arrays of their own, projection kernels laid out `[out..., in...]`: the
        base's part of `layer_slices`, which a sampler takes once and reuses in every `generate` call.

        Inside a decode loop, XLA:CPU copies each weight's slice out of the stacked arrays before its
        dot reads it, at every step: about 40% of a batch-8 decode step of the benchmark model.
        Separate arrays are read in place. The price is a copy of the layer weights while the slices
        live, and a program that grows with depth (compiles take longer).

        A decode step multiplies a few rows by each kernel, and XLA:CPU runs that product about twice
        as fast with the contracted axes last in both operands (gate, up and down of the benchmark
        model at 8 rows: 12 against 24 ms per step)."""
        _, layer_state = nnx.split(self.model.layers)

        def layer_copy(variable, i):
            w_stacked, metadata = variable[...], variable.get_metadata()
            in_ndim = metadata.get("in_ndim")
            if in_ndim is None:  # not a projection kernel
                return variable.replace(w_stacked[i])
            order = (*range(in_ndim + 1, w_stacked.ndim), *range(1, in_ndim + 1))  # stacked kernel's axes
            axes = metadata.get("logical_axes")
            return variable.replace(jnp.transpose(w_stacked[i], [a - 1 for a in order]),
                                    logical_axes=None if axes is None else tuple(axes[a] for a in order))

        def is_variable(x):
            return isinstance(x, nnx.Variable)

        return tuple(jax.tree.map(lambda v: layer_copy(v, i), layer_state, is_leaf=is_variable)
                     for i in range(self.config.num_layers))

    def layer_slices(self, adapters=(), base_layers: tuple | None = None) -> tuple:
        """Each layer's weights and each adapter's, as arrays of their own: `__call__(layers=...)`.

        Taken once before a decode loop; `base_layers` (`base_layer_slices()`) reuses the base's part,
        so only the adapters (small) are sliced."""
        if base_layers is None:
            base_layers = self.base_layer_slices()
        elif len(base_layers) != self.config.num_layers:
            raise ValueError(f"base_layers: {len(base_layers)} slices for {self.config.num_layers} layers")
        adapter_weights = tuple(adapter.weights for adapter, _ in adapters)
        return tuple((layer, jax.tree.map(lambda w: w[i], adapter_weights)) for i, layer in enumerate(base_layers))

    def __call__(self, tokens_bt, *, positions_bt=None, attention_mask_bt=None, adapters=(), dropout_rng=None,
                 cache: KVCache | None = None, logit_positions_bl=None, layers=None):
        """Causal attention over real tokens only, with any number of LoRA adapters composed.

        `attention_mask_bt` (1 = real token, 0 = padding) hides padding keys. Positions default to the
        count of real tokens before each token, so a left-padded, right-padded or unpadded sequence
        gets the same logits on its real tokens; pass `positions_bt` to override.

        `adapters` is a sequence of `(LoraAdapter, ids_b)`: `ids_b` picks each example's slot of a
        stacked adapter (-1 = none) and is None for a shared adapter. LoRA dropout runs only when
        `dropout_rng` is given (training).

        `logit_positions_bl` (indices into t) computes logits `[batch, l, vocab]` at those positions
        only: a loss over answer tokens needs the LM head nowhere else.

        With a `cache` (see `kv_cache.py`) the tokens are appended at `cache.index`, attend to every
        valid slot before them, and the call returns `(logits, updated cache)`.

        `layers` (`layer_slices(adapters)`, same adapters) runs the layers as a Python loop over those
        slices instead of a scan, for decoding (no remat policy applies); a cache must then be
        `per_layer()`.
        """
        config = self.config
        tokens_bt = jnp.asarray(tokens_bt, jnp.int32)
        b, t = tokens_bt.shape
        adapters = tuple(adapters)
        for i, (adapter, ids_b) in enumerate(adapters):
            _check_adapter_call(adapter, ids_b, config, b, name=f"adapters[{i}]")
        if attention_mask_bt is None:
            real_bt = jnp.ones((b, t), jnp.bool_)
        else:
            real_bt = jnp.asarray(attention_mask_bt).astype(jnp.bool_)
        if cache is None:
            earlier_b = jnp.zeros((b,), jnp.int32)
            causal_ts = jnp.tril(jnp.ones((t, t), jnp.bool_))
            visible_bts = causal_ts[None] & real_bt[:, None, :]
        else:
            if not isinstance(cache.index, jax.core.Tracer) and int(cache.index) + t > cache.num_slots:
                # Under jit the write would be clamped silently, overwriting real tokens; callers that jit
                # (the sampler) size the cache as prompt + max new tokens.
                raise ValueError(f"cache holds {cache.num_slots} slots; {int(cache.index)} are used and "
                                 f"{t} more tokens do not fit")
            earlier_b = jnp.sum(cache.valid_bs, axis=1, dtype=jnp.int32)
            valid_bs = jax.lax.dynamic_update_slice(cache.valid_bs, real_bt, (0, cache.index))
            query_slots_t = cache.index + jnp.arange(t)
            causal_ts = jnp.arange(cache.num_slots)[None, :] <= query_slots_t[:, None]
            visible_bts = causal_ts[None] & valid_bs[:, None, :]
        if positions_bt is None:
            positions_bt = earlier_b[:, None] + jnp.maximum(jnp.cumsum(real_bt, axis=1) - 1, 0)
        cos_bth, sin_bth = rope.rope_cos_sin(
            positions_bt, rope.inverse_frequencies(config.rope, config.head_dim)
        )

        embedding_vd = self.model.embed_tokens.embedding[...]
        x_btd = self._constrain(jnp.take(embedding_vd, tokens_bt, axis=0).astype(config.compute_dtype))

        layer_def, layer_state = nnx.split(self.model.layers)
        adapter_weights = tuple(adapter.weights for adapter, _ in adapters)

        def run_layer(x_btd, one_layer_state, one_layer_adapters, layer_index, layer_cache):
            loras = []
            for i, ((adapter, ids_b), weights) in enumerate(zip(adapters, one_layer_adapters)):
                rng = None
                if dropout_rng is not None and adapter.config.dropout > 0:
                    rng = jax.random.fold_in(jax.random.fold_in(dropout_rng, i), layer_index)
                loras.append(LayerLora(weights, None if ids_b is None else jnp.asarray(ids_b, jnp.int32),
                                       adapter.config.scale, adapter.config.dropout, rng, adapter.rows_per_slot))
            layer = nnx.merge(layer_def, one_layer_state)
            x_btd, layer_cache = layer(x_btd, cos_bth, sin_bth, visible_bts, tuple(loras), layer_cache,
                                       None if cache is None else cache.index, kernels_out_first=layers is not None)
            return self._constrain(x_btd), layer_cache

        def layer_step(carry, layer_inputs):
            x_btd, caches = carry
            one_layer_state, one_layer_adapters, layer_index = layer_inputs
            return run_layer(x_btd, one_layer_state, one_layer_adapters, layer_index,
                             None if caches is None else (*caches, layer_index)), None

        if check_remat(self.remat) != "none":
            layer_step = jax.checkpoint(layer_step, policy=REMAT_POLICIES[self.remat])
        caches = None if cache is None else (cache.keys, cache.values)
        if layers is not None:
            if len(layers) != config.num_layers:
                raise ValueError(f"layers: {len(layers)} slices for {config.num_layers} layers")
            if cache is not None and not cache.is_per_layer:
                raise ValueError("layers: unrolled layers need a per_layer() cache")
            keys, values = (None, None) if cache is None else (list(cache.keys), list(cache.values))
            if len(layers[0][1]) != len(adapters):
                raise ValueError(f"layers: sliced with {len(layers[0][1])} adapters, called with {len(adapters)}")
            for i, (one_layer_state, one_layer_adapters) in enumerate(layers):
                x_btd, layer_cache = run_layer(x_btd, one_layer_state, one_layer_adapters, i,
                                               None if cache is None else (keys[i], values[i], None))
                if cache is not None:
                    keys[i], values[i] = layer_cache
            caches = None if cache is None else (tuple(keys), tuple(values))
        else:
            if cache is not None and cache.is_per_layer:
                raise ValueError("a per_layer() cache needs `layers` (layer_slices)")
            layer_indices = jnp.arange(config.num_layers, dtype=jnp.int32)
            (x_btd, caches), _ = jax.lax.scan(layer_step, (x_btd, caches),
                                              (layer_state, adapter_weights, layer_indices))
        if logit_positions_bl is not None:
            x_btd = jnp.take_along_axis(x_btd, logit_positions_bl[..., None], axis=1)
        x_btd = self.model.norm(x_btd)

        if self.lm_head is None:
            head_dv = embedding_vd.T
        else:
            head_dv = self.lm_head.kernel[...]
        logits_btv = tokens_einsum("btd,dv->btv", x_btd, head_dv.astype(config.compute_dtype),
                                   preferred_element_type=jnp.float32)
        if cache is None:
            return logits_btv
        keys, values = caches
        return logits_btv, KVCache(keys=keys, values=values, valid_bs=valid_bs, index=cache.index + t)

    def _constrain(self, x_btd):
        if self.activation_mesh is None:
            return x_btd
        mesh, rules = self.activation_mesh
        spec = logical_to_spec(("batch", "seq", "activation_embed"), x_btd.shape, mesh, rules)
        return jax.lax.with_sharding_constraint(x_btd, NamedSharding(mesh, spec))


def _check_adapter_call(adapter, ids_b, config: ModelConfig, batch: int, name: str) -> None:
    if not isinstance(adapter, LoraAdapter):
        raise TypeError(f"{name}: expected (LoraAdapter, ids_b), got {type(adapter).__name__}")
    check_fits(adapter, config, name)
    if adapter.stacked:
        if ids_b is None:
            raise ValueError(f"{name}: a stacked adapter of {adapter.num_slots} slots needs per-example ids")
        if jnp.shape(ids_b) != (batch,):
            raise ValueError(f"{name}: ids have shape {list(jnp.shape(ids_b))}, expected [{batch}] (one per example)")
        check_ids(ids_b, adapter.num_slots, name)
        if adapter.rows_per_slot is not None and adapter.num_slots * adapter.rows_per_slot != batch:
            raise ValueError(f"{name}: an adapter of {adapter.num_slots} groups of {adapter.rows_per_slot} rows "
                             f"applied to a batch of {batch}")
    elif ids_b is not None:
        raise ValueError(f"{name}: a shared adapter takes ids None, not per-example ids")
