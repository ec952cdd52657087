"""The benchmark shrunk to seconds, for CI: every workload and the reference run, so the harness
cannot rot; the numbers mean nothing at this size.

`python -m ia_jax.bench --config=configs/bench_smoke.py --out=/tmp/bench.json`
"""

import ml_collections

from ia_jax import config_files


def get_config() -> ml_collections.ConfigDict:
    c = config_files.sibling_config(__file__, "bench.py")
    c.name = "bench_smoke"
    c.model.update(vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=8)
    c.batch_size = 2
    c.seq_len = 32
    c.answer_tokens = 8
    c.organisms_in_batch = 2
    c.organism_lora.update(rank=2, alpha=4.0)
    c.ia_lora.update(rank=2, alpha=4.0)
    c.repeats = 2
    c.peak_matmul_size = 256
    c.organism_jobs.update(count=2, examples_per_organism=2, seq_len=32, sequential_jobs=1)
    c.decode.update(batch_sizes=(1, 2), prompt_tokens=8, new_tokens=8)
    c.curves.update(organisms=(1, 2), single_jobs=1, seq_lens=(16, 32), ranks=(2, 4), decode_batches=(1, 2))
    c.memory = ("ia_sft",)  # each measured workload costs two fresh processes
    return ml_collections.ConfigDict(c)
