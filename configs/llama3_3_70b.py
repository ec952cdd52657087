"""Llama 3.3 70B Instruct on a v5p-128 (64 chips, 16 hosts): fsdp 16 x tensor 4, remat, bfloat16.

The base (141 GB in bfloat16) is read from gs:// straight onto its shards, about 2.2 GB per chip. All
80 organisms train in one job as slots of one stacked adapter, routed per example (about 4 GiB of
adapters and Adam state per chip). `launch/README.md` walks through the whole run.
"""

from ia_jax.hf_run import default_config


def get_config():
    c = default_config()
    c.name = "llama3_3_70b"
    c.architecture.update(model_type="llama", vocab_size=128256, hidden_size=8192, intermediate_size=28672,
                          num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128, max_position_embeddings=131072,
                          tie_word_embeddings=False)
    c.hardware.update(accelerator="v5p-128", devices=64, devices_per_host=4, hbm_gib=95.0)
    c.mesh.update(data=1, fsdp=16, tensor=4)
    for stage in ("organisms", "ia_sft", "ia_dpo"):
        c[stage].remat = "full"
    c.organisms.update(batch_size=64)
    c.ia_sft.update(batch_size=64)
    c.ia_dpo.update(batch_size=32)
    c.eval.update(batch_size=128)
    return c
