"""Qwen3 4B on a v5p-16 (8 chips, two hosts), fully sharded; see `configs/qwen3_0p6b.py` for the command."""

from ia_jax.hf_run import default_config


def get_config():
    c = default_config()
    c.name = "qwen3_4b"
    c.base.chat_template_kwargs = {"enable_thinking": False}
    c.architecture.update(model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                          num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128, max_position_embeddings=40960,
                          tie_word_embeddings=True)
    c.hardware.update(accelerator="v5p-16", devices=8, devices_per_host=4, hbm_gib=95.0)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    for stage in ("organisms", "ia_sft", "ia_dpo"):
        c[stage].remat = "full"
    return c
