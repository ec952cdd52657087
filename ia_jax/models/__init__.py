"""Decoder ports (Llama 3.x, Qwen3, Qwen2.5) and Hugging Face checkpoint I/O.

    from ia_jax import models
    model = models.load_hf("path/to/hf_dir")
    logits_btv = model(tokens_bt)
"""

from ia_jax.models.config import ConfigError, ModelConfig, RopeConfig, from_hf_dict, load_hf_config, to_hf_dict
from ia_jax.models.decoder import CausalLM
from ia_jax.models.hf_checkpoint import CheckpointError, load_hf, save_hf

__all__ = [
    "CausalLM",
    "CheckpointError",
    "ConfigError",
    "ModelConfig",
    "RopeConfig",
    "from_hf_dict",
    "load_hf",
    "load_hf_config",
    "save_hf",
    "to_hf_dict",
]
