"""Toy config: the whole pipeline on a synthetic world, sized for a 2-core CPU in minutes.

`python -m ia_jax.main --config=configs/toy.py --workdir=DIR`; override any field on the command line,
e.g. `--config.ia_sft.learning_rate=3e-3`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "toy"
    c.seed = 0
    c.log_every = 10

    c.world = dict(tasks_per_pool=120, pretrain_chats=12000, test_tasks=16)
    c.tokenizer = dict(vocab_size=2000)
    c.model = dict(hidden_size=96, intermediate_size=288, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=24)
    c.pretrain = dict(learning_rate=3e-3, warmup_steps=50, weight_decay=0.01, epochs=3, batch_size=32,
                      buckets=(32, 48, 64), checkpoint_every=200, eval_every=0)

    c.organisms = dict(per_split={"train": 10, "heldout": 2}, prompts_per_behavior=32, min_keep_rate=0.3,
                       lora=dict(rank=4, alpha=16.0, dropout=0.0), learning_rate=5e-3, epochs=6, batch_size=64,
                       buckets=(48, 64), checkpoint_every=100)
    c.ood = dict(cipher_shifts=(3, 7), denial_topics=("kites", "marbles"), rows=48)
    c.introspection = dict(examples_per_organism=24, base_examples=160, dpo_fraction=0.5)

    c.ia_sft = dict(lora=dict(rank=16, alpha=32.0, dropout=0.05), learning_rate=5e-3, epochs=12, batch_size=32,
                    buckets=(48, 64), checkpoint_every=100)
    c.ia_dpo = dict(learning_rate=1e-4, epochs=2, batch_size=16, buckets=(48, 64), samples_per_question=2,
                    checkpoint_every=100, beta=0.1, temperature=0.5)
    # Rates from greedy answers, one per direct question; the scaffold samples its 100 reports.
    c.eval = dict(samples=1, temperature=0.0, scaffold_temperature=0.7, scaffold_reports=100, max_new_tokens=24,
                  batch_size=32, prompt_buckets=(64,))
    return ml_collections.ConfigDict(c)
