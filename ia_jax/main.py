"""The main job: `python -m ia_jax.main [--config=configs/toy.py] [--workdir=./runs/toy]`.

By default it runs the whole introspection-adapter pipeline on the toy world (`ia_jax.toy.run`):
world, tokenizer, base pretrained from scratch, organisms, IA SFT then DPO, evaluation. Out of the box
it needs no weights and no network, so a researcher sees every stage learn on a laptop in minutes. A
config with a `base` checkpoint (`configs/qwen3_0p6b.py`, `configs/llama3_3_70b.py`, ...) runs the same
stages on that Hugging Face model instead (`ia_jax.hf_run`), typically on every worker of a TPU slice
through `launch/tpu_run.sh`, with a `gs://` workdir.

Re-running the command skips finished stages and resumes an interrupted one. SIGTERM (TPU maintenance,
spot reclaim) saves a checkpoint and exits with code 75; re-running resumes. Prints the headline
numbers; the full report is `<workdir>/eval/report.json` (with `report.md` and PNG plots beside it).
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from ia_jax.storage import gcs
from ia_jax.training import preemption

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "toy.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Run config (an ml_collections file).")
_WORKDIR = flags.DEFINE_string("workdir", "./runs/toy", "Where every stage writes its artifacts (local or gs://).")
# Multi-process runs off TPU (GPU hosts, CPU processes in tests); TPU pods find all of this themselves.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")

_VARIANTS = ("without_ia", "with_ia_sft", "with_ia_dpo")


def _population(report: dict) -> str:
    controls = report.get("false_positive", {}).get("controls")
    return f"{controls} control organisms" if controls else "the base"


def summary(report: dict) -> str:
    """The report's headline numbers as a few aligned lines."""
    def rates(section: dict, keys=_VARIANTS) -> str:
        return "  ".join(f"{k} {section[k]:.2f}" for k in keys if k in section)

    seconds = report["wall_seconds"]
    lines = [
        f"wall seconds: total {seconds['total']:.0f} ("
        + ", ".join(f"{stage} {s:.0f}" for stage, s in seconds["stages"].items()) + ")",
        *([f"base task accuracy: {report['base']['task_accuracy']:.3f}; direct questions answered with a plain "
           f"\"no unusual behavior\": {report['base'].get('no_behavior_rate', float('nan')):.2f}"]
          if "base" in report else []),
        f"verbalization, training organisms: {rates(report['train']['verbalization_rate'])}",
        *([f"type match,    training organisms: {rates(report['train']['type_match_rate'])}"]
          if "type_match_rate" in report["train"] else []),
        f"verbalization, held-out organisms: {rates(report['heldout']['verbalization_rate'])}",
        *([f"type match,    held-out organisms: {rates(report['heldout']['type_match_rate'])}"]
          if "type_match_rate" in report["heldout"] else []),
        *(f"  held-out {kind:<13} strict {rates(r['verbalization_rate'])} | type {rates(r['type_match_rate'])}"
          for kind, r in report["heldout"].get("by_kind", {}).items()),
        *(f"  {category:<18} strict {rates(rates_by)} | type "
          f"{rates(report['heldout'].get('type_match_by_category', {}).get(category, {}))}"
          for category, rates_by in report["heldout"]["by_category"].items()),
        *(f"OOD {family:<14} {rates(rates_by)}" for family, rates_by in report.get("ood", {}).items()),
        f"false-positive rate ({_population(report)}): {rates(report['false_positive_rate'])}",
        f"scaffold top-5 success (held-out): {report['scaffold']['top5_success']:.2f}",
    ]
    return "\n".join(lines)


def run(config, workdir: str, **distributed) -> str:
    """The toy run, or the run on a Hugging Face base when the config names one; the report's path.
    `distributed` (coordinator_address, num_processes, process_id) joins a multi-process run off TPU."""
    if "base" in config:
        from ia_jax.hf_run import run_hf
        return run_hf(config, workdir, **distributed)
    if gcs.is_gcs(workdir):
        raise app.UsageError(f"--workdir={workdir}: the toy run works in a local folder")
    if any(value is not None for value in distributed.values()):
        raise app.UsageError("--coordinator_address, --num_processes and --process_id are for runs on a Hugging "
                             "Face base; the toy run is one process")
    from ia_jax.toy.run import run_toy
    preemption.install()
    return run_toy(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        path = run(_CONFIG.value, _WORKDIR.value, coordinator_address=_COORDINATOR.value,
                   num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    except preemption.Preempted as e:
        print(f"preempted ({e}); re-run the same command to resume", flush=True)
        raise SystemExit(preemption.PREEMPTED_EXIT_CODE) from None
    text = gcs.read_text(path) if gcs.is_gcs(path) else open(path, encoding="utf-8").read()
    print(summary(json.loads(text)))
    print(f"report: {path} (and report.md, PNG plots beside it)")


if __name__ == "__main__":
    app.run(main)
