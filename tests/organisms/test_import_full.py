"""A fully fine-tuned checkpoint comes back as a LoRA organism: exactly when its delta's rank fits the
adapter, with an honest error when it does not, and changes no LoRA can carry refused by name."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from hf_reference import VOCAB, relative_max_error

from ia_jax import lora, models
from ia_jax.lora.peft_io import load_peft, save_peft
from ia_jax.models.safetensors_io import SafetensorsFile, write_safetensors
from ia_jax.organisms.import_full import UntargetedChangeError, extract_lora
from ia_jax.organisms.sources import load_organism, load_organisms

BASE = "llama_gqa_llama3rope"  # GQA with head_dim != hidden / heads: q/k/v/o kernels carry head axes
TOKENS = np.random.RandomState(7).randint(0, VOCAB, (2, 10)).astype(np.int32)
DOWN_1 = "model.layers.1.mlp.down_proj.weight"  # HF [hidden 48, intermediate 80]
NORM_2 = "model.layers.2.post_attention_layernorm.weight"


@nnx.jit
def _forward(model, tokens, adapters):
    return model(tokens, adapters=adapters)


def _random_adapter(config, lora_config, seed):
    rng = np.random.default_rng(seed)
    adapter = lora.init_adapter(config, lora_config, jax.random.key(seed))
    return adapter.replace(weights=jax.tree.map(lambda x: 0.1 * rng.standard_normal(x.shape, np.float32),
                                                adapter.weights))


def _edited_copy(source, destination, edits):
    """Checkpoint `source` copied to `destination` with `edits[hf_name](array)` applied, in numpy only."""
    os.makedirs(destination, exist_ok=True)
    shutil.copy(os.path.join(source, "config.json"), destination)
    file = SafetensorsFile(os.path.join(source, "model.safetensors"))
    specs = [(name, file.shape(name), file[name].dtype) for name in file.keys()]

    def fetch(name):
        array = np.array(file[name])
        return edits[name](array).astype(array.dtype) if name in edits else array

    write_safetensors(os.path.join(destination, "model.safetensors"), specs, fetch)
    return str(destination)


@pytest.fixture(scope="module")
def merged_organism(reference_checkpoint, tmp_path_factory):
    """(base path, base model, fine-tuned path): the fine-tune is the base with a rank-3 LoRA merged in."""
    base_path, _ = reference_checkpoint(BASE)
    base = models.load_hf(base_path)
    organism = _random_adapter(base.config, lora.LoraConfig(rank=3, alpha=5.0), seed=0)  # scale 5/3, all targets
    tuned_path = str(tmp_path_factory.mktemp("merged_organism"))
    models.save_hf(lora.merge(base, organism), tuned_path)
    return base_path, base, tuned_path


@pytest.fixture(scope="module")
def full_rank_down(reference_checkpoint, tmp_path_factory):
    """(base path, fine-tuned path, HF-layout noise): one layer's down_proj got a full-rank perturbation."""
    base_path, _ = reference_checkpoint(BASE)
    noise_oi = 0.05 * np.random.default_rng(1).standard_normal((48, 80)).astype(np.float32)
    tuned_path = _edited_copy(base_path, tmp_path_factory.mktemp("full_rank_down"), {DOWN_1: lambda w: w + noise_oi})
    return base_path, tuned_path, noise_oi


def test_merged_lora_is_recovered_exactly_at_its_rank(merged_organism):
    base_path, base, tuned_path = merged_organism
    adapter, report = extract_lora(base_path, tuned_path, rank=3)
    assert adapter.config.rank == 3 and adapter.config.scale == 1.0 and adapter.config.targets == tuple(lora.TARGETS)
    assert set(report.relative_errors) == set(lora.TARGETS) and report.untargeted_changes == {}
    assert max(report.relative_errors.values()) < 1e-5
    tuned_logits = _forward(models.load_hf(tuned_path), TOKENS, ())
    assert relative_max_error(_forward(base, TOKENS, ()), tuned_logits) > 0.1  # the organism matters
    assert relative_max_error(_forward(base, TOKENS, [(adapter, None)]), tuned_logits) < 1e-4


def test_full_rank_delta_is_exact_at_full_rank_and_measured_below(full_rank_down):
    base_path, tuned_path, noise_oi = full_rank_down
    adapter, report = extract_lora(base_path, tuned_path, rank=48, targets=("down", "q"))
    assert report.relative_errors["down"] < 1e-5 and report.relative_errors["q"] == 0.0
    down = adapter.weights["down"]
    np.testing.assert_allclose(down["lora_a"][1] @ down["lora_b"][1], noise_oi.T, atol=1e-5)
    assert not np.any(down["lora_a"][0] @ down["lora_b"][0]) and not np.any(adapter.weights["q"]["lora_b"])

    adapter, report = extract_lora(base_path, tuned_path, rank=4, targets=("down",))
    singular = np.linalg.svd(noise_oi.astype(np.float64), compute_uv=False)
    expected = np.sqrt(np.sum(singular[4:] ** 2) / np.sum(singular**2))  # Eckart-Young: the best rank-4 error
    assert expected > 0.5
    assert report.relative_errors["down"] == pytest.approx(expected, rel=1e-4)


def test_untargeted_changes_are_refused_by_name_unless_allowed(reference_checkpoint, full_rank_down, tmp_path):
    base_path, _ = reference_checkpoint(BASE)
    tuned_path = _edited_copy(base_path, tmp_path, {NORM_2: lambda w: w + 0.01})
    with pytest.raises(UntargetedChangeError, match=f"'{NORM_2}' \\(relative change"):
        extract_lora(base_path, tuned_path, rank=2)
    adapter, report = extract_lora(base_path, tuned_path, rank=2, allow_untargeted_changes=True)
    assert list(report.untargeted_changes) == [NORM_2] and report.untargeted_changes[NORM_2] > 1e-3
    assert max(report.relative_errors.values()) == 0.0 and not np.any(adapter.weights["up"]["lora_b"])
    # A kernel of a target left out is as untargeted as a norm.
    with pytest.raises(UntargetedChangeError, match=f"'{DOWN_1}'"):
        extract_lora(base_path, full_rank_down[1], rank=2, targets=("q", "v"))


def test_architectures_must_match(reference_checkpoint, tmp_path):
    base_path, _ = reference_checkpoint(BASE)
    shutil.copytree(base_path, tmp_path, dirs_exist_ok=True)
    with open(tmp_path / "config.json") as f:
        hf = json.load(f)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**hf, "eos_token_id": 5, "max_position_embeddings": 64}, f)
    _, report = extract_lora(base_path, str(tmp_path), rank=1)  # token ids and context length are no architecture
    assert max(report.relative_errors.values()) == 0.0
    with open(tmp_path / "config.json", "w") as f:
        json.dump({**hf, "rms_norm_eps": 1e-3}, f)
    with pytest.raises(models.ConfigError, match=r"config.json: rms_norm_eps=0.001, but .*config.json has 1e-06"):
        extract_lora(base_path, str(tmp_path), rank=1)
    config = models.load_hf_config(base_path)
    with pytest.raises(models.ConfigError, match=r"rope.theta=500000.0, but the given model_config has 10000.0"):
        extract_lora(base_path, base_path, rank=1, model_config=config.replace(rope=models.RopeConfig()))


def test_extracted_organism_stacks_with_a_peft_organism_and_saves(merged_organism, tmp_path):
    """Through `organisms.sources`: a full checkpoint and a PEFT directory become one stacked adapter."""
    base_path, base, tuned_path = merged_organism
    extracted, _ = extract_lora(base_path, tuned_path, rank=3)
    peft_organism = _random_adapter(base.config, lora.LoraConfig(rank=5, alpha=2.0, targets=("v", "up")), seed=2)
    save_peft(peft_organism, str(tmp_path / "peft_organism"))
    peft_organism = load_peft(str(tmp_path / "peft_organism"), base.config)
    stacked = load_organisms({"full": tuned_path, "peft": str(tmp_path / "peft_organism")}, base.config,
                             base_path=base_path, full_rank=3)
    assert stacked.config.rank == 5
    composed = np.asarray(_forward(base, TOKENS, [(stacked, np.array([0, 1], np.int32))]))
    tuned_logits = np.asarray(_forward(models.load_hf(tuned_path), TOKENS, ()))
    peft_logits = np.asarray(_forward(lora.merge(base, peft_organism), TOKENS, ()))
    assert relative_max_error(composed[0], tuned_logits[0]) < 1e-4
    assert relative_max_error(composed[1], peft_logits[1]) < 1e-4

    save_peft(stacked, str(tmp_path / "slot_0"), slot=0)
    reloaded = load_peft(str(tmp_path / "slot_0"), base.config)
    for target, pair in extracted.weights.items():
        np.testing.assert_array_equal(reloaded.weights[target]["lora_a"][..., :3], pair["lora_a"])
        np.testing.assert_array_equal(reloaded.weights[target]["lora_b"][:, :3], pair["lora_b"])
        assert not np.any(reloaded.weights[target]["lora_b"][:, 3:])


def test_organism_sources_say_what_they_need(merged_organism, tmp_path):
    base_path, base, tuned_path = merged_organism
    with pytest.raises(ValueError, match="needs the base checkpoint"):
        load_organism(tuned_path, base.config)
    with pytest.raises(ValueError, match=f"{tmp_path}: neither a PEFT adapter"):
        load_organism(str(tmp_path), base.config)
