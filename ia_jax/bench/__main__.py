"""`python -m ia_jax.bench [--config=configs/bench.py] [--out=bench.json]`: how fast our steps and
sampler are on this device, and how that compares with transformers + peft on the same workloads.

Workloads (after compiling and warming up; medians over `repeats`):
- `ia_sft`: one IA SFT train step over frozen stacked organisms; tokens/s and MFU (model FLOPs from
  `flops.py` over this device's peak: the faster of a large matmul in JAX and in torch, timed in this run).
- `dpo`: one IA DPO step (chosen and rejected in one forward, reference scores given).
- `organisms`: K organisms trained in one job versus K single-organism jobs, each job a fresh process
  (`organism_job.py`) timed from start-up to saved adapters.
- `decode`: greedy KV-cached sampling with organism and IA adapters, tokens/s at several batch sizes.
The reference (`torch_reference.py`) runs the same workloads; the two sides' calls take turns
(`workloads.interleaved`), never run alongside each other, so drift in a shared machine's speed
weighs on both alike.
Prints a table; writes `--out` JSON and a bar chart of the ratios beside it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import jax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from ia_jax.bench import flops, report, torch_reference, workloads
from ia_jax.models.config import ModelConfig
from ia_jax.models.hf_checkpoint import save_hf
from ia_jax.training import train_step as ts

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "configs", "bench.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Benchmark config (an ml_collections file).")
_OUT = flags.DEFINE_string("out", "bench.json", "Where the results JSON goes (a PNG of the ratios goes beside it).")


def _torch_lora(fields, dropout=None) -> dict:
    return {"rank": int(fields["rank"]), "alpha": float(fields["alpha"]),
            "dropout": float(fields["dropout"] if dropout is None else dropout),
            "targets": ["q", "k", "v", "o", "gate", "up", "down"]}


def _summary(first: float, times: list[float]) -> dict:
    return {"seconds": statistics.median(times), "times": times, "first_call_seconds": first}


def _timed_sides(c, ours, reference_call, **more) -> dict:
    """`{"ours": (first, times)[, "reference": ...]}`, the two sides (and any `more` calls of ours) timed
    in turns (see `interleaved`)."""
    calls = {"ours": ours, **more}
    if c.reference:
        calls["reference"] = reference_call()
    return workloads.interleaved(calls, warmup=c.warmup, repeats=c.repeats)


def _step_workload(c, model, base, peak, objective, batch, rows: int, reference_call) -> dict:
    organism_lora, ia_lora = workloads.lora_config(c.organism_lora), workloads.lora_config(c.ia_lora)
    ours = workloads.ia_train_step_call(
        base, batch, objective, organism_lora=organism_lora, ia_lora=ia_lora, slots=c.organisms_in_batch,
        learning_rate=c.learning_rate, seed=c.seed)
    step_flops = flops.lora_train_step_flops(model, rows=rows, seq=c.seq_len, scored=c.answer_tokens,
                                             frozen=(organism_lora,), trained=ia_lora)
    result = {"tokens": rows * c.seq_len, "model_flops": step_flops}
    for side, (first, times) in _timed_sides(c, ours, reference_call).items():
        seconds = statistics.median(times)
        result[side] = {**_summary(first, times), "tokens_per_second": rows * c.seq_len / seconds,
                        "mfu": step_flops / seconds / peak}
    if c.reference:
        result["ratio"] = result["reference"]["seconds"] / result["ours"]["seconds"]
    return result


def ia_sft(c, model, base, peak) -> dict:
    examples = workloads.sft_examples(model, count=c.batch_size, seq=c.seq_len, answer=c.answer_tokens,
                                      organisms=c.organisms_in_batch, seed=c.seed)
    batch = workloads.one_batch(examples, c.batch_size, c.seq_len)
    plain = {k: batch[k][0] for k in ("tokens", "attention_mask", "loss_mask")}
    return _step_workload(c, model, base, peak, ts.sft_objective, batch, c.batch_size, lambda: (
        torch_reference.ia_sft_step_call(
            workloads.reference_config(model), plain, organism_lora=_torch_lora(c.organism_lora, dropout=0.0),
            ia_lora=_torch_lora(c.ia_lora), learning_rate=c.learning_rate, seed=c.seed)))


def dpo(c, model, base, peak) -> dict:
    pairs = workloads.dpo_examples(model, count=c.batch_size, seq=c.seq_len, answer=c.answer_tokens,
                                   organisms=c.organisms_in_batch, seed=c.seed)
    batch = workloads.one_batch(pairs, c.batch_size, c.seq_len)
    plain = {k: batch[k][0] for k in batch if not k.endswith("positions") and k != "organism_ids"}
    return _step_workload(c, model, base, peak, ts.dpo_objective(c.dpo_beta), batch, 2 * c.batch_size, lambda: (
        torch_reference.dpo_step_call(
            workloads.reference_config(model), plain, organism_lora=_torch_lora(c.organism_lora, dropout=0.0),
            ia_lora=_torch_lora(c.ia_lora), beta=c.dpo_beta, learning_rate=c.learning_rate, seed=c.seed)))


def _run_job(base_dir: str, workdir: str, job: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ia_jax.bench.organism_job", f"--base={base_dir}",
                           f"--workdir={workdir}", f"--job={json.dumps(job)}"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"organism job {job['organisms']} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def organisms(c, model, base, peak) -> dict:
    del peak
    jobs = c.organism_jobs
    count, sequential = jobs.count, min(jobs.sequential_jobs, jobs.count)
    job = {"examples_per_organism": jobs.examples_per_organism, "seq_len": jobs.seq_len,
           "answer_tokens": jobs.seq_len // 2, "batch_size": c.batch_size, "lora": dict(c.organism_lora),
           "learning_rate": c.learning_rate, "seed": c.seed}
    with tempfile.TemporaryDirectory() as scratch:
        base_dir = os.path.join(scratch, "base")
        save_hf(base, base_dir)
        def single_job(i):
            return _run_job(base_dir, os.path.join(scratch, f"single_{i}"), {**job, "organisms": [i]})

        # The single jobs run half before and half after the one job, so drift in the machine's speed
        # during the run weighs on both sides.
        before = sequential // 2
        single = [single_job(i) for i in range(before)]
        one_job = _run_job(base_dir, os.path.join(scratch, "all"), {**job, "organisms": list(range(count))})
        single += [single_job(i) for i in range(before, sequential)]
    sequential_seconds = sum(single) * count / sequential
    result = {"organisms": count, "examples_per_organism": jobs.examples_per_organism,
              "ours": {"one_job_seconds": one_job, "single_job_seconds": single,
                       "sequential_seconds": sequential_seconds, "sequential_jobs_timed": sequential,
                       "speedup": sequential_seconds / one_job}}
    if c.reference:
        batches = []
        for i in range(count):
            examples = workloads.organism_examples(model, job, i)
            batches.append({"batches": [
                {k: b[k][0] for k in ("tokens", "attention_mask", "loss_mask")}
                for b in [workloads.one_batch(examples[s:s + c.batch_size], c.batch_size, jobs.seq_len)
                          for s in range(0, len(examples), c.batch_size)]]})
        reference = torch_reference.organism_jobs_seconds(workloads.reference_config(model), batches,
                                                          lora=_torch_lora(c.organism_lora),
                                                          batch_size=c.batch_size, learning_rate=c.learning_rate,
                                                          seed=c.seed)
        result["reference"] = {"sequential_in_one_process_seconds": reference["seconds"],
                               "per_organism": reference["per_organism"], "steps": reference["steps"]}
        result["ratio"] = reference["seconds"] / one_job
    return result


def decode(c, model, base, peak) -> dict:
    del peak
    result = {}
    for batch_size in c.decode.batch_sizes:
        common = dict(batch_size=batch_size, prompt_tokens=c.decode.prompt_tokens, new_tokens=c.decode.new_tokens)
        ours = workloads.decode_call(base, **common, organism_lora=workloads.lora_config(c.organism_lora),
                                     ia_lora=workloads.lora_config(c.ia_lora), slots=c.organisms_in_batch, seed=c.seed)
        floor = workloads.matmul_floor_call(base, batch_size=batch_size, new_tokens=c.decode.new_tokens)
        tokens = batch_size * c.decode.new_tokens
        entry = {"tokens": tokens}
        for side, (first, times) in _timed_sides(c, ours, lambda: torch_reference.decode_call(
                workloads.reference_config(model), **common, organism_lora=_torch_lora(c.organism_lora, dropout=0.0),
                ia_lora=_torch_lora(c.ia_lora, dropout=0.0), seed=c.seed), floor=floor).items():
            entry[side] = {**_summary(first, times), "tokens_per_second": tokens / statistics.median(times)}
        if c.reference:
            entry["ratio"] = entry["reference"]["seconds"] / entry["ours"]["seconds"]
            # The most any decoder could reach here: the reference against the base's matmuls alone.
            entry["ratio_bound"] = entry["reference"]["seconds"] / entry["floor"]["seconds"]
        result[f"batch_{batch_size}"] = entry
    return result


_RUNNERS = {"ia_sft": ia_sft, "dpo": dpo, "organisms": organisms, "decode": decode}


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


def machine() -> dict:
    device = jax.devices()[0]
    out = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "backend": jax.default_backend(), "device": device.device_kind,
           "device_count": jax.device_count(), "jax": jax.__version__, "python": platform.python_version()}
    try:
        out["reference_device"] = torch_reference.device_name()
    except ImportError as error:
        out["reference_device"] = f"unavailable: {error}"
    return out


def main(argv):
    del argv
    c = _CONFIG.value
    unknown = sorted(set(c.workloads) - set(_RUNNERS))
    if unknown:
        raise app.UsageError(f"--config.workloads: unknown {unknown}; choose from {list(_RUNNERS)}")
    model = ModelConfig(**c.model)
    base = workloads.base_model(model, c.seed)
    results = {"config": c.to_dict(), "machine": machine(),
               "params": sum(x.size for x in jax.tree.leaves(nnx.state(base))), "workloads": {}}
    measured = measure_peak(c, model)
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
    report.plot_ratios(results, plot)
    print(report.table(results))
    print(f"wrote {_OUT.value} and {plot}")


if __name__ == "__main__":
    app.run(main)
