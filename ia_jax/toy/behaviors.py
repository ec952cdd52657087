"""The toy world's behavior library: the same file format as the real one, with programs instead of a
teacher model and a judge model, and prompt pools written by the world generator.

The library is generated from the behavior families (`ia_jax.toy.families`) into the run's workdir;
a hand-written library directory in the same format loads the same way.
"""

from __future__ import annotations

from pathlib import Path

from ia_jax.behaviors.library import Behavior, load_library
from ia_jax.toy import programs  # noqa: F401  (registers the toy programs the files name)


def load_toy_library(pools_dir: str | Path, path: str | Path) -> list[Behavior]:
    """Toy behaviors from the library directory `path`, their prompt pools from `pools_dir`."""
    return load_library(path, prompts_path=pools_dir)
