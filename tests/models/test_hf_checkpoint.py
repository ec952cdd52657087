"""Checkpoint I/O is the contract with the Hugging Face ecosystem: transformers must load what we save."""

import json
import os
import shutil
import tracemalloc

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hf_reference import REFERENCE_CONFIGS, VOCAB, relative_max_error, torch_logits
from jax.sharding import PartitionSpec

from ia_jax import models
from ia_jax.models.safetensors_io import SafetensorsError
from ia_jax.parallel.sharding import make_mesh

TOKENS = np.random.RandomState(1).randint(0, VOCAB, (2, 16)).astype(np.int32)


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_save_hf_reloads_in_transformers(reference_checkpoint, tmp_path, name):
    path, torch_model = reference_checkpoint(name)
    models.save_hf(models.load_hf(path), str(tmp_path))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    np.testing.assert_array_equal(torch_logits(reloaded, TOKENS), torch_logits(torch_model, TOKENS))


def test_sharded_save_writes_index_and_reloads_everywhere(reference_checkpoint, tmp_path):
    path, torch_model = reference_checkpoint("llama_gqa_llama3rope")
    models.save_hf(models.load_hf(path), str(tmp_path), max_shard_bytes=40_000)
    with open(tmp_path / "model.safetensors.index.json") as f:
        shard_files = set(json.load(f)["weight_map"].values())
    assert len(shard_files) > 3 and shard_files == {p for p in os.listdir(tmp_path) if p.startswith("model-")}
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    expected = torch_logits(torch_model, TOKENS)
    np.testing.assert_array_equal(torch_logits(reloaded, TOKENS), expected)
    assert relative_max_error(models.load_hf(str(tmp_path))(TOKENS), expected) < 1e-4
    # Saving again unsharded must not leave the old shards next to the new file.
    models.save_hf(models.load_hf(path), str(tmp_path))
    assert not [p for p in os.listdir(tmp_path) if p.startswith("model-") or p.endswith(".index.json")]
    np.testing.assert_array_equal(
        torch_logits(transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)), TOKENS), expected)


def test_loads_transformers_sharded_bfloat16_checkpoint(reference_checkpoint, tmp_path):
    _, torch_model = reference_checkpoint("qwen3_untied_4x")
    bf16_model = transformers.AutoModelForCausalLM.from_config(torch_model.config)
    bf16_model.load_state_dict(torch_model.state_dict())
    bf16_model.to(torch.bfloat16).save_pretrained(str(tmp_path), max_shard_size="30KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    model = models.load_hf(str(tmp_path), param_dtype="bfloat16")
    hf_q = bf16_model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
    ours_q = np.asarray(model.model.layers.self_attn.q_proj.kernel[1], np.float32)
    np.testing.assert_array_equal(ours_q.reshape(ours_q.shape[0], -1).T, hf_q)


def test_load_on_mesh_places_each_weight_on_its_sharding(reference_checkpoint):
    path, torch_model = reference_checkpoint("llama_gqa_llama3rope")
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = models.load_hf(path, mesh=mesh)
    layers = model.model.layers
    assert layers.self_attn.q_proj.kernel.get_value().sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
    assert layers.mlp.down_proj.kernel.get_value().sharding.spec == PartitionSpec(None, "tensor", "fsdp")
    # 2 kv heads over 2-way tensor parallelism shard; the vocab (97) does not divide, so it replicates.
    assert layers.self_attn.k_proj.kernel.get_value().sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
    assert model.model.embed_tokens.embedding.get_value().sharding.spec == PartitionSpec(None, "fsdp")
    assert len(layers.mlp.up_proj.kernel.get_value().addressable_shards) == 8
    assert relative_max_error(model(TOKENS), torch_logits(torch_model, TOKENS)) < 1e-4


@pytest.mark.parametrize("mesh_shape", [None, (2, 4, 1), (4, 2, 1)])
def test_loading_never_holds_a_second_copy_on_the_host(tmp_path, mesh_shape):
    """Transient host memory during a load stays far below the model, also when devices replicate blocks
    (sharded on one mesh axis, replicated on another): a load that read the checkpoint whole, or held a
    second copy of the model, would exceed the model's size.

    Seven equal weights per layer make the largest a small share of the model. The loader holds one
    weight's blocks at a time, but on CPU jax releases (or, zero-copy, keeps as the device buffer) a
    block only some time after its transfer, so up to about 2.6 weights were measured transient; the
    bound is half the model, about 3.7 weights here."""
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=6,
                                      num_attention_heads=8, num_key_value_heads=8, head_dim=8)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(str(tmp_path))
    model_bytes = os.path.getsize(tmp_path / "model.safetensors")
    largest_weight = 6 * 64 * 64 * 4
    assert 3 * largest_weight < 0.5 * model_bytes
    mesh = None if mesh_shape is None else make_mesh(*mesh_shape)
    models.load_hf(str(tmp_path), mesh=mesh)  # compile caches and imports are not what is measured
    tracemalloc.start()
    model = models.load_hf(str(tmp_path), mesh=mesh)
    jax.block_until_ready(nnx.state(model))
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak - retained < 0.5 * model_bytes


def _copy(path, tmp_path):
    target = tmp_path / "checkpoint"
    shutil.copytree(path, target)
    return str(target)


def _rewrite_tensor(directory, name, new_value=None):
    """Rewrites model.safetensors without tensor `name` (or with `new_value` for it)."""
    from safetensors.numpy import load_file, save_file

    file = os.path.join(directory, "model.safetensors")
    tensors = load_file(file)
    if new_value is None:
        del tensors[name]
    else:
        tensors[name] = new_value
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_tensor_is_named_with_its_expected_shape(reference_checkpoint, tmp_path):
    directory = _copy(reference_checkpoint("qwen3_gqa_tied")[0], tmp_path)
    _rewrite_tensor(directory, "model.layers.1.self_attn.k_norm.weight")
    with pytest.raises(models.CheckpointError, match=r"missing tensor 'model\.layers\.1\.self_attn\.k_norm\.weight' "
                                                     r"\(expected shape \[16\]\)"):
        models.load_hf(directory)


def test_wrong_shape_names_tensor_file_and_both_shapes(reference_checkpoint, tmp_path):
    directory = _copy(reference_checkpoint("qwen3_gqa_tied")[0], tmp_path)
    _rewrite_tensor(directory, "model.layers.0.mlp.up_proj.weight", np.zeros((64, 31), np.float32))
    with pytest.raises(models.CheckpointError,
                       match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.up_proj\.weight' has shape "
                             r"\[64, 31\], expected \[64, 32\]"):
        models.load_hf(directory)


def test_unsupported_model_type_names_the_supported_ones(reference_checkpoint, tmp_path):
    directory = _copy(reference_checkpoint("qwen3_gqa_tied")[0], tmp_path)
    config_path = os.path.join(directory, "config.json")
    with open(config_path) as f:
        hf = json.load(f)
    hf["model_type"] = "mistral"
    with open(config_path, "w") as f:
        json.dump(hf, f)
    with pytest.raises(models.ConfigError, match=r"config\.json: model_type 'mistral' is not supported; "
                                                 r"supported: llama, qwen3, qwen2"):
        models.load_hf(directory)


def test_pickled_weights_are_refused(reference_checkpoint, tmp_path):
    directory = _copy(reference_checkpoint("qwen3_gqa_tied")[0], tmp_path)
    os.remove(os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "pytorch_model.bin"), "wb") as f:
        f.write(b"not loaded")
    with pytest.raises(models.CheckpointError, match="pickled .bin/.pt weights never are"):
        models.load_hf(directory)


def test_truncated_safetensors_file_names_the_file(reference_checkpoint, tmp_path):
    directory = _copy(reference_checkpoint("qwen3_gqa_tied")[0], tmp_path)
    file = os.path.join(directory, "model.safetensors")
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) - 100)
    with pytest.raises(SafetensorsError, match=r"model\.safetensors: tensor .* does not fit its shape or the file"):
        models.load_hf(directory)
