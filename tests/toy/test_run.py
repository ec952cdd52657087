"""Config checks of the toy run (that every shipped config builds is tests/test_configs.py); the run
itself is exercised end to end by `tests/test_main.py` (the smoke config through `python -m ia_jax.main`)."""

import pytest

from configs import toy  # noqa: I001 (configs/ is a top-level folder of the repository)
from ia_jax.toy import run as toy_run


def test_a_misspelt_recipe_field_is_an_error_naming_it():
    config = toy.get_config()
    config.ia_sft.learnig_rate = 1e-3
    with pytest.raises(ValueError, match="config.ia_sft.learnig_rate: unknown field"):
        toy_run.check_config(config)
