"""One side of one benchmark workload, alone in this process, for its memory (see `memory.py`).

`python -m ia_jax.bench.memory_job --config_json='{...}' --workload=ia_sft --side=reference`
prints one JSON line: bytes resident after the imports (`baseline_bytes`), and the peak above them
during the first call (`first_call_bytes`) and during the calls after it (`steady_bytes`; null where
the OS cannot reset the peak, and for the organisms workload, which is one whole job as ours is); on
a GPU or TPU also the device allocator's peak (`device_peak_bytes`).
"""

from __future__ import annotations

import json

import jax
import ml_collections
from absl import app, flags

from ia_jax.bench import calls, memory, torch_reference, workloads
from ia_jax.models.config import ModelConfig

_CONFIG_JSON = flags.DEFINE_string("config_json", None, "The benchmark config, as JSON.", required=True)
_WORKLOAD = flags.DEFINE_enum("workload", None, ["ia_sft", "dpo", "decode", "organisms"], "Which workload.",
                              required=True)
_SIDE = flags.DEFINE_enum("side", None, ["ours", "reference"], "Which side.", required=True)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "decode: the batch size.")
_CALLS_AFTER_FIRST = 2
_REFERENCE_ORGANISMS = 4


def _factory(c, model, side: str):
    workload = _WORKLOAD.value
    if workload == "organisms":
        if side != "reference":
            raise app.UsageError("--workload=organisms: ours is measured by its own job process (organism_job)")
        # peft deletes each organism's adapter after its job, so a few organisms show its peak.
        return lambda: calls.organisms_reference(c, model, min(c.organism_jobs.count, _REFERENCE_ORGANISMS))
    base = workloads.base_model(model, c.seed) if side == "ours" else None
    if workload == "decode":
        if _BATCH_SIZE.value is None:
            raise app.UsageError("--workload=decode needs --batch_size")
        return calls.decode_sides(c, model, base, _BATCH_SIZE.value)[side]
    return (calls.sft_sides if workload == "ia_sft" else calls.dpo_sides)(c, model, base)[side]


def main(argv):
    del argv
    c = ml_collections.ConfigDict(json.loads(_CONFIG_JSON.value))
    model = ModelConfig(**c.model)
    side = _SIDE.value
    if side == "reference":
        torch_reference.device_name()  # imports torch, transformers and peft before the baseline
    jax.devices()  # the backend's client is made here, not inside the first call
    baseline = memory.resident_bytes() or memory.resident_peak_bytes()
    call = _factory(c, model, side)()
    jax.block_until_ready(call())
    first = memory.resident_peak_bytes()
    # The organisms workload is one whole job, as ours is (its own process, start to end).
    reset = _WORKLOAD.value != "organisms" and memory.reset_resident_peak()
    for _ in range(_CALLS_AFTER_FIRST if reset else 0):
        jax.block_until_ready(call())
    steady = memory.resident_peak_bytes() if reset else None
    out = {"baseline_bytes": baseline, "first_call_bytes": first - baseline,
           "steady_bytes": None if steady is None else steady - baseline}
    device = _device_peak_bytes(side)
    if device is not None:
        out["device_peak_bytes"] = device
    print(json.dumps(out))


def _device_peak_bytes(side: str) -> int | None:
    """On an accelerator, the side's own allocator's peak (what its memory is planned by there)."""
    if side == "reference":
        import torch  # the reference side has imported it already

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


if __name__ == "__main__":
    app.run(main)
