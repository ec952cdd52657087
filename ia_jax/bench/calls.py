"""Each benchmark workload as its sides, ours and the reference's, built from the config.

The timing harness (`__main__`) builds both sides of a workload in one process and times them in
turns; the memory job (`memory_job.py`) builds one side alone in a fresh process, so that the
process's peak is that side's. Both build their calls here, so time and memory are measured on
exactly the same work. A side is a factory, not a call: building one costs a model and an optimizer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Callable

import jax.numpy as jnp

from ia_jax.bench import flops, torch_reference, workloads
from ia_jax.models.config import ModelConfig
from ia_jax.training import train_step as ts

Factory = Callable[[], Callable[[], object]]


def torch_lora(fields, dropout=None) -> dict:
    return {"rank": int(fields["rank"]), "alpha": float(fields["alpha"]),
            "dropout": float(fields["dropout"] if dropout is None else dropout),
            "targets": ["q", "k", "v", "o", "gate", "up", "down"]}


def step_rows(c, workload: str) -> int:
    """Rows of one step's forward: a DPO pair is two."""
    return 2 * c.batch_size if workload == "dpo" else c.batch_size


def step_flops(c, model: ModelConfig, workload: str) -> float:
    return flops.lora_train_step_flops(model, rows=step_rows(c, workload), seq=c.seq_len, scored=c.answer_tokens,
                                       frozen=(workloads.lora_config(c.organism_lora),),
                                       trained=workloads.lora_config(c.ia_lora))


def _ours_step(c, base, objective, batch) -> workloads.StepCall:
    return workloads.ia_train_step_call(
        base, batch, objective, organism_lora=workloads.lora_config(c.organism_lora),
        ia_lora=workloads.lora_config(c.ia_lora), slots=c.organisms_in_batch, learning_rate=c.learning_rate,
        seed=c.seed)


def sft_sides(c, model: ModelConfig, base) -> dict[str, Factory]:
    """`base` may be None where only the reference is built."""
    examples = workloads.sft_examples(model, count=c.batch_size, seq=c.seq_len, answer=c.answer_tokens,
                                      organisms=c.organisms_in_batch, seed=c.seed)
    batch = workloads.one_batch(examples, c.batch_size, c.seq_len)
    plain = {k: batch[k][0] for k in ("tokens", "attention_mask", "loss_mask")}
    return {
        "ours": lambda: _ours_step(c, base, ts.sft_objective, batch),
        "reference": lambda: torch_reference.ia_sft_step_call(
            workloads.reference_config(model), plain, organism_lora=torch_lora(c.organism_lora, dropout=0.0),
            ia_lora=torch_lora(c.ia_lora), learning_rate=c.learning_rate, seed=c.seed),
    }


def dpo_sides(c, model: ModelConfig, base) -> dict[str, Factory]:
    pairs = workloads.dpo_examples(model, count=c.batch_size, seq=c.seq_len, answer=c.answer_tokens,
                                   organisms=c.organisms_in_batch, seed=c.seed)
    batch = workloads.one_batch(pairs, c.batch_size, c.seq_len)
    plain = {k: batch[k][0] for k in batch if not k.endswith("positions") and k != "organism_ids"}
    return {
        "ours": lambda: _ours_step(c, base, ts.dpo_objective(c.dpo_beta), batch),
        "reference": lambda: torch_reference.dpo_step_call(
            workloads.reference_config(model), plain, organism_lora=torch_lora(c.organism_lora, dropout=0.0),
            ia_lora=torch_lora(c.ia_lora), beta=c.dpo_beta, learning_rate=c.learning_rate, seed=c.seed),
    }


def decode_sides(c, model: ModelConfig, base, batch_size: int) -> dict[str, Factory]:
    """Ours, the reference's `generate`, and the floor (the base's weight matmuls alone, ours)."""
    common = dict(batch_size=batch_size, prompt_tokens=c.decode.prompt_tokens, new_tokens=c.decode.new_tokens)
    return {
        "ours": lambda: workloads.decode_call(base, **common, organism_lora=workloads.lora_config(c.organism_lora),
                                              ia_lora=workloads.lora_config(c.ia_lora), slots=c.organisms_in_batch,
                                              seed=c.seed),
        "reference": lambda: torch_reference.decode_call(
            workloads.reference_config(model), **common, organism_lora=torch_lora(c.organism_lora, dropout=0.0),
            ia_lora=torch_lora(c.ia_lora, dropout=0.0), seed=c.seed),
        "floor": lambda: workloads.matmul_floor_call(base, batch_size=batch_size, new_tokens=c.decode.new_tokens),
    }


def decode_state_bytes(c, model: ModelConfig, params: int, batch_size: int) -> int:
    """What a decode of this batch must hold at least: the weights, the stacked organisms and the IA,
    and the KV cache of the whole sequence (a LoRA's parameters per layer are its multiply-adds per token)."""
    weight_bytes = jnp.dtype(model.weight_dtype).itemsize
    adapters = model.num_layers * (c.organisms_in_batch * flops.lora_macs(model, workloads.lora_config(c.organism_lora))
                                   + flops.lora_macs(model, workloads.lora_config(c.ia_lora)))
    seq = c.decode.prompt_tokens + c.decode.new_tokens
    cache = 2 * model.num_layers * batch_size * seq * model.num_kv_heads * model.head_dim
    return (params + adapters) * weight_bytes + cache * jnp.dtype(model.compute_dtype).itemsize


def organism_job(c) -> dict:
    """The job description every organism-training process gets (`organism_job.py`)."""
    jobs = c.organism_jobs
    seq = jobs.seq_len
    return {"examples_per_organism": jobs.examples_per_organism, "seq_len": seq, "answer_tokens": seq // 2,
            "batch_size": c.batch_size, "lora": dict(c.organism_lora), "learning_rate": c.learning_rate,
            "seed": c.seed}


def run_organism_job(base_dir: str, workdir: str, job: dict) -> tuple[float, dict]:
    """Runs one job in a fresh process: (its wall seconds, what it printed: its steps and memory)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ia_jax.bench.organism_job", f"--base={base_dir}",
                           f"--workdir={workdir}", f"--job={json.dumps(job)}"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"organism job {job['organisms']} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def organism_step_flops(c, model: ModelConfig) -> float:
    """One organism's training in the organisms workload: its examples, in one pass (a step per batch)."""
    job = organism_job(c)
    return flops.lora_train_step_flops(model, rows=job["examples_per_organism"], seq=job["seq_len"],
                                       scored=job["answer_tokens"], frozen=(),
                                       trained=workloads.lora_config(c.organism_lora))


def organism_costs(one_job: float, single: list[float], count: int, bound_seconds: float) -> dict:
    """A single job's fixed cost S and one more organism's cost s, from the wall times alone: a job of
    K organisms takes S + K s, so s = (T_K - T_1) / (K - 1), S = T_1 - s. K single jobs against one
    job is then K (S + s) / (S + K s), which never exceeds 1 + S / s; `speedup_bound` puts the
    organism's FLOPs at this run's peak in place of s."""
    single_mean = sum(single) / len(single)
    out = {"per_organism_bound_seconds": bound_seconds}
    if count > 1:
        s = (one_job - single_mean) / (count - 1)
        fixed = single_mean - s
        out.update(fixed_cost_seconds=fixed, per_organism_seconds=s,
                   speedup_bound=count * (fixed + bound_seconds) / (fixed + count * bound_seconds))
    return out


def organisms_reference(c, model: ModelConfig, count: int) -> Callable[[], dict]:
    """peft training `count` fresh organisms one after another in one process, as a call."""
    job = organism_job(c)
    batches = []
    for i in range(count):
        examples = workloads.organism_examples(model, job, i)
        batches.append({"batches": [
            {k: b[k][0] for k in ("tokens", "attention_mask", "loss_mask")}
            for b in [workloads.one_batch(examples[s:s + c.batch_size], c.batch_size, job["seq_len"])
                      for s in range(0, len(examples), c.batch_size)]]})
    return lambda: torch_reference.organism_jobs_seconds(
        workloads.reference_config(model), batches, lora=torch_lora(c.organism_lora), batch_size=c.batch_size,
        learning_rate=c.learning_rate, seed=c.seed)
