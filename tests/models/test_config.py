"""config.json parsing: both transformers dialects, and the published checkpoints' exact files."""

import pytest

from ia_jax import models

# Verbatim config.json of the published checkpoints (written by transformers 4.x).
LLAMA_3_3_70B_INSTRUCT = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 8192, "initializer_range": 0.02, "intermediate_size": 28672, "max_position_embeddings": 131072,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 64, "num_hidden_layers": 80,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.47.0.dev0", "use_cache": True, "vocab_size": 128256,
}
QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
    "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 40960,
    "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}


def test_published_llama_3_3_70b_config():
    config = models.from_hf_dict(LLAMA_3_3_70B_INSTRUCT)
    assert (config.model_type, config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (
        "llama", 80, 64, 8, 128)
    assert config.rope == models.RopeConfig(theta=500000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                            high_freq_factor=4.0, original_max_position_embeddings=8192)
    assert not config.tie_word_embeddings and not config.qk_norm and not config.qkv_bias
    assert config.eos_token_id == (128001, 128008, 128009)
    assert models.to_hf_dict(config)["eos_token_id"] == [128001, 128008, 128009]
    hash(config)  # configs are static arguments of jitted functions


def test_adapters_build_for_the_published_llama_config():
    import jax

    from ia_jax import lora

    small = models.from_hf_dict({**LLAMA_3_3_70B_INSTRUCT, "hidden_size": 64, "intermediate_size": 96,
                                 "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
                                 "head_dim": 8})
    adapter = lora.init_adapter(small, lora.LoraConfig(rank=2), jax.random.key(0))
    assert adapter.weights["q"]["lora_a"].shape == (2, 64, 2)


def test_published_qwen3_config_has_decoupled_head_dim():
    config = models.from_hf_dict(QWEN3_0_6B)
    assert config.head_dim == 128 != config.hidden_size // config.num_heads
    assert config.qk_norm and config.tie_word_embeddings and config.rope.theta == 1e6
    assert config.rope.rope_type == "default"


def test_transformers_5_dialect_round_trips():
    config = models.from_hf_dict(LLAMA_3_3_70B_INSTRUCT)
    written = models.to_hf_dict(config)
    assert "rope_theta" not in written and written["rope_parameters"]["rope_type"] == "llama3"
    assert models.from_hf_dict(written) == config


@pytest.mark.parametrize("field,value,message", [
    ("model_type", "gemma", r"model_type 'gemma' is not supported; supported: llama, qwen3, qwen2"),
    ("hidden_act", "gelu", r"hidden_act 'gelu' is not supported"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, r"rope type 'yarn' is not supported"),
    ("num_key_value_heads", 6, r"num_attention_heads \(64\) must be a multiple of num_key_value_heads \(6\)"),
])
def test_unsupported_settings_name_the_field(field, value, message):
    with pytest.raises(models.ConfigError, match=r"my/config\.json: " + message):
        models.from_hf_dict({**LLAMA_3_3_70B_INSTRUCT, field: value}, source="my/config.json")


def test_missing_required_field_is_named():
    hf = dict(QWEN3_0_6B)
    del hf["hidden_size"]
    with pytest.raises(models.ConfigError, match="required field 'hidden_size' is missing"):
        models.from_hf_dict(hf)
