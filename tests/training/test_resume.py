"""A run killed with SIGKILL, or preempted with SIGTERM, and re-run with the same command ends where an
uninterrupted run does."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
STEPS = 14


def _run(workdir, *extra):
    # The runs share jax's compilation cache (a per-session folder, see conftest): compile once, not 3 times.
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.run([sys.executable, WORKER, str(workdir), str(STEPS), *map(str, extra)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    result = _run(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_sigkill_then_resume_matches_uninterrupted(straight_run, tmp_path):
    killed = _run(tmp_path / "resumed", 8)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "resumed" / "final.npz").exists()
    steps_saved = sorted(int(p) for p in os.listdir(tmp_path / "resumed" / "checkpoints") if p.isdigit())
    assert steps_saved and max(steps_saved) <= 8  # it really stopped part-way

    resumed = _run(tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_final(straight_run, tmp_path / "resumed")
    expected = np.load(straight_run / "final.npz")
    assert max(np.abs(expected[k]).max() for k in expected.files if "lora_b" in k) > 1e-3  # it trained


def _assert_same_final(expected_dir, actual_dir):
    expected = np.load(expected_dir / "final.npz")
    actual = np.load(actual_dir / "final.npz")
    assert set(actual.files) == set(expected.files)
    for key in expected.files:
        np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=1e-6)


def test_sigterm_saves_the_current_step_exits_75_and_resumes(straight_run, tmp_path):
    """SIGTERM arrives after step 7; the loop finishes step 8, saves it although 8 is off the
    every-3-steps interval, and exits with the preemption code; nothing after it is lost."""
    from ia_jax.training.preemption import PREEMPTED_EXIT_CODE

    preempted = _run(tmp_path / "resumed", 7, "TERM")
    assert preempted.returncode == PREEMPTED_EXIT_CODE == 75, preempted.stderr[-3000:]
    assert "SIGTERM; saved step 8 of 14" in preempted.stderr
    assert not (tmp_path / "resumed" / "final.npz").exists()
    steps_saved = sorted(int(p) for p in os.listdir(tmp_path / "resumed" / "checkpoints") if p.isdigit())
    assert steps_saved == [6, 8]

    resumed = _run(tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_final(straight_run, tmp_path / "resumed")


def test_checkpoints_keep_the_last_two_and_hold_only_the_trained_adapter(straight_run):
    """No frozen weight (base or organisms) is ever written: only the IA, its Adam moments and the step."""
    import ast
    import json

    step_dirs = [p for p in os.listdir(straight_run / "checkpoints") if p.isdigit()]
    with open(straight_run / "checkpoints" / step_dirs[0] / "state" / "_METADATA") as f:
        paths = [ast.literal_eval(p) for p in json.load(f)["tree_metadata"]]  # keys are tuple reprs
    assert sorted(int(p) for p in step_dirs) == [12, 14]  # every 3 steps and at the end, keeping the last 2
    assert paths and all(p[0] in ("step", "params", "opt_state") for p in paths)
    targets = {p[1] for p in paths if p[0] == "params"}
    assert targets == {"q", "k", "v", "o", "gate", "up", "down"}
    assert not any("model" in p or "embed_tokens" in p for p in paths)


def test_resuming_with_another_config_names_the_difference(straight_run):
    sys.path.insert(0, os.path.dirname(__file__))
    import resume_worker

    from ia_jax.training.checkpoints import CheckpointMismatchError, Checkpointer

    checkpointer = Checkpointer(str(straight_run / "checkpoints"), save_every=3,
                                fingerprint={"model": resume_worker.CONFIG.__dict__, "ia": {"rank": 8},
                                             "optimizer": {}, "batch_size": 4})
    with pytest.raises(CheckpointMismatchError, match=r"checkpoints: step 14 was written by a different config "
                                                      r"\(ia: checkpoint .*'rank': 4.* vs run \{'rank': 8\}"):
        checkpointer.restore(None)


def test_a_relative_checkpoint_directory_saves_and_restores(tmp_path, monkeypatch):
    import jax.numpy as jnp

    from ia_jax.training.checkpoints import Checkpointer

    monkeypatch.chdir(tmp_path)  # orbax refuses relative paths; "./runs/toy" is the main job's default
    checkpointer = Checkpointer("runs/ckpt", fingerprint={"run": 1}, save_every=1)
    assert checkpointer.save(1, {"w": jnp.arange(3.0)}, {"epoch": 0}, force=True)
    checkpointer.wait()
    state, meta = Checkpointer("./runs/ckpt", fingerprint={"run": 1}, save_every=1).restore({"w": jnp.zeros(3)})
    assert meta["step"] == 1 and state["w"].tolist() == [0.0, 1.0, 2.0]
    assert (tmp_path / "runs" / "ckpt" / "1").is_dir()


def test_only_the_interval_and_forced_saves_are_written(tmp_path):
    """Not orbax's default save of a fresh run's first step: a stage whose interval is longer than the
    stage writes its trained state once, at the end."""
    import jax.numpy as jnp

    from ia_jax.training.checkpoints import Checkpointer

    checkpointer = Checkpointer(str(tmp_path / "ckpt"), fingerprint={"run": 1}, save_every=4)
    saved = [checkpointer.save(step, {"w": jnp.full(3, float(step))}, {"epoch": 0}, force=step == 6)
             for step in range(1, 7)]
    checkpointer.wait()
    assert saved == [False, False, False, True, False, True]
    assert checkpointer.manager.all_steps() == [4, 6]
    checkpointer.close()


def test_a_checkpoint_interval_below_one_is_refused_by_name(tmp_path):

    from ia_jax.training.checkpoints import Checkpointer
    from ia_jax.training.recipe import Recipe

    with pytest.raises(ValueError, match=r"ckpt: save_every=0 \(a recipe's checkpoint_every\): need an integer >= 1"):
        Checkpointer(str(tmp_path / "ckpt"), fingerprint={}, save_every=0)
    assert not (tmp_path / "ckpt").exists()  # refused before anything is created
    with pytest.raises(ValueError, match=r"Recipe.checkpoint_every=0: need an integer >= 1"):
        Recipe(checkpoint_every=0)
