"""Orbax checkpoints of what is trained, and only that: params, optimizer state, step, data position.

The frozen base (up to 140 GB for Llama 3.3 70B) is never written; it is reloaded from its Hugging
Face checkpoint. Each checkpoint carries a fingerprint of the run's config, so resuming with a
different model, adapter or batch layout fails with the differing fields named instead of silently
restoring mismatched weights. Orbax writes into a temporary directory and renames it when complete,
so a process killed mid-save leaves the previous checkpoint as the latest.

The directory may be `gs://`: orbax writes there itself (see `ia_jax.storage.native_gcs`), every process
of a pod its own shards into the one step directory, and a step counts once its `commit_success.txt`
exists (GCS has no atomic rename), which the primary process writes after all processes finished.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from ia_jax.storage import native_gcs, workdir


class CheckpointMismatchError(ValueError):
    """The checkpoint directory holds a run with another config; the message names the fields."""


def _normalise(fingerprint: dict) -> dict:
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


class Checkpointer:
    def __init__(self, directory: str, *, fingerprint: dict, save_every: int, keep: int = 3):
        # A workdir mirrored from gs:// keeps its checkpoints on gs:// (every host of a pod writes there).
        if not isinstance(save_every, int) or save_every < 1:
            raise ValueError(f"{directory}: save_every={save_every!r} (a recipe's checkpoint_every): need an "
                             "integer >= 1 (a number of steps; larger than the stage saves only its last step)")
        directory = workdir.remote_path(directory)
        # orbax refuses relative paths; a local workdir given as "./runs/toy" must still work.
        self.directory = str(directory) if "://" in str(directory) else os.path.abspath(directory)
        native_gcs.prepare(self.directory)
        self.fingerprint = _normalise(fingerprint)
        # Not orbax's default policy, which also saves the first step of a fresh run: a crash would lose
        # little of it, and the save (the whole trained state: 0.55 GB for 32 organism slots with their
        # Adam moments) stalls the host until the step is done, then writes beside the steps after it.
        # Only the interval, preemption (orbax's own signal on pods) and the caller's `force` save.
        policy = checkpoint_managers.AnySavePolicy([checkpoint_managers.FixedIntervalPolicy(save_every),
                                                    checkpoint_managers.PreemptionCheckpointingPolicy()])
        self.manager = ocp.CheckpointManager(
            epath.Path(self.directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_decision_policy=policy, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, abstract_state) -> tuple[Any, dict] | None:
        """(state, meta) of the latest checkpoint, placed as `abstract_state`'s shardings say; None if none."""
        step = self.latest_step()
        if step is None:
            return None
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        saved = meta.get("fingerprint", {})
        if saved != self.fingerprint:
            keys = sorted(set(saved) | set(self.fingerprint))
            diffs = [f"{k}: checkpoint {saved.get(k)!r} vs run {self.fingerprint.get(k)!r}"
                     for k in keys if saved.get(k) != self.fingerprint.get(k)]
            raise CheckpointMismatchError(
                f"{self.directory}: step {step} was written by a different config ({'; '.join(diffs)}); "
                "use a fresh directory or the original config")
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        return restored["state"], meta

    def save(self, step: int, state, data_position: dict, *, force: bool = False) -> bool:
        """Saves when `step` is on the interval (or `force`); returns whether it did."""
        meta = {"fingerprint": self.fingerprint, "data_position": data_position, "step": step}
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

