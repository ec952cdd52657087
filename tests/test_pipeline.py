"""The method's shared driver: the IA SFT probe's curve read back from the stage's metrics log, and
its flag checked before any stage runs."""

import json

import pytest

from configs import toy  # noqa: I001 (configs/ is a top-level folder of the repository)
from ia_jax.pipeline import method_recipes, sft_curve


def test_the_curve_keeps_the_probed_steps_once_each_the_last_entry_winning(tmp_path):
    log = tmp_path / "metrics.jsonl"
    entries = [{"step": 10, "loss": 2.0},
               {"step": 50, "loss": 1.0, "verbalization_heldout": 0.1, "type_match_heldout": 0.2},
               {"step": 100, "loss": 0.5, "verbalization_heldout": 0.3, "type_match_train": 0.9},
               # a resumed run logs step 100 again, after its last checkpoint
               {"step": 100, "loss": 0.5, "verbalization_heldout": 0.25, "type_match_train": 0.8},
               {"step": 110, "loss": 0.4}]
    log.write_text("".join(json.dumps(e) + "\n" for e in entries) + "\n")  # a trailing blank line is skipped
    assert sft_curve(str(log)) == [{"step": 50, "verbalization_heldout": 0.1, "type_match_heldout": 0.2},
                                   {"step": 100, "verbalization_heldout": 0.25, "type_match_train": 0.8}]


def test_no_log_or_no_probe_is_no_curve(tmp_path):
    assert sft_curve(str(tmp_path / "missing.jsonl")) == []
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert sft_curve(str(tmp_path / "metrics.jsonl")) == []


@pytest.mark.parametrize("every", [15, -10])
def test_a_probe_interval_off_the_logged_steps_fails_before_any_stage(every):
    config = toy.get_config()
    config.ia_sft.eval_every = every
    with pytest.raises(ValueError, match=rf"config.ia_sft.eval_every={every}: .* config.log_every=10"):
        method_recipes(config)
    config.ia_sft.eval_every = 50
    assert method_recipes(config)["ia_sft"].eval_every == 50
