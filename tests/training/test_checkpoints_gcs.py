"""Orbax checkpoints written straight to `gs://` (a real GCS emulator on loopback, see tests/gcs_emulator.py)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ia_jax import lora, models
from ia_jax.data.batching import Batcher
from ia_jax.parallel.sharding import make_mesh
from ia_jax.storage import gcs, native_gcs
from ia_jax.training import train_step as ts
from ia_jax.training.checkpoints import Checkpointer, CheckpointMismatchError
from ia_jax.training.loop import run_training
from ia_jax.training.optimizer import OptimizerConfig, make_optimizer

sys.path.insert(0, os.path.dirname(__file__))
import resume_worker  # its tiny model, adapters and examples

FINGERPRINT = {"model": "tiny", "ia": {"rank": 4}}


@pytest.fixture(autouse=True)
def _restore_tensorstore_variables(monkeypatch):
    """`native_gcs.prepare` sets these for the emulator; put them back afterwards like STORAGE_EMULATOR_HOST."""
    for name in ("TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING"):
        monkeypatch.setenv(name, "")  # records the value to restore (even "unset") ...
        monkeypatch.delenv(name)  # ... and leaves it unset for the test


def _state(mesh, scale=1.0):
    """A small pytree sharded every way the trained state is: over fsdp x tensor, one axis, replicated."""
    return {"params": {"a": jax.device_put(scale * jnp.arange(64.0).reshape(8, 8),
                                           NamedSharding(mesh, P(("data", "fsdp"), "tensor"))),
                       "b": jax.device_put(scale * jnp.arange(16.0), NamedSharding(mesh, P("tensor")))},
            "step": jax.device_put(jnp.int32(scale), NamedSharding(mesh, P()))}


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _steps_on_gcs(directory):
    """Step folders in `directory` and whether each has orbax's commit marker."""
    prefix = directory.rstrip("/") + "/"
    steps = {}
    for uri in gcs.list_blobs(prefix):
        first, _, rest = uri[len(prefix):].partition("/")
        if first.isdigit():
            steps[int(first)] = steps.get(int(first), False) or rest == "commit_success.txt"
    return steps


def test_sharded_state_round_trips_through_gcs_after_a_restart(gcs_root):
    mesh = make_mesh(2, 2, 2)
    directory = f"{gcs_root}/checkpoints"
    checkpointer = Checkpointer(directory, fingerprint=FINGERPRINT, save_every=2)
    assert checkpointer.save(2, _state(mesh, 2.0), {"epoch": 0, "offset": 8})
    assert not checkpointer.save(3, _state(mesh, 3.0), {"epoch": 1, "offset": 0})  # off the interval
    assert checkpointer.save(3, _state(mesh, 3.0), {"epoch": 1, "offset": 0}, force=True)
    checkpointer.close()
    assert _steps_on_gcs(directory) == {2: True, 3: True}
    assert any("/3/state/ocdbt.process_0/" in uri for uri in gcs.list_blobs(f"{directory}/3/"))  # tensorstore's shards

    restarted = Checkpointer(directory, fingerprint=FINGERPRINT, save_every=2)
    assert restarted.latest_step() == 3
    expected = _state(mesh, 3.0)
    state, meta = restarted.restore(_abstract(expected))
    assert meta["data_position"] == {"epoch": 1, "offset": 0} and meta["step"] == 3
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
        assert got.sharding == want.sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    restarted.close()


def test_old_steps_are_deleted_on_gcs(gcs_root):
    mesh = make_mesh(2, 2, 2)
    directory = f"{gcs_root}/checkpoints"
    checkpointer = Checkpointer(directory, fingerprint=FINGERPRINT, save_every=1, keep=2)
    for step in range(1, 5):
        checkpointer.save(step, _state(mesh, step), {"offset": step})
    checkpointer.close()
    assert _steps_on_gcs(directory) == {3: True, 4: True}


def test_a_step_without_its_commit_marker_is_not_resumed_from_and_is_rewritten(gcs_root):
    """GCS has no atomic rename: a step counts once `commit_success.txt` exists, as after a kill mid-save."""
    mesh = make_mesh(2, 2, 2)
    directory = f"{gcs_root}/checkpoints"
    checkpointer = Checkpointer(directory, fingerprint=FINGERPRINT, save_every=1)
    checkpointer.save(1, _state(mesh, 1.0), {"offset": 1})
    checkpointer.save(2, _state(mesh, 2.0), {"offset": 2})
    checkpointer.close()
    bucket, marker = gcs.parse(f"{directory}/2/commit_success.txt")
    gcs.client().bucket(bucket).blob(marker).delete()

    resumed = Checkpointer(directory, fingerprint=FINGERPRINT, save_every=1)
    assert resumed.latest_step() == 1
    state, meta = resumed.restore(_abstract(_state(mesh)))
    assert meta["data_position"] == {"offset": 1} and float(state["step"]) == 1
    assert resumed.save(2, _state(mesh, 5.0), {"offset": 5})  # over the unfinished folder
    resumed.close()
    state, meta = Checkpointer(directory, fingerprint=FINGERPRINT, save_every=1).restore(_abstract(_state(mesh)))
    assert meta["data_position"] == {"offset": 5} and np.asarray(state["params"]["b"])[1] == 5.0


def test_a_checkpoint_of_another_config_is_refused_naming_the_field(gcs_root):
    mesh = make_mesh(2, 2, 2)
    directory = f"{gcs_root}/checkpoints"
    checkpointer = Checkpointer(directory, fingerprint=FINGERPRINT, save_every=1)
    checkpointer.save(1, _state(mesh), {"offset": 0})
    checkpointer.close()
    other = Checkpointer(directory, fingerprint={**FINGERPRINT, "ia": {"rank": 8}}, save_every=1)
    with pytest.raises(CheckpointMismatchError,
                       match=r"gs://.*/checkpoints: step 1 was written by a different config "
                             r"\(ia: checkpoint \{'rank': 4\} vs run \{'rank': 8\}\)"):
        other.restore(_abstract(_state(mesh)))


def test_without_an_emulator_the_clients_are_left_to_their_own_credentials(monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    native_gcs.prepare("gs://some-bucket/run/checkpoints")
    assert "TENSORSTORE_GCS_HTTP_URL" not in os.environ and "GOOGLE_AUTH_TOKEN_FOR_TESTING" not in os.environ


def test_a_gcs_directory_without_gcsfs_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # what `import gcsfs` sees when it is not installed
    with pytest.raises(ImportError, match=r"gs://some-bucket/ckpt: orbax reaches gs:// through gcsfs.*pip install gcsfs"):
        Checkpointer("gs://some-bucket/ckpt", fingerprint=FINGERPRINT, save_every=1)


STEPS = 8


@pytest.fixture(scope="module")
def tiny_training():
    """resume_worker's setup: a shared adapter with dropout over frozen organisms (one device: compiles fast).

    One trainer serves every run below, so its step compiles once; each run starts from fresh weights,
    batcher and checkpointer, as a restarted process would.
    """
    config = resume_worker.CONFIG
    # Weights drawn in numpy from the abstract shapes: initialising through jax would compile a kernel per shape.
    rng = np.random.default_rng(1)

    def draw(path, x, scale):
        if "norm" in jax.tree_util.keystr(path):
            return np.ones(x.shape, x.dtype)
        return (scale * rng.standard_normal(x.shape)).astype(x.dtype)

    graphdef, state = nnx.split(nnx.eval_shape(lambda: models.CausalLM(config, rngs=nnx.Rngs(0))))
    state = jax.tree_util.tree_map_with_path(lambda p, x: draw(p, x, 0.2), state)
    organisms = jax.eval_shape(lambda: lora.init_adapter(config, resume_worker.ORGANISMS, jax.random.key(0),
                                                         num_slots=3).weights)
    organisms = jax.tree_util.tree_map_with_path(lambda p, x: draw(p, x, 0.1), organisms)
    ia = jax.eval_shape(lambda: lora.init_adapter(config, resume_worker.IA, jax.random.key(1)).weights)
    ia = jax.tree_util.tree_map_with_path(  # LoRA's own init: B starts at zero
        lambda p, x: np.zeros(x.shape, x.dtype) if "lora_b" in jax.tree_util.keystr(p) else draw(p, x, 0.1), ia)
    weights = {"base": nnx.to_pure_dict(state), "adapters": [organisms, ia]}
    composition = ts.Composition(graphdef, (ts.AdapterSlot(resume_worker.ORGANISMS, 3),
                                            ts.AdapterSlot(resume_worker.IA)), trainable=1)
    optimizer, schedule = make_optimizer(OptimizerConfig(learning_rate=3e-3, warmup_steps=2, total_steps=STEPS))
    trainer = ts.Trainer(composition, ts.sft_objective, optimizer, make_mesh(1, 1, 1, jax.devices()[:1]),
                         base_state=state, weights=weights, schedule=schedule)
    return trainer, weights


def _train(tiny_training, checkpointer, crash_after=None):
    trainer, weights = tiny_training
    batcher = Batcher(resume_worker.examples(), batch_size=4, buckets=(24,), seed=0)

    def crash(step, _):
        if step == crash_after:
            raise KeyboardInterrupt(f"crash after step {step}")

    final, _ = run_training(trainer, weights, batcher, steps=STEPS, rng=jax.random.key(42),
                            checkpointer=checkpointer, log_every=1, on_metrics=crash)
    return jax.device_get(final.params)


def test_training_resumed_from_gcs_matches_an_uninterrupted_run(gcs_root, tiny_training):
    straight = _train(tiny_training, None)
    directory = f"{gcs_root}/run/checkpoints"
    interrupted = Checkpointer(directory, fingerprint=FINGERPRINT, save_every=3)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_training, interrupted, crash_after=5)
    interrupted.close()
    assert _steps_on_gcs(directory) == {3: True}  # the interval only: not orbax's default first step

    resumed = Checkpointer(directory, fingerprint=FINGERPRINT, save_every=3)
    assert resumed.latest_step() == 3
    final = _train(tiny_training, resumed)
    resumed.close()
    assert _steps_on_gcs(directory) == {3: True, 6: True, 8: True}
    for got, want in zip(jax.tree.leaves(final), jax.tree.leaves(straight), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    trained = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(final)[0]
               if "lora_b" in jax.tree_util.keystr(path)]
    assert trained and max(np.abs(leaf).max() for leaf in trained) > 1e-3  # B started at zero: it trained


def test_a_sigterm_as_the_progress_bar_appears_is_saved_after_a_step(tiny_training, tmp_path, monkeypatch):
    """Callers (and the preemption test of `hf_run`) take the bar as "training started": a SIGTERM then
    must stop after a saved step, not before any step with nothing saved."""
    import signal

    from ia_jax.training import loop, preemption

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setitem(preemption._state, "installed", False)
    preemption.reset()
    preemption.install()
    real_tqdm = loop.tqdm

    def tqdm_then_sigterm(*args, **kwargs):
        bar = real_tqdm(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before this returns
        return bar

    monkeypatch.setattr(loop, "tqdm", tqdm_then_sigterm)
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"), fingerprint=FINGERPRINT, save_every=100)
    try:
        with pytest.raises(preemption.Preempted, match=f"saved step 1 of {STEPS}"):
            _train(tiny_training, checkpointer)
    finally:
        signal.signal(signal.SIGTERM, previous)
        preemption.reset()
        checkpointer.close()
    assert Checkpointer(str(tmp_path / "checkpoints"), fingerprint=FINGERPRINT, save_every=100).latest_step() == 1

