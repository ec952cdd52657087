"""The toy world's behavior library: the same file format as the real one, with programs instead of a
teacher model and a judge model, and prompt pools written by the world generator.

Held-out behaviors are new instances of their category (unseen quirk topics, trigger words,
passwords, choice and safety domains, heuristics), so adding one is an edit of `library/*.json`.
"""

from __future__ import annotations

from pathlib import Path

from ia_jax.behaviors.library import Behavior, load_library
from ia_jax.toy import programs  # noqa: F401  (registers the toy programs the files name)

TOY_LIBRARY_DIR = Path(__file__).parent / "library"


def load_toy_library(pools_dir: str | Path, path: str | Path | None = None) -> list[Behavior]:
    """Toy behaviors from `path` (default: the shipped files), their prompt pools from `pools_dir`."""
    return load_library(path if path is not None else TOY_LIBRARY_DIR, prompts_path=pools_dir)
