"""Composable LoRA: stacked (per-example) and shared adapters as pytrees apart from the base."""

from ia_jax.lora.adapter import (
    TARGETS,
    AdapterError,
    LoraAdapter,
    LoraConfig,
    check_fits,
    check_ids,
    init_adapter,
)
from ia_jax.lora.merge import merge, unmerge

__all__ = [
    "TARGETS",
    "AdapterError",
    "LoraAdapter",
    "LoraConfig",
    "check_fits",
    "check_ids",
    "init_adapter",
    "merge",
    "unmerge",
]
