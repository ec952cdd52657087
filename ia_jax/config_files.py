"""Configs that build on another config file (smoke on toy, the benchmark variants on bench).

By path, not `from configs import toy`: absl loads config files by path, from any directory, so
`configs` need not be importable.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def sibling_config(config_file: str, name: str) -> ml_collections.ConfigDict:
    """`get_config()` of the file `name` in the folder of `config_file` (pass `__file__`)."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{config_file}: builds on {path}, which does not exist")
    spec = importlib.util.spec_from_file_location(f"_ia_jax_config_{os.path.splitext(name)[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
