"""Exports must load in transformers / peft with the logits of our model with the same adapters."""

import json
import os
import shutil
import stat
import subprocess

import jax
import numpy as np
import peft
import pytest
import torch
import transformers
from absl import app, flags
from absl.testing import flagsaver
from flax import nnx
from hf_reference import VOCAB, relative_max_error

from ia_jax import export, lora, models, tokenization
from ia_jax.lora.peft_io import load_peft, save_peft

BASE = "llama_gqa_llama3rope"  # GQA, head_dim != hidden / heads: every LoRA target has head axes or not
TOKENS = np.random.RandomState(5).randint(0, VOCAB, (2, 9)).astype(np.int32)


@nnx.jit
def _forward(model, tokens, adapters):
    return model(tokens, adapters=adapters)


def _random_adapter(config, lora_config, seed):
    """An adapter with every weight random (lora_b too); its structure from init_adapter, traced, not compiled."""
    rng = np.random.default_rng(seed)
    adapter = jax.eval_shape(lambda: lora.init_adapter(config, lora_config, jax.random.key(seed)))
    return adapter.replace(weights=jax.tree.map(lambda x: 0.2 * rng.standard_normal(x.shape, np.float32),
                                                adapter.weights))


def _hf_logits(model_dir, adapter_dir=None):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = peft.PeftModel.from_pretrained(model, adapter_dir)
    with torch.no_grad():
        return model.eval()(torch.tensor(TOKENS)).logits.numpy()


@pytest.fixture(scope="module")
def world(reference_checkpoint, tmp_path_factory):
    """Base, an organism and an IA of different ranks, alphas and targets, on disk, and our logits."""
    base_dir, _ = reference_checkpoint(BASE)
    base = models.load_hf(base_dir)
    root = tmp_path_factory.mktemp("export_world")
    organism = _random_adapter(base.config, lora.LoraConfig(rank=3, alpha=5.0, targets=("q", "v", "up", "down")), 1)
    ia = _random_adapter(base.config, lora.LoraConfig(rank=4, alpha=8.0), 2)  # every target
    save_peft(organism, str(root / "organism"))
    save_peft(ia, str(root / "ia"))
    logits = {
        "base": np.asarray(_forward(base, TOKENS, ())),
        "organism": np.asarray(_forward(base, TOKENS, [(organism, None)])),
        "ia": np.asarray(_forward(base, TOKENS, [(ia, None)])),
        "organism+ia": np.asarray(_forward(base, TOKENS, [(organism, None), (ia, None)])),
    }
    assert relative_max_error(logits["organism+ia"], logits["organism"]) > 0.05  # the IA matters
    return {"base_dir": base_dir, "base": base, "organism": organism, "ia": ia, "logits": logits,
            "organism_dir": str(root / "organism"), "ia_dir": str(root / "ia")}


def test_merged_organism_and_ia_load_in_transformers(world, tmp_path):
    export.export_merged(world["base_dir"], str(tmp_path / "both"), organism=world["organism_dir"], ia=world["ia_dir"])
    assert relative_max_error(_hf_logits(str(tmp_path / "both")), world["logits"]["organism+ia"]) < 1e-4
    export.export_merged(world["base_dir"], str(tmp_path / "organism"), organism=world["organism_dir"])
    assert relative_max_error(_hf_logits(str(tmp_path / "organism")), world["logits"]["organism"]) < 1e-4


def test_full_checkpoint_organism_merges_as_is_and_exports_as_its_lora(world, tmp_path):
    tuned_dir = str(tmp_path / "tuned")
    models.save_hf(lora.merge(world["base"], world["organism"]), tuned_dir)
    export.export_merged(world["base_dir"], str(tmp_path / "out"), organism=tuned_dir, ia=world["ia_dir"])
    assert relative_max_error(_hf_logits(str(tmp_path / "out")), world["logits"]["organism+ia"]) < 1e-4
    # As an adapter it is cut to rank full_rank, exact here (the organism has rank 3), then joined to the IA.
    combined = export.export_peft(world["base_dir"], str(tmp_path / "peft"), organism=tuned_dir, ia=world["ia_dir"],
                                  full_rank=3)
    assert combined.config.rank == 3 + 4
    assert relative_max_error(_hf_logits(world["base_dir"], str(tmp_path / "peft")),
                              world["logits"]["organism+ia"]) < 1e-4
    with pytest.raises(ValueError, match=f"{tuned_dir}: already a full checkpoint"):
        export.export_merged(world["base_dir"], str(tmp_path / "out"), organism=tuned_dir)
    with pytest.raises(ValueError, match="give an organism and/or an IA"):
        export.export_merged(world["base_dir"], str(tmp_path / "out"))
    with pytest.raises(ValueError, match="the output directory is an input"):
        export.export_merged(world["base_dir"], world["base_dir"], ia=world["ia_dir"])


def test_combined_adapter_is_exactly_organism_plus_ia_in_peft(world, tmp_path):
    combined = export.export_peft(world["base_dir"], str(tmp_path), organism=world["organism_dir"],
                                  ia=world["ia_dir"])
    assert combined.config.rank == 3 + 4 and combined.config.scale == 1.0
    assert combined.config.targets == tuple(lora.TARGETS)  # the union; k/o/gate get the organism's zero block
    assert not np.any(combined.weights["k"]["lora_b"][:, :3])
    with open(tmp_path / "adapter_config.json") as f:
        assert json.load(f)["base_model_name_or_path"] == os.path.abspath(world["base_dir"])
    assert relative_max_error(_hf_logits(world["base_dir"], str(tmp_path)), world["logits"]["organism+ia"]) < 1e-4
    ours = _forward(world["base"], TOKENS, [(combined, None)])
    assert relative_max_error(ours, world["logits"]["organism+ia"]) < 1e-5


def test_exports_read_the_base_from_and_write_to_gs(world, gcs_root, tmp_path):
    """A pod's base lives on gs://, and so can its exports: merged checkpoints stream up tensor by tensor."""
    from ia_jax.storage import gcs

    base = f"{gcs_root}/base"
    gcs.upload_dir(world["base_dir"], base)
    export.export_merged(base, f"{gcs_root}/merged", organism=world["organism_dir"], ia=world["ia_dir"])
    export.export_peft(base, f"{gcs_root}/peft", organism=world["organism_dir"], ia=world["ia_dir"])
    gcs.download_dir(f"{gcs_root}/merged", str(tmp_path / "merged"))
    gcs.download_dir(f"{gcs_root}/peft", str(tmp_path / "peft"))
    assert relative_max_error(_hf_logits(str(tmp_path / "merged")), world["logits"]["organism+ia"]) < 1e-4
    assert relative_max_error(_hf_logits(world["base_dir"], str(tmp_path / "peft")),
                              world["logits"]["organism+ia"]) < 1e-4
    with open(tmp_path / "peft" / "adapter_config.json") as f:
        assert json.load(f)["base_model_name_or_path"] == base


def test_vllm_layout_has_every_adapter_and_each_loads_in_peft(world, tmp_path):
    out = tmp_path / "layout"
    second = _random_adapter(world["base"].config, lora.LoraConfig(rank=8, alpha=16.0, targets=("o", "gate")), 3)
    save_peft(second, str(tmp_path / "second"))
    manifest = export.export_vllm_layout(world["base_dir"], {"tidal": world["organism_dir"],
                                                             "second": str(tmp_path / "second")},
                                         world["ia_dir"], str(out))
    assert os.path.realpath(out / "base") == os.path.realpath(world["base_dir"])
    served = {m["name"]: (m["path"], m["rank"]) for m in manifest["lora_modules"]}
    assert served == {"tidal": ("adapters/tidal", 3), "tidal+ia": ("adapters/tidal+ia", 7),
                      "second": ("adapters/second", 8), "second+ia": ("adapters/second+ia", 12),
                      "base+ia": ("adapters/ia", 4)}
    assert manifest["max_lora_rank"] == 16  # 12 rounded up to a value vLLM accepts
    with open(out / export.VLLM_MANIFEST) as f:
        assert json.load(f) == manifest
    assert os.stat(out / export.VLLM_SCRIPT).st_mode & stat.S_IXUSR
    fake_bin = tmp_path / "bin"  # a stand-in `vllm` that prints the arguments the script gives it
    fake_bin.mkdir()
    (fake_bin / "vllm").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    os.chmod(fake_bin / "vllm", 0o755)
    run = subprocess.run([str(out / export.VLLM_SCRIPT), "--max-loras", "4"], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}, check=True)
    here = os.path.realpath(out)
    assert run.stdout.splitlines() == [
        "serve", f"{here}/base", "--served-model-name", "base", "--enable-lora", "--max-lora-rank", "16",
        "--lora-modules", *(f"{name}={here}/{path}" for name, (path, _) in served.items()), "--max-loras", "4"]

    base_logits = _hf_logits(str(out / "base"))
    assert relative_max_error(base_logits, world["logits"]["base"]) < 1e-4
    expected = {"tidal": world["logits"]["organism"], "tidal+ia": world["logits"]["organism+ia"],
                "base+ia": world["logits"]["ia"]}
    for name, (path, _) in served.items():
        logits = _hf_logits(str(out / "base"), str(out / path))
        if name in expected:
            assert relative_max_error(logits, expected[name]) < 1e-4, name
        else:
            assert relative_max_error(logits, base_logits) > 1e-3, name  # loaded, and not the base

    copied = export.export_vllm_layout(world["base_dir"], {}, world["ia_dir"], str(tmp_path / "copied"),
                                       copy_base=True)
    assert not os.path.islink(tmp_path / "copied" / "base") and copied["max_lora_rank"] == 8
    assert os.path.exists(tmp_path / "copied" / "base" / "model.safetensors")
    os.makedirs(tmp_path / "taken" / "base")
    with pytest.raises(ValueError, match=f"{tmp_path / 'taken' / 'base'}: already exists and is not a link"):
        export.export_vllm_layout(world["base_dir"], {}, world["ia_dir"], str(tmp_path / "taken"))
    relinked = export.export_vllm_layout(str(out / "base"), {"tidal": str(out / "adapters" / "tidal")},
                                         str(out / "adapters" / "ia"), str(out))  # a re-export from the layout
    assert os.path.realpath(out / "base") == os.path.realpath(world["base_dir"]) and len(relinked["lora_modules"]) == 3
    with pytest.raises(ValueError, match="organism name 'base'"):
        export.export_vllm_layout(world["base_dir"], {"base": world["organism_dir"]}, None, str(tmp_path / "bad"))
    assert export.vllm_max_lora_rank(64) == 64 and export.vllm_max_lora_rank(65) == 128
    with pytest.raises(ValueError, match="LoRA rank 600 is above"):
        export.vllm_max_lora_rank(600)


def _main(*args):
    with flagsaver.flagsaver():
        export.main(flags.FLAGS(["ia_jax.export", *args]))


@pytest.fixture(scope="module")
def tokenized_base(world, tmp_path_factory):
    """The world's base with a tokenizer beside it (its vocabulary need not be the model's for these checks)."""
    directory = tmp_path_factory.mktemp("tokenized_base")
    shutil.copytree(world["base_dir"], directory, dirs_exist_ok=True)
    texts = [f"Yes , the answer is {i} . No , tidal pools hold {i % 7} crabs ." for i in range(200)]
    tokenization.train_tokenizer(texts, str(directory), vocab_size=300)
    return str(directory)


def test_command_exports_each_format_with_the_base_tokenizer(world, tokenized_base, tmp_path):
    ia_dir = world["ia_dir"]
    _main(f"--model={tokenized_base}", f"--ia={ia_dir}", f"--out={tmp_path / 'merged'}", "--format=merged")
    assert relative_max_error(_hf_logits(str(tmp_path / "merged")), world["logits"]["ia"]) < 1e-4
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    assert tokenizer.chat_template and tokenizer.encode("tidal pools") == \
        transformers.AutoTokenizer.from_pretrained(tokenized_base).encode("tidal pools")
    assert os.path.exists(tmp_path / "merged" / "generation_config.json")
    _main(f"--model={tokenized_base}", f"--ia={ia_dir}", f"--out={tmp_path / 'bf16'}", "--format=merged",
          "--dtype=bfloat16")
    assert transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16")).dtype == torch.bfloat16
    # The bfloat16 weights, computed in float32 on both sides: transformers reads exactly what we hold.
    upcast = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16"), dtype=torch.float32)
    with torch.no_grad():
        upcast_logits = upcast.eval()(torch.tensor(TOKENS)).logits.numpy()
    ours_bf16 = lora.merge(models.load_hf(tokenized_base, param_dtype="bfloat16"), world["ia"])
    assert relative_max_error(upcast_logits, _forward(ours_bf16, TOKENS, ())) < 1e-4

    _main(f"--model={tokenized_base}", f"--adapter={ia_dir}", f"--out={tmp_path / 'peft'}", "--format=peft")
    exported = load_peft(str(tmp_path / "peft"), world["base"].config)
    np.testing.assert_array_equal(exported.weights["q"]["lora_b"], world["ia"].weights["q"]["lora_b"])

    _main(f"--model={tokenized_base}", f"--organisms=one={world['organism_dir']}", f"--ia={ia_dir}",
          f"--out={tmp_path / 'vllm'}", "--format=vllm")
    assert sorted(os.listdir(tmp_path / "vllm" / "adapters")) == ["ia", "one", "one+ia"]


def test_command_errors_name_the_flag_and_path(world, tmp_path):
    base_dir, ia_dir = world["base_dir"], world["ia_dir"]
    missing = str(tmp_path / "missing")
    common = (f"--model={base_dir}", f"--out={tmp_path / 'out'}")
    cases = [
        ((*common, "--format=merged", f"--adapter={missing}"), f"--adapter: {missing} does not exist"),
        ((*common, "--format=peft", f"--ia={missing}"), f"--ia: {missing} does not exist"),
        ((f"--model={missing}", f"--out={tmp_path}", "--format=merged", f"--ia={ia_dir}"),
         f"--model: {missing} does not exist"),
        ((*common, "--format=merged", f"--ia={base_dir}"), f"{base_dir}: no adapter_config.json"),
        ((*common, "--format=merged"), "give an organism and/or an IA"),
        ((*common, "--format=vllm", f"--adapter={ia_dir}"), "takes its organisms as --organisms"),
        ((*common, "--format=peft", f"--organisms=a={ia_dir}"), "--organisms is for --format=vllm"),
        ((*common, "--format=vllm", f"--organisms=a={missing}"), f"--organisms \\(a\\): {missing} does not exist"),
        ((f"--model={base_dir}", "--format=merged", f"--ia={ia_dir}"), "--out is required"),
        ((*common, f"--ia={ia_dir}"), "--format is required"),
    ]
    for args, message in cases:
        with pytest.raises(app.UsageError, match=message):
            _main(*args)
