"""PEFT adapters in and out: peft must load what we write, and we must load what peft writes."""

import jax
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import VOCAB, relative_max_error

from ia_jax import lora, models
from ia_jax.lora.peft_io import load_peft, save_peft, stack_adapters

TOKENS = np.random.RandomState(3).randint(0, VOCAB, (2, 12)).astype(np.int32)


@nnx.jit
def _forward(model, tokens, adapters):
    return model(tokens, adapters=adapters)


def _random_adapter(config, lora_config, seed, num_slots=None):
    rng = np.random.default_rng(seed)
    adapter = lora.init_adapter(config, lora_config, jax.random.key(seed), num_slots=num_slots)
    return adapter.replace(weights=jax.tree.map(lambda x: 0.2 * rng.standard_normal(x.shape, np.float32),
                                                adapter.weights))


def _peft_logits(base_dir, adapter_dir):
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.numpy()


@pytest.mark.parametrize("name", ["llama_gqa_llama3rope", "qwen3_gqa_tied"])
def test_exported_slot_loads_in_peft_with_matching_logits(reference_checkpoint, tmp_path, name):
    path, _ = reference_checkpoint(name)
    model = models.load_hf(path)
    stack = _random_adapter(model.config, lora.LoraConfig(rank=4, alpha=6.0, targets=("q", "k", "o", "up", "down")),
                            0, num_slots=3)
    save_peft(stack, str(tmp_path), slot=1)
    ours = _forward(model, TOKENS, [(stack, np.array([1, 1], np.int32))])
    assert relative_max_error(ours, _peft_logits(path, str(tmp_path))) < 1e-4


def test_peft_trained_adapter_imports_with_matching_logits(reference_checkpoint, tmp_path):
    path, _ = reference_checkpoint("qwen3_untied_4x")
    base = transformers.AutoModelForCausalLM.from_pretrained(path)
    config = peft.LoraConfig(r=3, lora_alpha=5, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
                             lora_dropout=0.0)
    peft_model = peft.get_peft_model(base, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.3 * torch.randn_like(param))
    peft_model.save_pretrained(str(tmp_path))
    model = models.load_hf(path)
    adapter = load_peft(str(tmp_path), model.config)
    assert adapter.config.targets == ("q", "v", "gate", "down") and adapter.config.scale == pytest.approx(5 / 3)
    with torch.no_grad():
        expected = peft_model.eval()(torch.tensor(TOKENS)).logits.numpy()
    assert relative_max_error(_forward(model, TOKENS, [(adapter, None)]), expected) < 1e-4


def test_stacking_mixed_ranks_keeps_each_organism(reference_checkpoint):
    path, _ = reference_checkpoint("qwen3_gqa_tied")
    model = models.load_hf(path)
    first = _random_adapter(model.config, lora.LoraConfig(rank=2, alpha=8.0, targets=("q", "v")), 1)
    second = _random_adapter(model.config, lora.LoraConfig(rank=5, alpha=5.0, targets=("up",)), 2)
    stacked = stack_adapters([first, second], model.config)
    composed = np.asarray(_forward(model, TOKENS, [(stacked, np.array([0, 1], np.int32))]))
    np.testing.assert_allclose(composed[0], np.asarray(_forward(model, TOKENS, [(first, None)]))[0], atol=1e-5)
    np.testing.assert_allclose(composed[1], np.asarray(_forward(model, TOKENS, [(second, None)]))[1], atol=1e-5)


def test_bad_peft_directories_are_named(reference_checkpoint, tmp_path):
    import json
    import os

    path, _ = reference_checkpoint("qwen3_gqa_tied")
    config = models.load_hf_config(path)
    with pytest.raises(lora.AdapterError, match="no adapter_config.json; not a PEFT adapter directory"):
        load_peft(str(tmp_path), config)
    save_peft(_random_adapter(config, lora.LoraConfig(rank=2, targets=("q",)), 0), str(tmp_path))
    with open(tmp_path / "adapter_config.json") as f:
        settings = json.load(f)
    with open(tmp_path / "adapter_config.json", "w") as f:
        json.dump({**settings, "use_dora": True}, f)
    with pytest.raises(lora.AdapterError, match=r"unsupported settings \['use_dora'\]"):
        load_peft(str(tmp_path), config)
    with open(tmp_path / "adapter_config.json", "w") as f:
        json.dump(settings, f)
    other = config.replace(hidden_size=48)
    with pytest.raises(lora.AdapterError, match=r"self_attn\.q_proj\.lora_A\.weight' has shape \[2, 32\], "
                                                r"expected \[2, 48\]"):
        load_peft(str(tmp_path), other)
    os.remove(tmp_path / "adapter_model.safetensors")
    with pytest.raises(lora.AdapterError, match="no adapter_model.safetensors"):
        load_peft(str(tmp_path), config)
