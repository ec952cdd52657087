"""The training loop every stage uses: resume, step, log, checkpoint.

Re-running the same command resumes from the latest checkpoint in `checkpointer`'s directory (the
train state and the data position), so an interrupted run, SIGKILL included, ends where an
uninterrupted one would. Metrics are fetched from the device only every `log_every` steps, so the
host never waits on the device inside the loop otherwise.
"""

from __future__ import annotations

from typing import Callable

import jax
from tqdm.auto import tqdm

from ia_jax.data.batching import Batcher
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
    progress = tqdm(total=steps, initial=start, desc=description, disable=steps - start <= 0, leave=False)
    for step in range(start, steps):
        state, metrics = trainer.step(state, frozen, trainer.put_batch(next(batcher)), rng)
        if checkpointer is not None:
            checkpointer.save(step + 1, state, batcher.position, force=step + 1 == steps)
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
