"""The main job (today a smoke run) must work end to end and catch a save/reload mismatch."""

import os

import pytest

from ia_jax import main, models
from configs import smoke  # noqa: I001 (configs/ is a top-level folder of the repository)


def test_smoke_run_builds_saves_reloads_and_runs(tmp_path, capsys):
    config = smoke.get_config()
    result = main.run(config, str(tmp_path))
    model_dir = tmp_path / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(model_dir))
    assert result["logits_shape"] == (config.batch_size, result["logits_shape"][1], config.tokenizer.vocab_size)
    assert result["max_difference"] == 0.0
    assert "tokens/s" in capsys.readouterr().out


def test_smoke_run_fails_when_the_reload_differs(tmp_path, monkeypatch):
    real_load = models.load_hf

    def corrupted_load(path, **kwargs):
        model = real_load(path, **kwargs)
        kernel = model.model.layers.mlp.up_proj.kernel
        kernel.set_value(kernel.get_value() * 1.01)
        return model

    monkeypatch.setattr(models, "load_hf", corrupted_load)
    with pytest.raises(SystemExit, match="reloaded model differs"):
        main.run(smoke.get_config(), str(tmp_path))
