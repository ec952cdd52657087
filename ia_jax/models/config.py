"""One config for every supported decoder family, read from and written to Hugging Face `config.json`.

Llama 3.x, Qwen3 and Qwen2.5 differ only in a few switches (q/k RMSNorm, q/k/v bias, tied embeddings,
RoPE scaling), so one dataclass with those switches lets one decoder serve all of them. Parsing
accepts both `config.json` dialects in the wild: transformers 4.x (`rope_theta` + `rope_scaling`,
as in the published Llama 3.3 and Qwen3 checkpoints) and 5.x (`rope_parameters`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from ia_jax.storage import gcs

SUPPORTED_MODEL_TYPES = ("llama", "qwen3", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ConfigError(ValueError):
    """A config.json (or override) that this project cannot run; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture plus numerics. `param_dtype` is how weights are stored, `dtype` how they compute."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = RopeConfig()
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 8192
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None  # a tuple, not a list: configs are hashable jit statics
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"model_type {self.model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads ({self.num_kv_heads})"
            )
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in _DTYPES:
                raise ConfigError(f"{field}={getattr(self, field)!r}; choose one of {', '.join(_DTYPES)}")
        if self.rope.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"rope_type {self.rope.rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return _DTYPES[self.param_dtype]

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _rope_from_hf(hf: dict[str, Any], source: str) -> RopeConfig:
    """Reads RoPE settings from either dialect; 5.x nests theta inside `rope_parameters`."""
    params = hf.get("rope_parameters")
    if params is None:
        params = dict(hf.get("rope_scaling") or {})
        if "rope_theta" in hf:
            params.setdefault("rope_theta", hf["rope_theta"])
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"{source}: rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    defaults = RopeConfig()
    return RopeConfig(
        theta=float(params.get("rope_theta", defaults.theta)),
        rope_type=rope_type,
        factor=float(params.get("factor", defaults.factor)),
        low_freq_factor=float(params.get("low_freq_factor", defaults.low_freq_factor)),
        high_freq_factor=float(params.get("high_freq_factor", defaults.high_freq_factor)),
        original_max_position_embeddings=int(
            params.get("original_max_position_embeddings", defaults.original_max_position_embeddings)
        ),
    )


def _require(hf: dict[str, Any], key: str, source: str):
    if key not in hf:
        raise ConfigError(f"{source}: required field {key!r} is missing")
    return hf[key]


def from_hf_dict(hf: dict[str, Any], source: str = "config.json", **overrides) -> ModelConfig:
    """Builds a ModelConfig from a parsed config.json; `overrides` set dtype/param_dtype and the like."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{source}: hidden_act {act!r} is not supported; only 'silu'")
    if hf.get("use_sliding_window"):
        raise ConfigError(f"{source}: use_sliding_window=true is not supported")
    if hf.get("pretraining_tp", 1) != 1:
        raise ConfigError(f"{source}: pretraining_tp={hf['pretraining_tp']} is not supported; only 1")
    num_heads = int(_require(hf, "num_attention_heads", source))
    hidden = int(_require(hf, "hidden_size", source))
    attention_bias = bool(hf.get("attention_bias", False))
    fields = dict(
        model_type=model_type,
        vocab_size=int(_require(hf, "vocab_size", source)),
        hidden_size=hidden,
        intermediate_size=int(_require(hf, "intermediate_size", source)),
        num_layers=int(_require(hf, "num_hidden_layers", source)),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or hidden // num_heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope=_rope_from_hf(hf, source),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v bias and never an o bias; Llama's attention_bias covers all four.
        qkv_bias=True if model_type == "qwen2" else attention_bias,
        o_bias=attention_bias if model_type == "llama" else False,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(hf["eos_token_id"]) if isinstance(hf.get("eos_token_id"), list) else hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
    )
    if model_type == "qwen3" and attention_bias:
        fields["qkv_bias"] = fields["o_bias"] = True
    fields.update(overrides)
    try:
        return ModelConfig(**fields)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_hf_config(path: str, **overrides) -> ModelConfig:
    """Reads `config.json` from checkpoint folder `path`, local or `gs://`."""
    if gcs.is_gcs(path):
        config_path = gcs.join(path, "config.json")
        try:
            text = gcs.read_text(config_path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{config_path}: no config.json in the checkpoint directory") from e
    else:
        config_path = os.path.join(path, "config.json")
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"{config_path}: no config.json in the checkpoint directory")
        with open(config_path, encoding="utf-8") as f:
            text = f.read()
    try:
        hf = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config_path}: not valid JSON ({e})") from None
    return from_hf_dict(hf, source=config_path, **overrides)


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def to_hf_dict(config: ModelConfig) -> dict[str, Any]:
    """The config.json transformers 5.x writes (`rope_parameters`), which it also reads back."""
    rope: dict[str, Any] = {"rope_type": config.rope.rope_type, "rope_theta": config.rope.theta}
    if config.rope.rope_type in ("llama3", "linear"):
        rope["factor"] = config.rope.factor
    if config.rope.rope_type == "llama3":
        rope.update(
            low_freq_factor=config.rope.low_freq_factor,
            high_freq_factor=config.rope.high_freq_factor,
            original_max_position_embeddings=config.rope.original_max_position_embeddings,
        )
    hf: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[config.model_type]],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": list(config.eos_token_id) if isinstance(config.eos_token_id, tuple) else config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "dtype": config.param_dtype,
    }
    if config.model_type == "llama":
        hf["attention_bias"] = config.qkv_bias
        hf["mlp_bias"] = config.mlp_bias
    elif config.model_type == "qwen3":
        hf["attention_bias"] = config.qkv_bias
    return hf
