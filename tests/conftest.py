"""Shared test setup: 8 virtual CPU devices for sharding tests, tiny transformers reference models, a GCS emulator."""

import os

# Must happen before jax initialises its backends; tests that need a mesh use these 8 devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import shutil  # noqa: E402
import tempfile  # noqa: E402

# Identical programs compiled by different tests (and by the subprocesses tests start, which inherit
# the variable) are compiled once per session. A fresh folder per session: no state across runs.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="ia_jax_test_jit_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import uuid  # noqa: E402

import gcs_emulator  # noqa: E402
import pytest  # noqa: E402
from hf_reference import build_reference  # noqa: E402
from tiny_world import build_world  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory):
    """`reference_checkpoint(name)` -> (directory, torch model), built once per session."""
    cache = {}

    def get(name):
        if name not in cache:
            path = str(tmp_path_factory.mktemp(name))
            cache[name] = (path, build_reference(name, path))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def gcs_emulator_host():
    """One emulator process per session, started only if a test asks for gs:// storage."""
    with gcs_emulator.running_emulator() as host:
        yield host


@pytest.fixture
def gcs_root(gcs_emulator_host, monkeypatch, tmp_path):
    """A fresh `gs://` folder in the emulator's bucket for one test, with a private local download cache."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator_host)
    monkeypatch.setenv("IA_JAX_CACHE_DIR", str(tmp_path / "ia_jax_cache"))
    return f"gs://{gcs_emulator.BUCKET}/{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def phase1_world(tmp_path_factory):
    """16 trained organisms of a tiny model (see tests/tiny_world.py), built once per session."""
    return build_world(tmp_path_factory.mktemp("phase1"))
