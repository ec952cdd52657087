"""The run on a Hugging Face base as a multi-host job: two processes of `python -m ia_jax.main` joined by
`--coordinator_address` on loopback, 4 CPU devices each, one (data 1, fsdp 4, tensor 2) mesh over all 8,
as the workers of a 2-host pod slice run it.

Each process keeps its own local mirror of the `gs://` workdir (its own `IA_JAX_CACHE_DIR`, as each host
has its own disk), orbax writes every training checkpoint into the shared `gs://` directory (each process
its own shards), and only process 0 pushes the mirror. The config is tests/test_hf_run.py's tiny world,
with 4 devices per host and fewer steps.

One process on 8 devices runs the same config to the same results: identical datasets, self-reports,
verdicts and report (wall seconds and paths aside), losses equal to 7 digits and adapter weights to
float32 rounding (summation order differs). That comparison doubles this test's time, so it is not here;
tests/parallel/test_distributed.py checks one step of two processes against one.
"""

import glob
import json
import os
import socket
import subprocess
import sys
import time

from test_hf_run import tiny_run

from ia_jax.evaluation.reports import validate_report
from ia_jax.storage import gcs

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES = 2
# As on a pod (configs/llama3_3_70b.py): fsdp crosses hosts, so every weight and every batch is split
# between the processes; tensor parallelism stays inside one. (data 2 x fsdp 4 would put one whole copy
# of every weight on each process, and hide every read of a weight that spans hosts.)
MESH = ("--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.mesh.tensor=2")
# Fewer steps and fewer, fuller sampler batches: what is tested is the plumbing, not the rates.
SMALLER = ("--config.organisms.epochs=1", "--config.ia_sft.epochs=1", "--config.introspection.examples_per_organism=4",
           "--config.eval.batch_size=64")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(config_path, workdir, emulator, scratch, *, flags=(), timeout=600):
    """Runs every process of the job to its end; returns (exit codes, outputs). When one process fails
    the others would wait for it in a collective forever, so they are stopped."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(STORAGE_EMULATOR_HOST=emulator, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // PROCESSES}")
    processes, logs = [], []
    for i in range(PROCESSES):
        logs.append(open(os.path.join(scratch, f"process_{i}.log"), "w+b"))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "ia_jax.main", f"--config={config_path}",
             f"--config.hardware.devices_per_host={8 // PROCESSES}", *flags, f"--workdir={workdir}",
             f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={PROCESSES}", f"--process_id={i}"],
            cwd=_ROOT, env={**env, "IA_JAX_CACHE_DIR": os.path.join(scratch, f"host_{i}")},
            stdout=logs[-1], stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                time.sleep(10)  # let the others report their side, then stop them
                break
            time.sleep(0.5)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read().decode(errors="replace"))
        log.close()
    return [p.returncode for p in processes], outputs


def test_two_processes_run_the_method_to_a_report(phase1_world, gcs_root, gcs_emulator_host, tmp_path):
    config_path, workdir = tiny_run(phase1_world, gcs_root, tmp_path)

    codes, outputs = run_job(config_path, workdir, gcs_emulator_host, str(tmp_path), flags=MESH + SMALLER)
    assert codes == [0] * PROCESSES, "\n\n".join(f"process {i} (exit {c}):\n{o[-4000:]}"
                                                 for i, (c, o) in enumerate(zip(codes, outputs)))
    report = json.loads(gcs.read_text(f"{workdir}/eval/report.json"))
    validate_report(report)
    assert report["meta"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2} and report["meta"]["devices"] == 8
    assert set(report["train"]["verbalization_rate"]) == {"without_ia", "with_ia_sft", "with_ia_dpo"}
    remote = gcs.list_blobs(workdir + "/")
    for stage in ("phase1/organisms/train", "phase2/ia_sft", "phase2/ia_dpo"):  # both processes' shards, one step
        assert any(f"/{stage}/checkpoints/" in uri and uri.endswith("commit_success.txt") for uri in remote), stage
    assert gcs.exists(f"{workdir}/phase2/ia_dpo/peft/adapter_model.safetensors")
    for output in outputs:
        assert f"report: {workdir}/eval/report.json" in output
    # Every host ran every stage in its own mirror and they agree, line for line: losses, teacher answers,
    # self-reports and verdicts.
    mirrors = [glob.glob(str(tmp_path / f"host_{i}" / "**" / "run.workdir"), recursive=True)[0]
               for i in range(PROCESSES)]
    logs = sorted(os.path.relpath(path, mirrors[0])
                  for path in glob.glob(os.path.join(mirrors[0], "**", "*.jsonl"), recursive=True))
    assert {"phase2/ia_dpo/self_reports.jsonl", "eval/self_reports/reports_with_ia_dpo.jsonl"} <= set(logs)
    for log in logs:
        texts = [open(os.path.join(mirror, log), encoding="utf-8").read() for mirror in mirrors]
        assert texts[0] and texts.count(texts[0]) == PROCESSES, log
