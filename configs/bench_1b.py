"""The issue's accelerator workload: LoRA SFT of a 1B-class model in bfloat16, with MFU against this
device's own bfloat16 matmul peak (timed in the same run) and transformers + peft beside it, also in
bfloat16, on CUDA when torch sees a GPU.

`python -m ia_jax.bench --config=configs/bench_1b.py --out=bench_1b.json`

The model has Llama 3.2 1B's shapes (1.24B parameters, tied embeddings, a 128k vocabulary), without
its RoPE scaling, which changes no FLOP. Batch 8 at sequence 2048, each example's last 512 tokens its
loss span; the organism jobs are left out, since 32 fresh processes would each pay the accelerator's
start-up. On a 2-core CPU one IA step of this takes minutes: it is meant for a GPU or TPU.
"""

import ml_collections

from ia_jax import config_files


def get_config() -> ml_collections.ConfigDict:
    c = config_files.sibling_config(__file__, "bench.py")
    c.name = "bench_1b"
    c.model = dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
                   num_heads=32, num_kv_heads=8, head_dim=64, qk_norm=False, tie_word_embeddings=True,
                   dtype="bfloat16", param_dtype="bfloat16")
    c.batch_size = 8
    c.seq_len = 2048
    c.answer_tokens = 512
    c.peak_matmul_size = 8192
    c.repeats = 10
    c.decode.update(batch_sizes=(1, 8, 32), prompt_tokens=128, new_tokens=128)
    c.workloads = ("ia_sft", "dpo", "decode")
    c.memory = ("ia_sft",)  # each measured workload loads the model twice more, in fresh processes
    return ml_collections.ConfigDict(c)
