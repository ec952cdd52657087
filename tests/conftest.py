"""Shared test setup: 8 virtual CPU devices for sharding tests, and tiny transformers reference models."""

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

import pytest  # noqa: E402
from hf_reference import build_reference  # noqa: E402


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
