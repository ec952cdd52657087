"""SIGTERM (TPU maintenance, spot reclaim) becomes "save a checkpoint, exit with code 75".

Cloud TPU VMs get SIGTERM some tens of seconds before a maintenance event or a spot reclaim. A
training loop that dies there loses everything since its last periodic checkpoint; one that notices
saves the current step and exits with `PREEMPTED_EXIT_CODE` (75, `EX_TEMPFAIL`: try again), which
`launch/tpu_run.sh` reports as "re-run the same command to resume".

One process: a Python SIGTERM handler sets a flag. Inside a training loop (`deferred()`) the loop
checks the flag after each step, saves and raises `Preempted`; anywhere else the handler raises
`Preempted` at once, since every other stage (teacher answers, self-reports, exports) resumes from
what it has already written. Several processes (a pod): every host must save the *same* step, so the
loop asks JAX's coordination service (`multihost_utils.reached_preemption_sync_point`), which listens
for SIGTERM on every host and agrees on one step; outside the loop the default handler ends the process.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import jax

PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """SIGTERM arrived; what could be saved is saved. Re-running the same command resumes."""


_state = {"requested": False, "deferring": 0, "installed": False}


def _handler(signum, frame):
    _state["requested"] = True
    if not _state["deferring"]:
        raise Preempted("SIGTERM received")


def install() -> None:
    """Installs the SIGTERM handler (single-process runs, main thread only; idempotent)."""
    if _state["installed"] or jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _handler)
    _state["installed"] = True


@contextlib.contextmanager
def deferred():
    """Within this block SIGTERM only sets the flag; the caller polls `requested(step)` at a safe point."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1


def requested(step: int) -> bool:
    """Whether to save and stop after `step`; on several processes, all of them answer alike."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.reached_preemption_sync_point(step)
    return _state["requested"]


def reset() -> None:
    """Forgets an earlier request (tests run several loops in one process)."""
    _state["requested"] = False
