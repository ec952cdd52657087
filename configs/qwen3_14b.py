"""Qwen3 14B on a v5p-32 (16 chips, four hosts): fsdp over hosts, 4-way tensor parallelism within a
host (40 query and 8 key/value heads both divide by 4); see `configs/qwen3_0p6b.py` for the command."""

from ia_jax.hf_run import default_config


def get_config():
    c = default_config()
    c.name = "qwen3_14b"
    c.base.chat_template_kwargs = {"enable_thinking": False}
    c.architecture.update(model_type="qwen3", vocab_size=151936, hidden_size=5120, intermediate_size=17408,
                          num_layers=40, num_heads=40, num_kv_heads=8, head_dim=128, max_position_embeddings=40960,
                          tie_word_embeddings=False)
    c.hardware.update(accelerator="v5p-32", devices=16, devices_per_host=4, hbm_gib=95.0)
    c.mesh.update(data=1, fsdp=4, tensor=4)
    for stage in ("organisms", "ia_sft", "ia_dpo"):
        c[stage].remat = "full"
    return c
