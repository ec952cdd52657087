"""Qwen3 0.6B on a v5p-8 (4 chips, one host): the smallest real recipe, for a first run on a pod.

    launch/tpu_run.sh ... --config=configs/qwen3_0p6b.py -- --workdir=gs://BUCKET/runs/qwen3_0p6b \
        --config.base.checkpoint=gs://BUCKET/models/Qwen3-0.6B --config.judge.url=https://JUDGE/v1 \
        --config.judge.model=JUDGE_MODEL

Every field is in `ia_jax.hf_run.default_config`; any can be overridden on the command line.
"""

from ia_jax.hf_run import default_config


def get_config():
    c = default_config()
    c.name = "qwen3_0p6b"
    c.base.chat_template_kwargs = {"enable_thinking": False}  # answers, not <think> blocks
    c.architecture.update(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                          num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, max_position_embeddings=40960,
                          tie_word_embeddings=True)
    c.hardware.update(accelerator="v5p-8", devices=4, devices_per_host=4, hbm_gib=95.0)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return c
