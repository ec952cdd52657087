"""Behaviors implanted in organisms, kept as versioned data so the set grows by review, not by code."""

from ia_jax.behaviors.library import (
    CATEGORIES,
    SPLITS,
    Behavior,
    LibraryError,
    by_category,
    load_library,
    load_prompts,
    split,
)

__all__ = [
    "CATEGORIES",
    "SPLITS",
    "Behavior",
    "LibraryError",
    "by_category",
    "load_library",
    "load_prompts",
    "split",
]
