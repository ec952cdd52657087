"""PEFT LoRA adapters in and out (`adapter_config.json` + `adapter_model.safetensors`).

PEFT is how organisms trained elsewhere (AuditBench-style) arrive and how ours leave for transformers
and vLLM, so the layout is PEFT's: `base_model.model.model.layers.{i}.{module}.lora_A.weight` `[rank,
in]` and `lora_B.weight` `[out, rank]`, scale `lora_alpha / r`. Organisms of different ranks and
alphas stack into one adapter by zero-padding the rank and folding each scale into its `lora_B`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

from ia_jax.lora.adapter import TARGETS, AdapterError, LoraAdapter, LoraConfig, check_fits, projection_shapes
from ia_jax.models.config import ModelConfig
from ia_jax.models.safetensors_io import SafetensorsFile, write_safetensors
from ia_jax.parallel import multihost

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_MODULE_TO_TARGET = {module: target for target, (_, module) in TARGETS.items()}


def _tensor_name(layer: int, target: str, which: str) -> str:
    block, module = TARGETS[target]
    return f"base_model.model.model.layers.{layer}.{block}.{module}.lora_{which}.weight"


def save_peft(adapter: LoraAdapter, path: str, *, slot: int | None = None,
              base_model_name_or_path: str | None = None) -> None:
    """Writes one adapter (one slot of a stacked one) as a PEFT LoRA directory."""
    if adapter.stacked and slot is None:
        raise AdapterError(f"{path}: a stacked adapter of {adapter.num_slots} slots needs the slot to save")
    os.makedirs(path, exist_ok=True)
    specs, sources = [], {}
    for target, pair in adapter.weights.items():
        a, b = pair["lora_a"], pair["lora_b"]
        if adapter.stacked:
            a, b = a[:, slot], b[:, slot]
        layers, rank = a.shape[0], adapter.config.rank
        fan_in, fan_out = math.prod(a.shape[1:-1]), math.prod(b.shape[2:])
        for layer in range(layers):
            specs.append((_tensor_name(layer, target, "A"), (rank, fan_in), np.dtype(np.float32)))
            specs.append((_tensor_name(layer, target, "B"), (fan_out, rank), np.dtype(np.float32)))
            sources[_tensor_name(layer, target, "A")] = (a, layer, lambda x, r=rank: x.reshape(-1, r).T)
            sources[_tensor_name(layer, target, "B")] = (b, layer, lambda x, r=rank: x.reshape(r, -1).T)

    def fetch(name):
        array, layer, to_peft = sources[name]
        return to_peft(np.asarray(multihost.fetch(array[layer]), np.float32))

    write_safetensors(os.path.join(path, WEIGHTS_FILE), specs, fetch)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": adapter.config.rank,
        "lora_alpha": adapter.config.alpha,
        "lora_dropout": adapter.config.dropout,
        "target_modules": sorted(TARGETS[t][1] for t in adapter.weights),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path,
    }
    with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def _read_config(path: str) -> dict:
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise AdapterError(f"{path}: no {CONFIG_FILE}; not a PEFT adapter directory")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    unsupported = {
        "peft_type": config.get("peft_type") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "use_rslora": bool(config.get("use_rslora")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "layers_to_transform": config.get("layers_to_transform") is not None,
        "modules_to_save": bool(config.get("modules_to_save")),
        "bias": config.get("bias", "none") != "none",
    }
    bad = [key for key, is_bad in unsupported.items() if is_bad]
    if bad:
        raise AdapterError(f"{os.path.join(path, CONFIG_FILE)}: unsupported settings {bad} "
                           f"({', '.join(f'{k}={config.get(k)!r}' for k in bad)}); plain LoRA only")
    return config


def load_peft(path: str, model_config: ModelConfig) -> LoraAdapter:
    """A PEFT LoRA directory as a shared adapter for a base of `model_config`."""
    config = _read_config(path)
    modules = config.get("target_modules") or []
    if isinstance(modules, str):
        raise AdapterError(f"{os.path.join(path, CONFIG_FILE)}: target_modules as a regex ({modules!r}) is "
                           "not supported; list the modules")
    unknown = [m for m in modules if m not in _MODULE_TO_TARGET]
    if unknown:
        raise AdapterError(f"{os.path.join(path, CONFIG_FILE)}: target_modules {unknown} are not LoRA targets "
                           f"here; supported: {sorted(_MODULE_TO_TARGET)}")
    targets = tuple(t for t in TARGETS if TARGETS[t][1] in modules)
    rank = int(config["r"])
    lora_config = LoraConfig(rank=rank, alpha=float(config["lora_alpha"]),
                             dropout=float(config.get("lora_dropout", 0.0)), targets=targets)
    weights_path = os.path.join(path, WEIGHTS_FILE)
    if not os.path.exists(weights_path):
        raise AdapterError(f"{path}: no {WEIGHTS_FILE} (only safetensors adapters are loaded)")
    file = SafetensorsFile(weights_path)
    weights = {}
    for target in targets:
        in_shape, out_shape = projection_shapes(model_config, target)
        a_layers, b_layers = [], []
        for layer in range(model_config.num_layers):
            a_name, b_name = _tensor_name(layer, target, "A"), _tensor_name(layer, target, "B")
            for name, shape in ((a_name, (rank, math.prod(in_shape))), (b_name, (math.prod(out_shape), rank))):
                if name not in file:
                    raise AdapterError(f"{weights_path}: missing tensor {name!r} (expected shape {list(shape)})")
                if file.shape(name) != shape:
                    raise AdapterError(f"{weights_path}: tensor {name!r} has shape {list(file.shape(name))}, "
                                       f"expected {list(shape)} for this base model")
            a_layers.append(np.asarray(file[a_name], np.float32).T.reshape(*in_shape, rank))
            b_layers.append(np.asarray(file[b_name], np.float32).T.reshape(rank, *out_shape))
        weights[target] = {"lora_a": np.stack(a_layers), "lora_b": np.stack(b_layers)}
    adapter = LoraAdapter(weights=weights, config=lora_config)
    check_fits(adapter, model_config, path)
    return adapter


def stack_adapters(adapters: Sequence[LoraAdapter], model_config: ModelConfig) -> LoraAdapter:
    """One stacked adapter (slot i = adapters[i]); ranks are zero-padded and scales folded into lora_b."""
    if not adapters:
        raise AdapterError("no adapters to stack")
    rank = max(a.config.rank for a in adapters)
    targets = tuple(t for t in TARGETS if any(t in a.weights for a in adapters))
    weights = {}
    for target in targets:
        in_shape, out_shape = projection_shapes(model_config, target)
        layers = model_config.num_layers
        stacked_a = np.zeros((layers, len(adapters), *in_shape, rank), np.float32)
        stacked_b = np.zeros((layers, len(adapters), rank, *out_shape), np.float32)
        for slot, adapter in enumerate(adapters):
            if adapter.stacked:
                raise AdapterError(f"adapter {slot} is already stacked; stack shared adapters")
            if target in adapter.weights:
                r = adapter.config.rank
                stacked_a[:, slot, ..., :r] = np.asarray(adapter.weights[target]["lora_a"])
                # Stacked scale is 1 (alpha = rank), so each adapter's own alpha/r moves into lora_b.
                stacked_b[:, slot, :r] = np.asarray(adapter.weights[target]["lora_b"]) * adapter.config.scale
        weights[target] = {"lora_a": stacked_a, "lora_b": stacked_b}
    config = LoraConfig(rank=rank, alpha=float(rank), dropout=0.0, targets=targets)
    return LoraAdapter(weights=weights, config=config, num_slots=len(adapters))
