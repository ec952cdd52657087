"""A run on a Hugging Face base as a pod runs it: `python -m ia_jax.main --config=FILE --workdir=gs://...`
with the base read from `gs://`, 8 devices in a (data 2, fsdp 4) mesh, a local judge model, SIGTERM
in the middle of IA training (exit 75, checkpoint on gs://), and a re-run that resumes to a valid report.

The base is the tiny phase-1 world's model (tests/tiny_world.py) with its programmatic behaviors; what
is checked here is the plumbing (config, mesh, gs://, preemption, resume), not how well a 64-wide model
introspects, which the toy run measures.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading

from ia_jax.evaluation.reports import validate_report
from ia_jax.storage import gcs
from ia_jax.training.preemption import PREEMPTED_EXIT_CODE

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = '''
from ia_jax.hf_run import default_config


def get_config():
    c = default_config()
    c.name = "tiny"
    c.log_every = 2
    c.base.update(checkpoint={checkpoint!r}, dtype="float32", param_dtype="float32")
    c.architecture.update(model_type="llama", vocab_size={vocab}, hidden_size=64, intermediate_size=128, num_layers=2,
                          num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=8192,
                          tie_word_embeddings=False)
    c.hardware.update(accelerator="cpu", devices=8, devices_per_host=8, hbm_gib=4.0)
    c.mesh.update(data=2, fsdp=4, tensor=1)
    c.library.update(path={library!r}, prompts={prompts!r})
    c.teacher.update(max_new_tokens=8, batch_size=8, prompt_buckets=(32,))
    c.judge.update(checkpoint={checkpoint!r}, batch_size=8)
    c.organisms.update(per_split={{"train": 2, "heldout": 2}}, prompts_per_behavior=8, min_keep_rate=0.1,
                       lora=dict(rank=4, alpha=16.0, dropout=0.0), learning_rate=5e-3, epochs=2, batch_size=16,
                       buckets=(48,), checkpoint_every=20)
    c.introspection.update(examples_per_organism=8, base_examples=8)
    c.ia_sft.update(lora=dict(rank=4, alpha=8.0, dropout=0.05), learning_rate=1e-2, epochs=6, batch_size=8,
                    buckets=(64,), checkpoint_every=1000)
    c.ia_dpo.update(epochs=1, batch_size=8, buckets=(64,), samples_per_question=1, checkpoint_every=1000)
    c.eval.update(samples=1, temperature=0.0, max_new_tokens=8, batch_size=8, prompt_buckets=(64,),
                  scaffold_reports=2)
    return c
'''


def _main(config_path, workdir, emulator, cache, *, stop_at=None):
    """Runs the main job with its local mirror of `workdir` under `cache`; with `stop_at`, sends SIGTERM
    once that text shows in its output."""
    env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator, "PYTHONUNBUFFERED": "1", "IA_JAX_CACHE_DIR": str(cache)}
    process = subprocess.Popen([sys.executable, "-m", "ia_jax.main", f"--config={config_path}", f"--workdir={workdir}"],
                               cwd=_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks, sent = [], []

    def read():  # progress bars end in \r, not \n: read bytes as they come
        for chunk in iter(lambda: os.read(process.stdout.fileno(), 4096), b""):
            chunks.append(chunk.decode(errors="replace"))
            if stop_at and not sent and stop_at in "".join(chunks[-2:]) and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                sent.append(True)

    reader = threading.Thread(target=read)
    reader.start()
    process.wait(timeout=900)
    reader.join()
    return process.returncode, "".join(chunks)


def tiny_run(phase1_world, gcs_root, tmp_path):
    """(config file, gs:// workdir) of a run on the tiny world's base, uploaded to gs://."""
    base = f"{gcs_root}/models/tiny"
    gcs.upload_dir(phase1_world["base_dir"], base)
    library = os.path.join(os.path.dirname(phase1_world["prompts"]), "library")
    config_path = tmp_path / "tiny.py"
    config_path.write_text(CONFIG.format(checkpoint=base, vocab=len(phase1_world["tokenizer"]), library=library,
                                         prompts=phase1_world["prompts"]))
    return config_path, f"{gcs_root}/run"


def test_a_gs_run_is_preempted_in_ia_training_and_resumes_to_a_report(phase1_world, gcs_root, gcs_emulator_host,
                                                                      tmp_path):
    config_path, workdir = tiny_run(phase1_world, gcs_root, tmp_path)

    code, output = _main(config_path, workdir, gcs_emulator_host, tmp_path / "worker_a", stop_at="ia sft:")
    assert code == PREEMPTED_EXIT_CODE, output[-4000:]
    assert "re-run the same command to resume" in output
    remote = gcs.list_blobs(workdir + "/")
    assert f"{workdir}/phase1/organisms/organisms.json" in remote  # finished stages went up at once
    assert any("/phase2/ia_sft/checkpoints/" in uri for uri in remote), remote  # the preempted step, on gs://
    assert not any(uri.endswith("eval/report.json") for uri in remote)

    # The re-run starts on a fresh machine (an empty local mirror): everything comes back from gs://.
    code, output = _main(config_path, workdir, gcs_emulator_host, tmp_path / "worker_b")
    assert code == 0, output[-4000:]
    assert "[tiny] stage organisms done" in output
    assert not re.search(r"organisms:\s+\d+%", output)  # no organism was trained again
    logged = [json.loads(line)["step"] for line in gcs.read_text(f"{workdir}/phase2/ia_sft/metrics.jsonl").splitlines()]
    assert logged == sorted(set(logged)), logged  # IA SFT went on from its checkpoint, not from step 0
    report = json.loads(gcs.read_text(f"{workdir}/eval/report.json"))
    validate_report(report)
    assert report["meta"]["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1} and report["meta"]["devices"] == 8
    assert set(report["train"]["verbalization_rate"]) == {"without_ia", "with_ia_sft", "with_ia_dpo"}
    assert gcs.exists(f"{workdir}/phase2/ia_dpo/peft/adapter_model.safetensors")
    assert f"report: {workdir}/eval/report.json" in output
