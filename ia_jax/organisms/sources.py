"""Organisms from wherever they were made: our PEFT exports, PEFT adapters trained elsewhere
(AuditBench-style), or full fine-tuned checkpoints, all becoming slots of one stacked adapter."""

from __future__ import annotations

import os
from typing import Mapping

from ia_jax.lora.adapter import LoraAdapter
from ia_jax.lora.peft_io import CONFIG_FILE, load_peft, stack_adapters
from ia_jax.models.config import ModelConfig
from ia_jax.organisms.import_full import extract_lora


def load_organism(path: str, model_config: ModelConfig, *, base_path: str | None = None,
                  full_rank: int = 64) -> LoraAdapter:
    """A PEFT directory as is; a full checkpoint (its `config.json`) as its rank-`full_rank` delta from
    the base at `base_path` (see `import_full`: refused if it changed weights no LoRA can carry)."""
    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        return load_peft(path, model_config)
    if os.path.exists(os.path.join(path, "config.json")):
        if base_path is None:
            raise ValueError(f"{path}: a full fine-tuned checkpoint; importing it needs the base checkpoint's path")
        adapter, _ = extract_lora(base_path, path, rank=full_rank, model_config=model_config)
        return adapter
    raise ValueError(f"{path}: neither a PEFT adapter ({CONFIG_FILE}) nor a Hugging Face checkpoint (config.json)")


def load_organisms(paths: Mapping[str, str], model_config: ModelConfig, *, base_path: str | None = None,
                   full_rank: int = 64) -> LoraAdapter:
    """Every organism stacked in `paths` order (slot i = i-th name)."""
    if not paths:
        raise ValueError("no organisms to load")
    return stack_adapters([load_organism(p, model_config, base_path=base_path, full_rank=full_rank)
                           for p in paths.values()], model_config)
