"""Peak memory of a benchmark workload: what XLA assigns our step, and what each side's process holds.

XLA's compiled memory analysis says exactly what one of our programs needs (its arguments, outputs
and temporaries; on a TPU, the device memory to plan a pod by), but it has no counterpart on the
torch side, whose CPU allocator reports nothing. The process's resident-set peak exists on both, so
each side of a workload runs alone in a fresh process (`memory_job.py`), where that peak, less what
the process held after its imports, is the side's. The first call (ours compiles in it) is reported
apart from the calls after it, whose peak is the workload's steady state.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

_STATUS = "/proc/self/status"


def compiled_bytes(compiled) -> dict:
    """`{argument, output, alias, temp, peak}` bytes of a compiled program; `peak` is what its buffers
    occupy at once (donated arguments alias their outputs, so they count once)."""
    analysis = compiled.memory_analysis()
    out = {k: int(getattr(analysis, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _status_bytes(field: str) -> int | None:
    try:
        with open(_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        return None
    return None


def resident_bytes() -> int | None:
    """The process's resident set now (Linux; None elsewhere)."""
    return _status_bytes("VmRSS")


def resident_peak_bytes() -> int:
    """The process's resident-set peak since it started or since `reset_resident_peak`."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def reset_resident_peak() -> bool:
    """Starts the peak over from the resident set now (Linux's clear_refs); False where the OS cannot."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def in_fresh_process(config: dict, workload: str, side: str, batch_size: int | None = None) -> dict:
    """`memory_job`'s measurement of one side of one workload, in a process of its own."""
    command = [sys.executable, "-m", "ia_jax.bench.memory_job", f"--config_json={json.dumps(config)}",
               f"--workload={workload}", f"--side={side}"]
    if batch_size is not None:
        command.append(f"--batch_size={batch_size}")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"memory job {workload}/{side} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
