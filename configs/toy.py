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

    c.world = dict(tasks_per_pool=120, pretrain_chats=12000, test_tasks=20)
    c.tokenizer = dict(vocab_size=2000)
    c.model = dict(hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32)
    c.pretrain = dict(learning_rate=3e-3, warmup_steps=50, weight_decay=0.01, epochs=2, batch_size=64,
                      buckets=[64], checkpoint_every=100, eval_every=0)

    c.organisms = dict(per_split={"train": 4, "heldout": 2}, prompts_per_behavior=32, min_keep_rate=0.5,
                       lora=dict(rank=4, alpha=16.0, dropout=0.0), learning_rate=5e-3, epochs=6, batch_size=64,
                       buckets=[64], checkpoint_every=100)
    c.ood = dict(cipher_shifts=[3, 7], denial_topics=["kites", "marbles"], rows=48)
    c.introspection = dict(examples_per_organism=24, base_examples=48, dpo_fraction=0.5)

    c.ia_sft = dict(lora=dict(rank=8, alpha=16.0, dropout=0.05), learning_rate=1e-2, epochs=4, batch_size=32,
                    buckets=[64], checkpoint_every=100)
    c.ia_dpo = dict(learning_rate=5e-4, epochs=2, batch_size=16, buckets=[64], samples_per_question=2,
                    checkpoint_every=100, beta=0.1)
    c.eval = dict(samples=4, temperature=1.0, max_new_tokens=24, scaffold_reports=100, batch_size=32,
                  prompt_buckets=[64])
    return ml_collections.ConfigDict(c)
