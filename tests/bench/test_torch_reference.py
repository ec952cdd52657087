"""The reference side runs in the dtype of the config it is given, as ours does: a bfloat16 benchmark
(`configs/bench_1b.py`) compares bfloat16 against bfloat16."""

import numpy as np
import pytest
import torch

from ia_jax.bench import torch_reference, workloads
from ia_jax.models.config import ModelConfig, to_hf_dict

_MODEL = ModelConfig(model_type="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8, dtype="bfloat16", param_dtype="float32")
_LORA = {"rank": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["q", "k", "v", "o", "gate", "up", "down"]}


def test_the_reference_computes_in_our_compute_dtype_not_the_storage_one():
    assert to_hf_dict(_MODEL)["dtype"] == "float32"
    assert workloads.reference_config(_MODEL)["dtype"] == "bfloat16"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_model_adapters_and_a_train_step_run_in_the_configs_dtype(dtype):
    config = {**to_hf_dict(_MODEL), "dtype": dtype}
    assert {p.dtype for p in torch_reference.build_model(config).parameters()} == {getattr(torch, dtype)}
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(1, 128, (2, 16)).astype(np.int32),
             "attention_mask": np.ones((2, 16), np.int32), "loss_mask": np.r_[np.zeros(12), np.ones(4)][None]
             .repeat(2, 0).astype(np.int32)}
    step = torch_reference.ia_sft_step_call(config, batch, organism_lora=_LORA, ia_lora={**_LORA, "dropout": 0.05},
                                            learning_rate=1e-3)
    step()  # raises if gradients reach anything but the IA's LoRA weights


def test_an_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="config dtype 'int8'"):
        torch_reference.build_model({**to_hf_dict(_MODEL), "dtype": "int8"})
