"""Smoke config: a tiny Llama-architecture model, small enough to build, save, reload and run in seconds.

Used by `python -m ia_jax.main` by default, so the main command works on any laptop out of the box.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.model_type = "llama"
    config.model.hidden_size = 64
    config.model.intermediate_size = 176
    config.model.num_layers = 2
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.head_dim = 16
    config.model.tie_word_embeddings = False
    config.model.dtype = "float32"
    config.model.param_dtype = "float32"

    config.tokenizer = ml_collections.ConfigDict()
    config.tokenizer.vocab_size = 320
    config.tokenizer.chat_format = "llama3"

    config.batch_size = 4
    config.timing_repeats = 5
    return config
