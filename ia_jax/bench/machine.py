"""What the benchmark ran on: the machine, and its peak FLOP/s as this run measures it."""

from __future__ import annotations

import os
import platform

import jax

from ia_jax.bench import torch_reference, workloads
from ia_jax.models.config import ModelConfig


def measure_peak(c, model: ModelConfig) -> dict:
    """This device's peak FLOP/s in the model's compute dtype, which MFU (both sides') is measured against:
    the faster of a large matmul in JAX and, with the reference on, in torch, timed in turns.

    One framework's matmul alone can understate the device: on the Intel Xeon VM, XLA:CPU multiplies
    bfloat16 at about 230 GFLOP/s and torch (oneDNN on the AMX units) at 1870-2010, so against XLA's
    peak the reference's bfloat16 step read an MFU of 151%; in float32 the two were 280 and 330."""
    size = c.peak_matmul_size
    calls = {"jax": workloads.matmul_call(size, model.compute_dtype)}
    if c.reference:
        calls["torch"] = torch_reference.matmul_call(size, model.dtype)
    timed = workloads.interleaved(calls, warmup=2, repeats=10)
    by_framework = {name: 2.0 * size**3 / min(times) for name, (_, times) in timed.items()}
    return {"flops": max(by_framework.values()), "by_framework": by_framework}


def describe() -> dict:
    device = jax.devices()[0]
    out = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "backend": jax.default_backend(), "device": device.device_kind,
           "device_count": jax.device_count(), "jax": jax.__version__, "python": platform.python_version()}
    try:
        out["reference_device"] = torch_reference.device_name()
    except ImportError as error:
        out["reference_device"] = f"unavailable: {error}"
    return out
