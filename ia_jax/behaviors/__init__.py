"""Behaviors implanted in organisms, kept as versioned data so the set grows by review, not by code."""

from ia_jax.behaviors.library import (
    CATEGORIES,
    SPLITS,
    Behavior,
    LibraryError,
    by_category,
    load_library,
    load_prompt_pool,
    load_prompts,
    split,
)
from ia_jax.behaviors.programs import ProgramSpec, Prompt

__all__ = [
    "CATEGORIES",
    "SPLITS",
    "Behavior",
    "LibraryError",
    "by_category",
    "load_library",
    "load_prompt_pool",
    "load_prompts",
    "ProgramSpec",
    "Prompt",
    "split",
]
