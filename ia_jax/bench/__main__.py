"""`python -m ia_jax.bench [--config=configs/bench.py] [--out=bench.json]`: how fast our steps and
sampler are on this device, and how that compares with transformers + peft on the same workloads.

Workloads (after compiling and warming up; medians over `repeats`):
- `ia_sft`: one IA SFT train step over frozen stacked organisms; tokens/s and MFU (model FLOPs from
  `flops.py` over this device's peak: the faster of a large matmul in JAX and in torch, timed in this run).
- `dpo`: one IA DPO step (chosen and rejected in one forward, reference scores given).
- `organisms`: K organisms trained in one job versus K single-organism jobs, each job a fresh process
  (`organism_job.py`) timed from start-up to saved adapters.
- `decode`: greedy KV-cached sampling with organism and IA adapters, tokens/s at several batch sizes.
The reference (`torch_reference.py`) runs the same workloads (both sides built in `calls.py`); the
two sides' calls take turns (`workloads.interleaved`), never run alongside each other, so drift in a
shared machine's speed weighs on both alike. Every row also gets the bound this run measured (see
`report.py`): the step's FLOPs at the peak, the base's matmuls alone for decoding, and for memory the
buffers XLA assigns our step; each side's peak memory is measured alone in a fresh process
(`memory.py`) for the workloads `memory` lists.
Prints a table; writes `--out` JSON and a chart of each row against its bound and target beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile

import jax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from ia_jax.bench import calls, machine, memory, report, workloads
from ia_jax.models.config import ModelConfig
from ia_jax.models.hf_checkpoint import save_hf

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "configs", "bench.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Benchmark config (an ml_collections file).")
_OUT = flags.DEFINE_string("out", "bench.json", "Where the results JSON goes (a PNG of every row against its bound goes beside it).")


def _summary(first: float, times: list[float]) -> dict:
    return {"seconds": statistics.median(times), "times": times, "first_call_seconds": first}


def _timed(c, sides: dict[str, calls.Factory]) -> tuple[dict, dict]:
    """(the built calls, `{side: (first, times)}`), the sides timed in turns (see `interleaved`); the
    reference is left out when the config turns it off."""
    built = {name: make() for name, make in sides.items() if c.reference or name != "reference"}
    return built, workloads.interleaved(built, warmup=c.warmup, repeats=c.repeats)


def _process_memory(c, workload: str, entry: dict, batch_size: int | None = None) -> None:
    """Each side's process peak, measured alone in a fresh process, into `entry[side]["memory"]`."""
    if workload not in c.memory:
        return
    for side in ("ours", "reference") if c.reference else ("ours",):
        entry[side].setdefault("memory", {}).update(
            memory.in_fresh_process(c.to_dict(), workload, side, batch_size=batch_size))


def _step_workload(c, model, peak, name: str, sides: dict[str, calls.Factory]) -> dict:
    step_flops = calls.step_flops(c, model, name)
    rows = calls.step_rows(c, name)
    # The bound: the step's model FLOPs at this run's measured peak.
    result = {"tokens": rows * c.seq_len, "model_flops": step_flops, "bound_seconds": step_flops / peak}
    built, timed = _timed(c, sides)
    for side, (first, times) in timed.items():
        seconds = statistics.median(times)
        result[side] = {**_summary(first, times), "tokens_per_second": rows * c.seq_len / seconds,
                        "mfu": step_flops / seconds / peak}
    result["ours"]["memory"] = {"compiled": built["ours"].compiled_memory()}
    if c.reference:
        result["ratio"] = result["reference"]["seconds"] / result["ours"]["seconds"]
        result["ratio_bound"] = result["reference"]["seconds"] / result["bound_seconds"]
    del built
    _process_memory(c, name, result)
    return result


def ia_sft(c, model, base, peak) -> dict:
    return _step_workload(c, model, peak, "ia_sft", calls.sft_sides(c, model, base))


def dpo(c, model, base, peak) -> dict:
    return _step_workload(c, model, peak, "dpo", calls.dpo_sides(c, model, base))


def organisms(c, model, base, peak) -> dict:
    jobs = c.organism_jobs
    count, sequential = jobs.count, min(jobs.sequential_jobs, jobs.count)
    job = calls.organism_job(c)
    with tempfile.TemporaryDirectory() as scratch:
        base_dir = os.path.join(scratch, "base")
        save_hf(base, base_dir)

        def run(name, organisms):
            return calls.run_organism_job(base_dir, os.path.join(scratch, name), {**job, "organisms": organisms})

        # The single jobs run half before and half after the one job, so drift in the machine's speed
        # during the run weighs on both sides.
        before = sequential // 2
        single = [run(f"single_{i}", [i]) for i in range(before)]
        one_job, one_info = run("all", list(range(count)))
        single += [run(f"single_{i}", [i]) for i in range(before, sequential)]
    single_seconds = [seconds for seconds, _ in single]
    sequential_seconds = sum(single_seconds) * count / sequential
    costs = calls.organism_costs(one_job, single_seconds, count, calls.organism_step_flops(c, model) / peak)
    result = {"organisms": count, "examples_per_organism": jobs.examples_per_organism,
              "ours": {"one_job_seconds": one_job, "single_job_seconds": single_seconds,
                       "sequential_seconds": sequential_seconds, "sequential_jobs_timed": sequential,
                       "speedup": sequential_seconds / one_job, **costs,
                       "memory": {"one_job_bytes": one_info["peak_bytes"],
                                  "single_job_bytes": [info["peak_bytes"] for _, info in single]}}}
    if c.reference:
        reference = calls.organisms_reference(c, model, count)()
        result["reference"] = {"sequential_in_one_process_seconds": reference["seconds"],
                               "per_organism": reference["per_organism"], "steps": reference["steps"]}
        result["ratio"] = reference["seconds"] / one_job
        if "fixed_cost_seconds" in costs:
            result["ratio_bound"] = reference["seconds"] / (costs["fixed_cost_seconds"]
                                                            + count * costs["per_organism_bound_seconds"])
        if "organisms" in c.memory:
            result["reference"]["memory"] = memory.in_fresh_process(c.to_dict(), "organisms", "reference")
    return result


def decode(c, model, base, peak) -> dict:
    del peak
    params = sum(x.size for x in jax.tree.leaves(nnx.state(base)))
    result = {}
    for batch_size in c.decode.batch_sizes:
        tokens = batch_size * c.decode.new_tokens
        entry = {"tokens": tokens, "state_bytes": calls.decode_state_bytes(c, model, params, batch_size)}
        built, timed = _timed(c, calls.decode_sides(c, model, base, batch_size))
        del built
        for side, (first, times) in timed.items():
            entry[side] = {**_summary(first, times), "tokens_per_second": tokens / statistics.median(times)}
        # Ours against the base's matmuls alone: what the decoder spends beyond its weights' matmuls.
        entry["floor_multiple"] = entry["ours"]["seconds"] / entry["floor"]["seconds"]
        if c.reference:
            entry["ratio"] = entry["reference"]["seconds"] / entry["ours"]["seconds"]
            # The most any decoder could reach here: the reference against the base's matmuls alone.
            entry["ratio_bound"] = entry["reference"]["seconds"] / entry["floor"]["seconds"]
        _process_memory(c, "decode", entry, batch_size=batch_size)
        result[f"batch_{batch_size}"] = entry
    return result


_RUNNERS = {"ia_sft": ia_sft, "dpo": dpo, "organisms": organisms, "decode": decode}


def main(argv):
    del argv
    c = _CONFIG.value
    for field in ("workloads", "memory"):
        unknown = sorted(set(c[field]) - set(_RUNNERS))
        if unknown:
            raise app.UsageError(f"--config.{field}: unknown {unknown}; choose from {list(_RUNNERS)}")
    model = ModelConfig(**c.model)
    base = workloads.base_model(model, c.seed)
    results = {"config": c.to_dict(), "machine": machine.describe(),
               "params": sum(x.size for x in jax.tree.leaves(nnx.state(base))), "workloads": {}}
    measured = machine.measure_peak(c, model)
    results["peak_flops"], results["peak_flops_by_framework"] = measured["flops"], measured["by_framework"]
    print(f"peak matmul ({c.peak_matmul_size}^3, {model.dtype}): {measured['flops'] / 1e9:.1f} GFLOP/s ("
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in measured["by_framework"].items()) + ")", flush=True)
    for name in c.workloads:
        print(f"running {name} ...", flush=True)
        results["workloads"][name] = _RUNNERS[name](c, model, base, results["peak_flops"])
    out_dir = os.path.dirname(os.path.abspath(_OUT.value))
    os.makedirs(out_dir, exist_ok=True)
    with open(_OUT.value, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=float)
    plot = os.path.splitext(_OUT.value)[0] + ".png"
    report.plot_shares(results, plot)
    print(report.table(results))
    print(f"wrote {_OUT.value} and {plot}")


if __name__ == "__main__":
    app.run(main)
