"""Benchmark config: `python -m ia_jax.bench --config=configs/bench.py --out=bench.json`.

The issue's CPU workload: a Qwen3-shaped model of 48M parameters, batch 8 at sequence 256, each IA
example's answer (the loss) its last 64 tokens, the reference LoRA recipe for both the organisms and
the IA. Override any field, e.g. `--config.organism_jobs.sequential_jobs=4` to time 4 single-organism
jobs and scale them to the 32.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "bench"
    c.seed = 0
    c.model = dict(model_type="qwen3", vocab_size=32000, hidden_size=512, intermediate_size=2048, num_layers=8,
                   num_heads=8, num_kv_heads=4, head_dim=64, qk_norm=True, tie_word_embeddings=True,
                   dtype="float32", param_dtype="float32")
    c.batch_size = 8
    c.seq_len = 256
    c.answer_tokens = 64  # the loss span of each IA SFT example and DPO completion
    c.organisms_in_batch = 8  # stacked organism slots the IA batches mix (the reference runs one organism)
    c.organism_lora = dict(rank=16, alpha=32.0, dropout=0.05)
    c.ia_lora = dict(rank=16, alpha=32.0, dropout=0.05)
    c.learning_rate = 1e-4
    c.dpo_beta = 0.1
    c.warmup = 1  # untimed calls after the compiling one
    c.repeats = 5
    c.peak_matmul_size = 2048  # the square matmul timed as this device's peak
    # K organisms trained in one job versus K single-organism jobs, each a fresh process that loads the
    # base from a safetensors checkpoint, compiles, trains and saves, as a user would run them.
    c.organism_jobs = dict(count=32, examples_per_organism=8, seq_len=256, sequential_jobs=32)
    c.decode = dict(batch_sizes=(1, 8, 32), prompt_tokens=64, new_tokens=128)
    c.workloads = ("ia_sft", "dpo", "organisms", "decode")
    # `python -m ia_jax.bench.curves`: our costs as the work grows (IA SFT at batch_size, the IA's alpha 2 x rank).
    c.curves = dict(organisms=(1, 8, 32, 128), single_jobs=4, seq_lens=(256, 512, 1024, 2048), ranks=(4, 16, 64),
                    decode_batches=(1, 8, 32, 64), warmup=0, repeats=2)
    c.reference = True  # also time transformers + peft on the same workloads
    # Workloads whose peak memory each side's own fresh process measures (memory.py; about 20 s each).
    c.memory = ("ia_sft", "dpo", "organisms", "decode")
    return c
