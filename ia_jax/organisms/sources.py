"""Organisms from wherever they were made: our PEFT exports, PEFT adapters trained elsewhere
(AuditBench-style), or full fine-tuned checkpoints, all becoming slots of one stacked adapter; and
the chat sampler the entry points (serve, audit) build from a checkpoint, organisms and an IA."""

from __future__ import annotations

import os
from typing import Mapping

from ia_jax import tokenization
from ia_jax.lora.adapter import LoraAdapter
from ia_jax.lora.peft_io import CONFIG_FILE, load_peft, stack_adapters
from ia_jax.models.config import ModelConfig
from ia_jax.models.hf_checkpoint import load_hf
from ia_jax.organisms.import_full import extract_lora
from ia_jax.sampling.chat import ChatSampler
from ia_jax.sampling.sampler import Sampler


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


def load_chat_sampler(model_dir: str, organisms: Mapping[str, str], ia_dir: str | None, *, max_batch: int,
                      max_prompt: int = 4096, dtype: str | None = None, full_rank: int = 64,
                      template_kwargs: dict | None = None) -> ChatSampler:
    """The checkpoint at `model_dir` (with its tokenizer), `organisms` (name -> directory, see
    `load_organism`) stacked in that order, and the IA at `ia_dir` if given, ready to chat."""
    model = load_hf(model_dir, dtype=dtype, param_dtype=dtype)
    tokenizer = tokenization.load_tokenizer(model_dir)
    stacked = load_organisms(organisms, model.config, base_path=model_dir, full_rank=full_rank) if organisms else None
    sampler = Sampler(model, organisms=stacked, ia=load_peft(ia_dir, model.config) if ia_dir else None,
                      stop_ids=tokenization.stop_token_ids(tokenizer), pad_id=tokenizer.pad_token_id or 0,
                      max_batch=max_batch, max_prompt=max_prompt)
    return ChatSampler(sampler, tokenizer, {name: slot for slot, name in enumerate(organisms)},
                       **(template_kwargs or {}))
