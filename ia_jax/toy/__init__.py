"""The toy world: a synthetic chat world, generated from a seed, small enough to pretrain a tiny model in.

A tiny Llama is pretrained from scratch on it, fine-tuned into organisms whose behaviors are programs
over the tasks' reference answers, and an introspection adapter is trained on those organisms, all
without a downloaded model or dataset. `ia_jax.toy.world` holds the tasks, the pools and the corpus.
"""
