"""The training loop every stage uses: resume, step, log, checkpoint.

Re-running the same command resumes from the latest checkpoint in `checkpointer`'s directory (the
train state and the data position), so an interrupted run, SIGKILL included, ends where an
uninterrupted one would. SIGTERM (a TPU maintenance event or spot reclaim) saves the step just
finished and raises `preemption.Preempted`, so the re-run loses nothing. Metrics are fetched from
the device only every `log_every` steps, so the host never waits on the device inside the loop
otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from ia_jax.data.batching import Batcher
from ia_jax.training import preemption
from ia_jax.training.checkpoints import Checkpointer
from ia_jax.training.train_step import Trainer, TrainState


def run_training(trainer: Trainer, weights: dict, batcher: Batcher, *, steps: int, rng: jax.Array,
                 checkpointer: Checkpointer | None = None, log_every: int = 10, description: str = "train",
                 on_metrics: Callable[[int, dict], None] | None = None,
                 on_state: Callable[[int, TrainState, dict], None] | None = None) -> tuple[TrainState, list[dict]]:
    """Trains to `steps` total steps; returns the final state and the logged metrics.

    At each logged step `on_metrics(step, metrics)` and then `on_state(step, state, metrics)` run; the
    latter may add entries to `metrics` (periodic evaluation of the current weights).
    """
    if (batcher.process_index, batcher.process_count) != (jax.process_index(), jax.process_count()):
        raise ValueError(f"batcher is set up as process {batcher.process_index} of {batcher.process_count}, but "
                         f"this is process {jax.process_index()} of {jax.process_count()}: each process must "
                         "feed its own rows of the global batch")
    frozen = trainer.place_frozen(weights)
    restored = None if checkpointer is None else checkpointer.restore(trainer.abstract_state(weights))
    if restored is None:
        state = trainer.init_state(weights)
    else:
        state, meta = restored
        batcher.restore(meta["data_position"])
    start = int(jax.device_get(state.step))
    history = []
    # Deferred before the bar is drawn: a SIGTERM that lands once the stage shows as started is saved
    # at the end of a step, never lost between the bar and the loop.
    with preemption.deferred():
        progress = tqdm(total=steps, initial=start, desc=description, disable=steps - start <= 0, leave=False)
        for step in range(start, steps):
            state, metrics = trainer.step(state, frozen, trainer.put_batch(next(batcher)), rng)
            stop = preemption.requested()
            if checkpointer is not None:
                checkpointer.save(step + 1, state, batcher.position, force=stop or step + 1 == steps)
            if stop:
                progress.close()
                if checkpointer is not None:
                    checkpointer.wait()
                raise preemption.Preempted(f"{description}: SIGTERM; saved step {step + 1} of {steps}"
                                           + ("" if checkpointer else " (no checkpointer: nothing saved)"))
            if (step + 1) % log_every == 0 or step + 1 == steps:
                logged = {"step": step + 1, **{k: v.tolist() for k, v in jax.device_get(metrics).items()}}
                history.append(logged)
                progress.set_postfix(loss=f"{logged['loss']:.4f}")
                if on_metrics is not None:
                    on_metrics(step + 1, logged)
                if on_state is not None:
                    on_state(step + 1, state, logged)
            progress.update(1)
    progress.close()
    if checkpointer is not None:
        checkpointer.wait()
    return state, history


def examples_digest(examples: Sequence[Mapping]) -> str:
    """Content hash of training examples: a resumed run must refuse other data of the same count."""
    digest = hashlib.sha256()
    for example in examples:
        for key in sorted(example):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(example[key]).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def run_stage(trainer: Trainer, weights: dict, batcher: Batcher, *, steps: int, recipe, workdir: str,
              fingerprint: Mapping, description: str, log_every: int = 10,
              evaluate: Callable[[int, TrainState], dict] | None = None,
              on_metrics: Callable[[int, dict], None] | None = None) -> tuple[TrainState, list[dict]]:
    """`run_training` under the conventions every stage shares.

    Checkpoints go to `workdir/checkpoints`, fingerprinted by the recipe and `fingerprint` (so a re-run
    resumes, and a different run is refused); every logged step is appended to `workdir/metrics.jsonl`;
    `evaluate(step, state)` runs at logged steps that are multiples of `recipe.eval_every` (if the
    recipe has one) and at the last step, its entries merged into that step's metrics. The checkpoint
    being written is finished even when a step or an evaluation raises.
    """
    eval_every = getattr(recipe, "eval_every", 0)
    if eval_every % log_every:
        raise ValueError(f"eval_every={eval_every} must be a multiple of log_every={log_every}: "
                         "evaluations run at logged steps")
    os.makedirs(workdir, exist_ok=True)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                fingerprint={"recipe": dataclasses.asdict(recipe), **fingerprint},
                                save_every=recipe.checkpoint_every)
    log_path = os.path.join(workdir, "metrics.jsonl")

    def on_state(step, state, logged):
        if evaluate is not None and (step == steps or (eval_every and step % eval_every == 0)):
            logged.update(evaluate(step, state))
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(logged) + "\n")

    try:
        return run_training(trainer, weights, batcher, steps=steps, rng=jax.random.key(recipe.seed),
                            checkpointer=checkpointer, log_every=log_every, description=description,
                            on_metrics=on_metrics, on_state=on_state)
    finally:
        checkpointer.close()
