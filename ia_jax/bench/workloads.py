"""Our side of the benchmark: the real trainers and sampler of the pipeline on synthetic batches.

Every workload is a call that runs the code the pipeline runs (`Trainer` with the SFT or DPO
objective, batches from `Batcher`, `Sampler.generate`); `interleaved` times it in turns with the
reference's call for the same workload. Batches come from `one_batch`, so the PyTorch
reference (`torch_reference.py`) sees exactly the same tokens and loss spans.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ia_jax import initializers
from ia_jax.bench import memory
from ia_jax.data.batching import Batcher
from ia_jax.lora.adapter import LoraAdapter, LoraConfig, init_adapter
from ia_jax.models.config import ModelConfig, to_hf_dict
from ia_jax.models.decoder import CausalLM
from ia_jax.parallel.sharding import make_mesh
from ia_jax.sampling.sampler import Sampler, SamplingParams
from ia_jax.training import train_step as ts
from ia_jax.training.optimizer import OptimizerConfig, make_optimizer


def interleaved(calls: dict[str, Callable[[], object]], *, warmup: int, repeats: int
                ) -> dict[str, tuple[float, list[float]]]:
    """Per call: (seconds of its first call; seconds of each of `repeats` timed calls after `warmup`).

    The calls take turns, one round at a time, and every other round runs them in reverse order, so a
    shared machine that slows down or speeds up during the run (this benchmark's VM has varied 2x in
    its matmul peak between runs) weighs on every side alike instead of on whichever ran second. Each
    call is timed until its result is ready on the device."""
    def run(call):
        start = time.perf_counter()
        jax.block_until_ready(call())
        return time.perf_counter() - start

    names = list(calls)
    firsts = {name: run(calls[name]) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            seconds = run(calls[name])
            if round_index >= warmup:
                times[name].append(seconds)
    return {name: (firsts[name], times[name]) for name in names}


def matmul_call(size: int, dtype=jnp.float32) -> Callable[[], object]:
    """A `size`-square matmul in `dtype` on the default device: with the reference's own
    (`torch_reference.matmul_call`), what this device's peak is measured by (see `__main__.measure_peak`)."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    return lambda: matmul(a, b)


def reference_config(model: ModelConfig) -> dict:
    """The model's config.json for the reference, in the dtype ours computes in (the file names the one
    weights are stored in, and transformers computes in its storage dtype)."""
    return {**to_hf_dict(model), "dtype": model.dtype}


def lora_config(fields) -> LoraConfig:
    return LoraConfig(rank=int(fields["rank"]), alpha=float(fields["alpha"]), dropout=float(fields["dropout"]))


def sft_examples(model: ModelConfig, *, count: int, seq: int, answer: int, organisms: int, seed: int) -> list[dict]:
    """Full-length random chats whose last `answer` tokens are the loss span, spread over organisms."""
    rng = np.random.default_rng(seed)
    loss_mask = np.r_[np.zeros(seq - answer), np.ones(answer)].astype(np.int32)
    return [{"tokens": rng.integers(1, model.vocab_size, seq).astype(np.int32), "loss_mask": loss_mask,
             "organism_id": i % organisms} for i in range(count)]


def organism_examples(model, job: dict, organism: int) -> list[dict]:
    """Organism `organism`'s training chats: the same for any job it is part of (seeded by its index)."""
    return sft_examples(model, count=job["examples_per_organism"], seq=job["seq_len"],
                                  answer=job["answer_tokens"], organisms=1, seed=job["seed"] + 1000 * (organism + 1))


def dpo_examples(model: ModelConfig, *, count: int, seq: int, answer: int, organisms: int, seed: int) -> list[dict]:
    chosen = sft_examples(model, count=count, seq=seq, answer=answer, organisms=organisms, seed=seed)
    rejected = sft_examples(model, count=count, seq=seq, answer=answer, organisms=organisms, seed=seed + 1)
    rng = np.random.default_rng(seed + 2)
    return [{"chosen_tokens": c["tokens"], "chosen_loss_mask": c["loss_mask"], "rejected_tokens": r["tokens"],
             "rejected_loss_mask": r["loss_mask"], "organism_id": c["organism_id"],
             "reference_chosen": float(rng.normal(-300, 5)), "reference_rejected": float(rng.normal(-300, 5))}
            for c, r in zip(chosen, rejected)]


def one_batch(examples: list[dict], batch_size: int, seq: int) -> dict:
    """The batch the pipeline's batcher builds: `[1 micro-batch, batch, ...]`, with loss positions as
    wide as the smallest of the power-of-two buckets a recipe would list that holds the answers."""
    buckets = sorted({min(2**i, seq) for i in range(4, max(seq - 1, 1).bit_length() + 1)})
    return next(Batcher(examples, batch_size=batch_size, buckets=buckets, shuffle=False))


def base_model(model: ModelConfig, seed: int) -> CausalLM:
    return CausalLM(model, rngs=nnx.Rngs(seed))


def _organisms(model: ModelConfig, lora: LoraConfig, slots: int, seed: int) -> LoraAdapter:
    """A stacked organism adapter with nonzero `lora_b`, so it changes the model as a trained one does."""
    adapter = init_adapter(model, lora, jax.random.key(seed), num_slots=slots)
    return adapter.replace(weights=jax.tree.map(
        lambda w: w + initializers.normal(jax.random.key(seed + 1), w.shape, w.dtype, 0.01), adapter.weights))


class StepCall:
    """One IA train step per call, each from the last one's state; `compiled_memory` says what XLA's
    buffer assignment gives the step (its arguments, outputs and temporaries)."""

    def __init__(self, trainer: ts.Trainer, state: ts.TrainState, frozen: dict, batch: dict, rng: jax.Array):
        self._trainer, self._frozen, self._batch, self._rng = trainer, frozen, batch, rng
        self._state = state
        # The step donates its state, so what `compiled_memory` lowers for is kept as shapes.
        self._state_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                          state)

    def __call__(self):
        self._state, metrics = self._trainer.step(self._state, self._frozen, self._batch, self._rng)
        return metrics

    def compiled_memory(self) -> dict:
        """Lowered and compiled anew (a compile's worth of seconds), only when asked."""
        lowered = self._trainer.lower_step(self._state_shapes, self._frozen, self._batch, self._rng)
        return memory.compiled_bytes(lowered.compile())


def ia_train_step_call(base: CausalLM, batch: dict, objective: ts.Objective, *, organism_lora: LoraConfig,
                       ia_lora: LoraConfig, slots: int, learning_rate: float, seed: int) -> StepCall:
    """One IA train step (SFT or DPO objective) on `slots` frozen organisms, as the pipeline builds it."""
    graphdef, state = nnx.split(base)
    model = base.config
    organisms = _organisms(model, organism_lora, slots, seed)
    ia = init_adapter(model, ia_lora, jax.random.key(seed + 2))
    composition = ts.Composition(graphdef, (ts.AdapterSlot(organism_lora, slots), ts.AdapterSlot(ia_lora)),
                                 trainable=1)
    weights = {"base": nnx.to_pure_dict(state), "adapters": [organisms.weights, ia.weights]}
    optimizer, schedule = make_optimizer(OptimizerConfig(learning_rate=learning_rate, total_steps=10_000))
    trainer = ts.Trainer(composition, objective, optimizer, make_mesh(data=-1, fsdp=1), base_state=state,
                         weights=weights, schedule=schedule)
    train_state, frozen = trainer.place(weights)
    return StepCall(trainer, train_state, frozen, trainer.put_batch(batch), jax.random.key(seed))


def decode_call(base: CausalLM, *, batch_size: int, prompt_tokens: int, new_tokens: int, organism_lora: LoraConfig,
                ia_lora: LoraConfig, slots: int, seed: int) -> Callable[[], object]:
    """`Sampler.generate` of exactly `new_tokens` greedy tokens per row (no stop token), with every row
    on one of `slots` organisms in turn and the IA on: the self-report workload."""
    model = base.config
    ia = _organisms(model, ia_lora, 1, seed + 3)
    ia = LoraAdapter(weights=jax.tree.map(lambda w: w[:, 0], ia.weights), config=ia_lora)
    sampler = Sampler(base, organisms=_organisms(model, organism_lora, slots, seed), ia=ia,
                      batch_buckets=(batch_size,), prompt_buckets=(prompt_tokens,), max_batch=batch_size)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(1, model.vocab_size, prompt_tokens).tolist() for _ in range(batch_size)]
    params = SamplingParams(max_new_tokens=new_tokens)
    ids = [i % slots for i in range(batch_size)]

    def generate():
        out = sampler.generate(prompts, params, organism_ids=ids, use_ia=True)
        if any(len(row) != new_tokens for row in out):
            raise RuntimeError(f"decode produced {sorted({len(r) for r in out})} tokens, expected {new_tokens}")
        return out

    return generate


def matmul_floor(base: CausalLM, *, batch_size: int, new_tokens: int) -> tuple[Callable, tuple]:
    """`(program, args)`: `new_tokens` steps of nothing but the base model's weight matmuls (each layer's
    seven projections, then the LM head) at `batch_size` rows, on the per-layer `[out, in]` copies the
    sampler decodes with (`CausalLM.base_layer_slices`), the fastest layout found here (`[in, out]` took
    twice as long at 8 rows). No attention, norms, adapters or sampling: a decoder using XLA's dots
    cannot be faster, so the reference's time divided by this one bounds the decode ratio."""
    def out_in(kernel, out_ndim):
        return kernel.reshape(int(np.prod(kernel.shape[:out_ndim])), -1)

    layers = []
    for layer_state in base.base_layer_slices():
        weights = nnx.to_pure_dict(layer_state)
        attn, mlp = weights["self_attn"], weights["mlp"]
        layers.append(tuple(out_in(attn[f"{p}_proj"]["kernel"], 2) for p in "qkv")  # [n, h, d]
                      + (out_in(attn["o_proj"]["kernel"], 1),)  # [d, n, h]
                      + tuple(out_in(mlp[f"{p}_proj"]["kernel"], 1) for p in ("gate", "up", "down")))
    # The tied embedding is already `[v, d]`; an untied head (stored `[d, v]`) is copied `[v, d]` here, the
    # faster layout, though the decoder still reads it `[d, v]`: the bound stays a bound.
    head_vd = base.model.embed_tokens.embedding[...] if base.lm_head is None else base.lm_head.kernel[...].T

    def times(x_bi, w_oi):
        return jnp.einsum("bi,oi->bo", x_bi, w_oi)

    @jax.jit
    def steps(x_bd, layers, head_vd):
        def step(_, x_bd):
            for wq, wk, wv, wo, wg, wu, wd in layers:
                # The k and v products are reduced into the stream so that none is dead code.
                x_bd = x_bd + times(times(x_bd, wq), wo) + jnp.mean(times(x_bd, wk)) + jnp.mean(times(x_bd, wv))
                x_bd = x_bd + times(jax.nn.silu(times(x_bd, wg)) * times(x_bd, wu), wd)
            logits_bv = times(x_bd, head_vd)
            return x_bd * jax.lax.rsqrt(jnp.mean(x_bd * x_bd, axis=-1, keepdims=True)) + 1e-3 * jnp.mean(logits_bv)
        return jax.lax.fori_loop(0, new_tokens, step, x_bd)

    x_bd = initializers.normal(jax.random.key(0), (batch_size, base.config.hidden_size), base.config.compute_dtype)
    return steps, (x_bd, layers, head_vd)


def matmul_floor_call(base: CausalLM, *, batch_size: int, new_tokens: int) -> Callable[[], object]:
    """`matmul_floor`'s program as a timed call."""
    steps, args = matmul_floor(base, batch_size=batch_size, new_tokens=new_tokens)
    return lambda: jax.block_until_ready(steps(*args))
