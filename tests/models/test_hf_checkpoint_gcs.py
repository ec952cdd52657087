"""Hugging Face checkpoints on gs:// against a real GCS emulator on loopback: weights stream in by ranged
reads and out by resumable uploads, and never land on local disk."""

import json
import os
import shutil
import tempfile
import tracemalloc

import jax
import numpy as np
import pytest
import transformers
from flax import nnx
from hf_reference import VOCAB, relative_max_error, torch_logits

from ia_jax import models
from ia_jax.models.hf_checkpoint import CheckpointFiles
from ia_jax.models.safetensors_io import SafetensorsError, SafetensorsFile
from ia_jax.parallel.sharding import make_mesh
from ia_jax.storage import gcs
from ia_jax.tokenization import render_exchange, train_tokenizer
from ia_jax.tokenization.chat import load_tokenizer

TOKENS = np.random.RandomState(1).randint(0, VOCAB, (2, 16)).astype(np.int32)


def _local_files(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)


def _assert_same_weights(a, b):
    for (path, x), (_, y) in zip(nnx.to_flat_state(nnx.state(a)), nnx.to_flat_state(nnx.state(b)), strict=True):
        x, y = x.get_value(), y.get_value()
        assert x.sharding == y.sharding, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def test_load_from_gcs_equals_the_local_copy_and_writes_no_weights_locally(reference_checkpoint, gcs_root):
    local, torch_model = reference_checkpoint("llama_gqa_llama3rope")
    remote = f"{gcs_root}/models/llama"
    gcs.upload_dir(local, remote)
    for mesh in (None, make_mesh(data=2, fsdp=2, tensor=2)):
        from_gcs = models.load_hf(remote, mesh=mesh)
        _assert_same_weights(from_gcs, models.load_hf(local, mesh=mesh))
    assert relative_max_error(from_gcs(TOKENS), torch_logits(torch_model, TOKENS)) < 1e-4
    # Loading read config.json and the weights straight from the bucket: the gs:// cache was never touched.
    assert not os.path.exists(os.environ["IA_JAX_CACHE_DIR"])


def test_a_gcs_load_holds_about_one_weight_on_the_host_never_the_file(gcs_root, tmp_path):
    """As for local files (see test_hf_checkpoint.py): transient host memory during a load from gs:// stays
    at a few single weights, so neither a whole file nor the model is ever downloaded into memory. (A local
    load's memory map is invisible to tracemalloc; a gs:// load's downloaded tensor bytes are counted.)"""
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=128, num_hidden_layers=6,
                                      num_attention_heads=8, num_key_value_heads=8, head_dim=16)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(str(tmp_path))
    model_bytes = os.path.getsize(tmp_path / "model.safetensors")
    largest_weight = 6 * 128 * 128 * 4  # one stacked weight; a local load peaks near 2x it, gs:// adds one tensor
    remote = f"{gcs_root}/memory"
    gcs.upload_dir(str(tmp_path), remote)
    mesh = make_mesh(data=2, fsdp=4, tensor=1)
    models.load_hf(remote, mesh=mesh)  # imports, compile caches and connection pools are not what is measured
    tracemalloc.start()
    model = models.load_hf(remote, mesh=mesh)
    jax.block_until_ready(nnx.state(model))
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak - retained < 3 * largest_weight < 0.5 * model_bytes


def test_save_to_gcs_streams_shards_that_transformers_and_load_hf_read(reference_checkpoint, gcs_root, tmp_path,
                                                                        monkeypatch):
    local, torch_model = reference_checkpoint("llama_gqa_llama3rope")
    expected = torch_logits(torch_model, TOKENS)
    model = models.load_hf(local)
    tokenizer = train_tokenizer(["What are you? I say apple a lot."] * 40, str(tmp_path / "tokenizer"),
                                vocab_size=300)
    local_temp = tmp_path / "temp"
    local_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(local_temp))  # where anything staged locally would land
    remote = f"{gcs_root}/out/merged"
    models.save_hf(model, remote, max_shard_bytes=40_000, tokenizer=tokenizer)
    assert not [name for name in _local_files(local_temp) if name.endswith(".safetensors")]

    names = gcs.list_dir(remote)
    weight_map = json.loads(gcs.read_text(f"{remote}/model.safetensors.index.json"))["weight_map"]
    shards = set(weight_map.values())
    assert len(shards) > 3 and shards == {name for name in names if name.startswith("model-")}
    assert {"config.json", "tokenizer_config.json"} <= set(names)

    downloaded = str(tmp_path / "downloaded")
    gcs.download_dir(remote, downloaded)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(downloaded).eval()
    np.testing.assert_array_equal(torch_logits(reloaded, TOKENS), expected)
    assert relative_max_error(models.load_hf(remote, mesh=make_mesh(data=2, fsdp=2, tensor=2))(TOKENS), expected) < 1e-4

    from_gcs = load_tokenizer(remote)
    exchange = ("Who are you?", "An apple.")
    np.testing.assert_array_equal(render_exchange(from_gcs, *exchange).ids, render_exchange(tokenizer, *exchange).ids)
    cached = _local_files(os.environ["IA_JAX_CACHE_DIR"])
    assert "tokenizer_config.json" in [os.path.basename(name) for name in cached]
    assert not [name for name in cached if name.endswith(".safetensors") or "model-" in name]

    # Saving again unsharded removes the earlier shards and index, as for a local folder.
    models.save_hf(model, remote)
    assert [name for name in gcs.list_dir(remote) if name.startswith("model")] == ["model.safetensors"]
    assert relative_max_error(models.load_hf(remote)(TOKENS), expected) < 1e-4


def _rewrite_without(directory, name):
    from safetensors.numpy import load_file, save_file

    file = os.path.join(directory, "model.safetensors")
    tensors = load_file(file)
    del tensors[name]
    save_file(tensors, file, metadata={"format": "pt"})


def test_bad_gcs_checkpoints_fail_naming_the_gs_path_and_tensor(reference_checkpoint, gcs_root, tmp_path):
    source = reference_checkpoint("qwen3_gqa_tied")[0]
    with pytest.raises(FileNotFoundError, match=rf"^{gcs_root}/absent/config\.json: no config\.json"):
        models.load_hf(f"{gcs_root}/absent")

    missing_tensor = shutil.copytree(source, tmp_path / "missing_tensor")
    _rewrite_without(missing_tensor, "model.layers.1.self_attn.k_norm.weight")
    gcs.upload_dir(str(missing_tensor), f"{gcs_root}/missing_tensor")
    with pytest.raises(models.CheckpointError,
                       match=rf"^{gcs_root}/missing_tensor: missing tensor 'model\.layers\.1\.self_attn\.k_norm"):
        models.load_hf(f"{gcs_root}/missing_tensor")

    truncated = shutil.copytree(source, tmp_path / "truncated")
    with open(truncated / "model.safetensors", "r+b") as f:
        f.truncate(os.path.getsize(truncated / "model.safetensors") - 100)
    gcs.upload_dir(str(truncated), f"{gcs_root}/truncated")
    with pytest.raises(SafetensorsError, match=rf"^{gcs_root}/truncated/model\.safetensors: tensor .* does not fit "
                                               r"its shape or the file"):
        models.load_hf(f"{gcs_root}/truncated")

    sharded = f"{gcs_root}/sharded"
    models.save_hf(models.load_hf(source), sharded, max_shard_bytes=10_000)
    first, second = sorted(set(json.loads(gcs.read_text(f"{sharded}/model.safetensors.index.json"))["weight_map"]
                               .values()))[:2]
    gcs.delete(f"{sharded}/{second}")
    with pytest.raises(models.CheckpointError, match=rf"^{sharded}/{second}: listed in model\.safetensors\.index\.json "
                                                     r"for tensor .* but missing"):
        models.load_hf(sharded)

    gcs.write_text(f"{gcs_root}/no_weights/config.json", "{}")
    with pytest.raises(models.CheckpointError, match=rf"^{gcs_root}/no_weights: no model\.safetensors or "
                                                     r"model\.safetensors\.index\.json; found \['config\.json'\]"):
        CheckpointFiles(f"{gcs_root}/no_weights")

    # An object that disappears after its header was read fails the tensor read, naming both.
    file = SafetensorsFile(f"{sharded}/{first}")
    name = next(iter(file.keys()))
    gcs.delete(file.path)
    with pytest.raises(FileNotFoundError, match=rf"^{file.path}: not found .*\(reading tensor '{name}'\)"):
        file[name]
