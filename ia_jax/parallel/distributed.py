"""Multi-host start-up: one call before any other JAX work.

On Cloud TPU pods `jax.distributed.initialize()` finds the coordinator and every worker by itself.
Elsewhere (GPU clusters, several CPU processes in tests) the coordinator address, process count and
this process's id must be given (CPU processes talk through jax's default gloo collectives).
"""

from __future__ import annotations

import os

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins the job. Without arguments: on a TPU VM, auto-detects; elsewhere stays single-process."""
    explicit = coordinator_address is not None
    if explicit and (num_processes is None or process_id is None):
        raise ValueError("coordinator_address needs num_processes and process_id as well")
    if not explicit and not _on_tpu_vm():
        return
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()


def _on_tpu_vm() -> bool:
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_ACCELERATOR_TYPE")
                or os.environ.get("CLOUD_TPU_TASK_ID"))
