"""Tiny random transformers models (torch CPU): the independent reference for our numbers."""

import json
import os

import numpy as np

VOCAB = 97

# Several shapes per family: GQA and MHA, tied and untied, head_dim != hidden/heads, llama3 RoPE with
# sequences longer than original_max_position_embeddings, q/k/v bias, both config.json dialects.
REFERENCE_CONFIGS = {
    "llama_gqa_llama3rope": dict(
        family="llama", hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, head_dim=12, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8},
    ),
    "llama_mha_tied_bias_4x": dict(
        family="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True, mlp_bias=True, rope_theta=10000.0,
        config_format="4.x",
    ),
    "qwen3_gqa_tied": dict(
        family="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
    ),
    "qwen3_untied_4x": dict(
        family="qwen3", hidden_size=40, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, tie_word_embeddings=False, rope_theta=1000000.0, config_format="4.x",
    ),
    "qwen2_bias": dict(
        family="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False,
    ),
}


def _to_4x_config(path):
    """Rewrites a transformers-5 config.json the way 4.x wrote it (published Llama 3.3 / Qwen3 files)."""
    config_path = os.path.join(path, "config.json")
    with open(config_path) as f:
        hf = json.load(f)
    rope = dict(hf.pop("rope_parameters"))
    hf["rope_theta"] = rope.pop("rope_theta")
    hf["rope_scaling"] = None if rope.get("rope_type") == "default" else rope
    hf["torch_dtype"] = hf.pop("dtype", "float32")
    hf["transformers_version"] = "4.51.0"
    hf.pop("layer_types", None)
    with open(config_path, "w") as f:
        json.dump(hf, f, indent=2)


def build_reference(name, path, seed=0):
    """A random transformers model saved with `save_pretrained`; returns the torch model.

    Every weight (norm scales and biases too) is perturbed away from its default init so a mix-up
    between any two tensors shows in the logits.
    """
    import torch
    import transformers

    spec = dict(REFERENCE_CONFIGS[name])
    family = spec.pop("family")
    config_format = spec.pop("config_format", "5.x")
    config_class = {"llama": transformers.LlamaConfig, "qwen3": transformers.Qwen3Config,
                    "qwen2": transformers.Qwen2Config}[family]
    config = config_class(vocab_size=VOCAB, **spec)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(path)
    if config_format == "4.x":
        _to_4x_config(path)
    return model


def torch_logits(model, tokens, attention_mask=None):
    import torch

    with torch.no_grad():
        kwargs = {}
        if attention_mask is not None:
            kwargs["attention_mask"] = torch.tensor(attention_mask)
        return model(torch.tensor(np.asarray(tokens)), **kwargs).logits.float().numpy()


def relative_max_error(actual, expected):
    return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))
