"""SIGTERM (TPU maintenance, spot reclaim) becomes "save a checkpoint, exit with code 75".

Cloud TPU VMs get SIGTERM some tens of seconds before a maintenance event or a spot reclaim. A
training loop that dies there loses everything since its last periodic checkpoint; one that notices
saves the current step and exits with `PREEMPTED_EXIT_CODE` (75, `EX_TEMPFAIL`: try again), which
`launch/tpu_run.sh` reports as "re-run the same command to resume".

One process: a Python SIGTERM handler sets a flag. Inside a training loop (`deferred()`) the loop
checks the flag after each step, saves and raises `Preempted`; anywhere else the handler raises
`Preempted` at once, since every other stage (teacher answers, self-reports, exports) resumes from
what it has already written.

Several processes (a pod): every host must stop at the *same* point of the program, or the others wait
in a collective forever. JAX's coordination service listens for SIGTERM on every host (it replaces the
default handler, so SIGTERM alone no longer ends the process) and agrees on a sync point: the largest
point id any host has passed, plus one (`multihost_utils.reached_preemption_sync_point`). Point ids
here count every check of the whole job (`requested`), so they only grow, across stages too, and
every host, running the same program, numbers the same check alike; had they been training steps,
which start again at 1 in every stage, a stage too short to reach the agreed step would pass it by.
Besides the training loops' checks after every step, the sampler and the model judge call `check`
before every batch, so a preempted host also stops within one batch outside training.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import jax

PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """SIGTERM arrived; what could be saved is saved. Re-running the same command resumes."""


_state = {"requested": False, "deferring": 0, "installed": False, "sync_points": 0}


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


def requested() -> bool:
    """Whether to stop here (a training loop: save first); on several processes, all of them answer
    alike at the same call."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        _state["sync_points"] += 1
        return multihost_utils.reached_preemption_sync_point(_state["sync_points"])
    return _state["requested"]


def check() -> None:
    """A point where stopping loses nothing that is not redone: raises `Preempted` once SIGTERM arrived
    (on several processes, all at the same call). Inside a training loop only the loop's own check
    after each step counts, so that it saves first."""
    if not _state["deferring"] and requested():
        raise Preempted("SIGTERM received")


def reset() -> None:
    """Forgets an earlier request (tests run several loops in one process)."""
    _state["requested"] = False
