"""One organism-training job as a user runs it: a fresh process that loads the base from its
safetensors checkpoint, trains the listed organisms in one stacked adapter, and saves each as PEFT.

The benchmark times this process from outside (start-up, import, load, compile, train, save), once
with all K organisms and K times with one, which is what "K sequential jobs" costs.

`python -m ia_jax.bench.organism_job --base=DIR --workdir=DIR --job='{"organisms": [0, 1], ...}'`
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags
from flax import nnx

from ia_jax.bench import memory, workloads
from ia_jax.lora.peft_io import save_peft
from ia_jax.models.hf_checkpoint import load_hf
from ia_jax.organisms.train import OrganismData, OrganismRecipe, train_organisms

_BASE = flags.DEFINE_string("base", None, "Hugging Face checkpoint directory of the base model.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the job checkpoints and saves its adapters.", required=True)
_JOB = flags.DEFINE_string("job", None, "JSON: organisms (indices), examples_per_organism, seq_len, answer_tokens, "
                                        "batch_size, lora {rank, alpha, dropout}, learning_rate, seed.", required=True)


def main(argv):
    del argv
    job = json.loads(_JOB.value)
    start = time.perf_counter()
    baseline = memory.resident_bytes() or memory.resident_peak_bytes()
    base = load_hf(_BASE.value)
    graphdef, state = nnx.split(base)
    data = [OrganismData(name=f"organism_{i}", examples=[{k: v for k, v in e.items() if k != "organism_id"}
                                                         for e in workloads.organism_examples(base.config, job, i)])
            for i in job["organisms"]]
    # Bucketed as the recipe's default is (powers of two): the loss span, half of each example, then
    # gets the LM head at its own width rather than at every position.
    seq = job["seq_len"]
    buckets = tuple(b for b in OrganismRecipe().buckets if b < seq) + (seq,)
    recipe = OrganismRecipe(lora=workloads.lora_config(job["lora"]), learning_rate=job["learning_rate"],
                            batch_size=job["batch_size"], buckets=buckets, checkpoint_every=10**9, seed=job["seed"])
    adapter, history = train_organisms(graphdef, state, data, recipe, os.path.join(_WORKDIR.value, "train"),
                                       log_every=10**9)
    for slot, organism in enumerate(data):
        save_peft(adapter, os.path.join(_WORKDIR.value, "peft", organism.name), slot=slot)
    print(json.dumps({"seconds_in_process": time.perf_counter() - start, "steps": history[-1]["step"],
                      "baseline_bytes": baseline, "peak_bytes": memory.resident_peak_bytes() - baseline}))


if __name__ == "__main__":
    app.run(main)
