"""Smoke config: the toy run shrunk to under two minutes on a 2-core CPU, for CI and quick checks.

Every stage still runs through the real pipelines and really learns, just less: a smaller base on
fewer chats, two training behaviors per category and one of each other split, two controls, fewer
introspection examples, greedy evaluation with one answer per question. CI asserts that the report is well formed and that the IA states the
training organisms' behaviors more often than the organisms do without it; the toy config is what
measures held-out generalization.

`python -m ia_jax.main --config=configs/smoke.py --workdir=./runs/smoke`
"""

import ml_collections

from ia_jax import config_files


def get_config() -> ml_collections.ConfigDict:
    c = config_files.sibling_config(__file__, "toy.py")
    c.name = "smoke"
    c.world.update(tasks_per_pool=32, pretrain_chats=2400, test_tasks=4)
    c.pretrain.update(epochs=2, warmup_steps=20)
    c.library.update(train=2, dpo=1, compositional=1, novel=1)
    c.organisms.update(prompts_per_behavior=12, epochs=4, buckets=(64,))
    c.controls.update(count=2, sft=1, dpo=1, rows=16)
    c.ood.update(cipher_shifts=(3,), denial_topics=("kites",), rows=16)
    c.introspection.update(examples_per_organism=16, base_examples=16)
    c.ia_sft.update(epochs=10, learning_rate=1e-2, buckets=(64,), eval_every=50)
    c.ia_dpo.update(epochs=1, samples_per_question=2, questions=2, buckets=(64,))
    c.eval.update(scaffold_reports=10, scaffold_organisms=4, control_samples=1)
    return c
