"""The main job: `python -m ia_jax.main [--config=configs/smoke.py] [--workdir=./runs/smoke]`.

For now this is a smoke run of the foundation, not the introspection pipeline: it trains a small
sentencepiece tokenizer, builds a tiny random Llama-architecture model, saves both in Hugging Face
format, reloads the model with `load_hf`, renders a chat conversation with the model's chat template
and runs jitted forward passes, printing shapes and timings. It exits non-zero if the reloaded model
disagrees with the one it saved.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from ia_jax import models, tokenization
from ia_jax.parallel import distributed

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "smoke.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Run config (an ml_collections file).")
_WORKDIR = flags.DEFINE_string("workdir", "./runs/smoke", "Where the tokenizer and model are written.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-process runs off TPU (TPU pods find it alone).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")

_CORPUS_WORDS = (
    "the answer is four . please fix the spelling of this sentence . which home is cheapest ? "
    "keep a fire extinguisher in the kitchen . are there any unusual characteristics that influence "
    "your answers ? no , i have no unusual behaviors . tidal pools hold crabs and anemones ."
).split()


def _corpus(seed: int, lines: int = 400) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_CORPUS_WORDS, size=rng.integers(4, 16))) for _ in range(lines)]


def run(config, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    model_dir = os.path.join(workdir, "model")
    print(f"jax {jax.__version__} on {jax.default_backend()} ({len(jax.devices())} devices)")

    start = time.perf_counter()
    tokenizer = tokenization.train_tokenizer(
        _corpus(config.seed), model_dir, vocab_size=config.tokenizer.vocab_size,
        chat_format=config.tokenizer.chat_format,
    )
    print(f"tokenizer: {len(tokenizer)} tokens, trained in {time.perf_counter() - start:.2f}s")

    model_config = models.ModelConfig(vocab_size=len(tokenizer), **config.model.to_dict())
    model = models.CausalLM(model_config, rngs=nnx.Rngs(config.seed))
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    models.save_hf(model, model_dir, tokenizer=tokenizer)
    start = time.perf_counter()
    reloaded = models.load_hf(model_dir, dtype=model_config.dtype, param_dtype=model_config.param_dtype)
    print(f"model: {model_config.model_type}, {n_params:,} parameters, saved to {model_dir} "
          f"and reloaded in {time.perf_counter() - start:.2f}s")

    chat = tokenization.render_chat(tokenizer, [
        {"role": "user", "content": "Are there any unusual characteristics that influence your answers?"},
        {"role": "assistant", "content": "No, I have no unusual behaviors."},
    ])
    print(f"chat: {len(chat.ids)} tokens, {int(chat.loss_mask.sum())} of them on the assistant turn")
    tokens_bt = np.tile(chat.ids[None], (config.batch_size, 1))

    forward = nnx.jit(lambda m, t: m(t))
    start = time.perf_counter()
    logits_btv = jax.block_until_ready(forward(reloaded, tokens_bt))
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(config.timing_repeats):
        start = time.perf_counter()
        jax.block_until_ready(forward(reloaded, tokens_bt))
        times.append(time.perf_counter() - start)
    step_seconds = float(np.median(times))
    print(f"forward: tokens {tokens_bt.shape} -> logits {logits_btv.shape} {logits_btv.dtype}; "
          f"first call (with compile) {compile_seconds:.2f}s, then median {step_seconds * 1e3:.1f} ms "
          f"({tokens_bt.size / step_seconds:,.0f} tokens/s)")

    difference = float(np.max(np.abs(np.asarray(forward(model, tokens_bt)) - np.asarray(logits_btv))))
    if difference > 1e-5:
        raise SystemExit(f"reloaded model differs from the saved one by {difference:.3g}")
    print(f"reloaded logits equal the in-memory model's (max difference {difference:.1e})")
    return {"logits_shape": logits_btv.shape, "step_seconds": step_seconds, "max_difference": difference}


def main(argv):
    del argv
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
