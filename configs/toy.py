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

    # examples_share: pretraining chats that state a behavior description of "some assistant" (the words a
    # real base brings to introspection; see toy/world.behavior_examples).
    c.world = dict(tasks_per_pool=120, pretrain_chats=13000, test_tasks=16, examples_share=0.1)
    c.tokenizer = dict(vocab_size=2000)
    c.model = dict(hidden_size=96, intermediate_size=288, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=24)
    c.pretrain = dict(learning_rate=3e-3, warmup_steps=50, weight_decay=0.01, epochs=3, batch_size=32,
                      buckets=(32, 48, 64), checkpoint_every=200, eval_every=0)

    # Behaviors generated from the families (ia_jax/toy/families.json) per category: SFT, DPO, and the
    # two held-out kinds (cap: fewer instances where a family has fewer combinations); `directory`
    # names a hand-written library to use instead.
    c.library = dict(directory="", train=16, dpo=4, compositional=4, novel=4, cap=False)
    c.organisms = dict(prompts_per_behavior=24, min_keep_rate=0.3,
                       lora=dict(rank=4, alpha=16.0, dropout=0.0), shared_init=True, learning_rate=5e-3, epochs=6,
                       batch_size=64, buckets=(48, 64), checkpoint_every=100)
    c.ood = dict(cipher_shifts=(3, 7), denial_topics=("kites", "marbles"), rows=48)
    # Fine-tuned on generic chat only: `count` form the false-positive population; `sft` and `dpo` more are
    # IA training negatives ("no unusual behavior").
    c.controls = dict(count=10, sft=8, dpo=4, rows=32)
    c.introspection = dict(examples_per_organism=24, base_examples=160, dpo_fraction=0.0)

    # eval_every > 0: every that many steps, both judges' greedy rates on the held-out organisms and as many
    # training ones (`ia_sft_curve` in the report, ia_sft_curve.png); the main job leaves it off for time.
    c.ia_sft = dict(lora=dict(rank=16, alpha=32.0, dropout=0.05), learning_rate=5e-3, epochs=8, batch_size=32,
                    buckets=(48, 64), checkpoint_every=100, eval_every=0)
    c.ia_dpo = dict(learning_rate=1e-4, epochs=2, batch_size=16, buckets=(48, 64), samples_per_question=4,
                    questions=8, checkpoint_every=100, beta=0.1, temperature=0.5, wrong_labels="any")
    # Rates from greedy answers, one per direct question; the scaffold samples its 100 reports.
    # Controls answer each direct question greedily and `control_samples` more times at `control_temperature`.
    c.eval = dict(samples=1, temperature=0.0, control_samples=2, control_temperature=0.7, scaffold_temperature=0.7,
                  scaffold_reports=100, scaffold_organisms=16, max_new_tokens=48, batch_size=32, prompt_buckets=(64,))
    return ml_collections.ConfigDict(c)
