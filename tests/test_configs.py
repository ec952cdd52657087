"""Every shipped config builds, loads through absl `config_flags` with command-line overrides, and
passes its validation (mesh over the devices it names, batch and head layouts, sequence lengths,
memory per device) without weights; broken configs fail naming the field."""

import os

import pytest
from absl import flags
from ml_collections import ConfigDict, config_flags

from ia_jax import hf_run, main, models
from ia_jax.toy import run as toy_run

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_CONFIGS = {"qwen3_0p6b": ("qwen3", 4), "qwen3_4b": ("qwen3", 8), "qwen3_14b": ("qwen3", 16),
              "llama3_3_70b": ("llama", 64)}


def load(name, *overrides):
    """The config as `python -m ia_jax.main --config=configs/NAME.py OVERRIDES...` sees it."""
    argv = ["prog", f"--config={os.path.join(_ROOT, 'configs', name + '.py')}", *overrides]
    values = flags.FlagValues()
    # As the main job defines it; overrides are read from the command line (sys.argv there, argv here).
    config_flags.DEFINE_config_file("config", main._DEFAULT_CONFIG, flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def test_every_config_file_is_covered():
    shipped = {f[:-3] for f in os.listdir(os.path.join(_ROOT, "configs")) if f.endswith(".py") and f != "__init__.py"}
    assert shipped == set(HF_CONFIGS) | {"toy", "smoke", "bench", "bench_smoke", "bench_1b"}


@pytest.mark.parametrize("name", ["bench", "bench_smoke", "bench_1b"])
def test_bench_configs_build_the_model_and_take_overrides(name):
    """The benchmark's configs (`python -m ia_jax.bench --config=configs/NAME.py`)."""
    config = load(name, "--config.organism_jobs.sequential_jobs=1", "--config.workloads=('decode',)")
    assert config.organism_jobs.sequential_jobs == 1 and tuple(config.workloads) == ("decode",)
    model = models.ModelConfig(**config.model)
    assert config.answer_tokens < config.seq_len <= model.max_position_embeddings


def test_the_accelerator_bench_is_a_1b_model_in_bfloat16():
    """The issue's accelerator target is LoRA SFT MFU on a 1B-class config in bfloat16: Llama 3.2 1B
    has 1,235,814,400 parameters."""
    config = load("bench_1b")
    assert hf_run.parameter_counts(ConfigDict(config.model), 16)[0] == 1_235_814_400
    assert config.model.dtype == config.model.param_dtype == "bfloat16"
    assert "ia_sft" in config.workloads and "organisms" not in config.workloads


@pytest.mark.parametrize("name", ["toy", "smoke"])
def test_toy_configs_build_every_recipe(name):
    config = load(name, "--config.ia_sft.learning_rate=3e-3")
    assert config.ia_sft.learning_rate == 3e-3
    assert toy_run.check_config(config)["ia_sft"].learning_rate == 3e-3


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_model_configs_validate_on_the_slice_they_name(name):
    model_type, devices = HF_CONFIGS[name]
    config = load(name, "--config.ia_sft.learning_rate=2e-4", "--config.base.checkpoint=gs://bucket/model")
    assert config.name == name and config.architecture.model_type == model_type
    assert config.hardware.devices == devices and config.base.checkpoint == "gs://bucket/model"
    plan = hf_run.validate(config)
    assert plan["mesh"]["data"] * plan["mesh"]["fsdp"] * plan["mesh"]["tensor"] == devices
    assert plan["hosts"] == max(1, devices // 4)
    for stage, gib in plan["memory_gib"].items():
        assert 0 < gib < 0.9 * config.hardware.hbm_gib, (stage, gib)
    # The IA keeps the reference recipe: rank 16, alpha 32, dropout 0.05 on all seven projections.
    assert (config.ia_sft.lora.rank, config.ia_sft.lora.alpha, config.ia_sft.lora.dropout) == (16, 32.0, 0.05)
    assert config.base.param_dtype == "bfloat16"


def test_the_70b_estimate_matches_a_hand_count():
    """Llama 3.3 70B has 70.6B parameters; a rank-16 LoRA on its seven projections 207M."""
    config = load("llama3_3_70b")
    base, lora = hf_run.parameter_counts(config.architecture, 16)
    assert base == 70_553_706_496
    assert lora == 80 * 16 * ((8192 + 8192) * 2 + 2 * (8192 + 1024) + 3 * (8192 + 28672))


@pytest.mark.parametrize("overrides, devices, message", [
    (["--config.mesh.tensor=3"], None, r"config.mesh.fsdp: -1 cannot fill 64 devices|config.mesh: "),
    (["--config.mesh.fsdp=8"], None, r"config.mesh: \{'data': 1, 'fsdp': 8, 'tensor': 4\} covers 32 devices"),
    (["--config.mesh.fsdp=-1", "--config.mesh.tensor=16"], None, r"config.mesh.tensor: 16 does not divide "
                                                                  r"architecture.num_kv_heads=8"),
    (["--config.ia_sft.batch_size=40"], None, r"config.ia_sft.batch_size: 40 / micro_batches=1 = 40 rows must be "
                                              r"a multiple of data x fsdp = 16"),
    (["--config.ia_sft.buckets=(256,200000)"], None, r"config.ia_sft.buckets: .* max_position_embeddings=131072"),
    (["--config.organisms.remat=none"], None, r"config.organisms: needs about .* GiB per device"),
    (["--config.ia_sft.remat=dots"], None,
     r"config.ia_sft.remat='dots': choose one of \['none', 'projections', 'full'\]"),
    ([], 32, r"config.mesh: \{'data': 1, 'fsdp': 16, 'tensor': 4\} covers 64 devices, but there are 32"),
])
def test_broken_configs_fail_naming_the_field(overrides, devices, message):
    with pytest.raises((hf_run.RunConfigError, ValueError), match=message):
        hf_run.validate(load("llama3_3_70b", *overrides), devices)


def test_misspelt_fields_are_refused_on_the_command_line_and_in_the_file():
    with pytest.raises((KeyError, AttributeError), match='Did you mean "learning_rate"'):
        load("llama3_3_70b", "--config.ia_sft.learnig_rate=1e-3")
    config = load("llama3_3_70b")
    with config.unlocked():
        config.ia_sft.learnig_rate = 1e-3  # as an edit of the config file would
    with pytest.raises(ValueError, match=r"config.ia_sft.learnig_rate: unknown field"):
        hf_run.validate(config)


def test_a_checkpoint_of_another_model_is_refused_by_field():
    from ia_jax import models

    config = load("qwen3_0p6b", "--config.base.checkpoint=/ckpt/Qwen3-4B")
    other = models.ModelConfig(model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                               num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
                               max_position_embeddings=40960, tie_word_embeddings=True)
    with pytest.raises(hf_run.RunConfigError, match=r"config.architecture.hidden_size: 1024, but /ckpt/Qwen3-4B "
                                                     r"has 2560"):
        hf_run.check_architecture(other, config)


def test_a_run_on_another_slice_is_refused_before_anything_loads(tmp_path):
    """The tests see 8 devices; the 0.6B recipe is sized for the 4 chips of a v5p-8."""
    config = load("qwen3_0p6b", "--config.base.checkpoint=/nowhere")
    with pytest.raises(hf_run.RunConfigError, match=r"config.hardware.devices: 4 \(v5p-8\), but this job sees 8 "
                                                     r"devices"):
        hf_run.run_hf(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
