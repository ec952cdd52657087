"""One process of a 2-process jax.distributed run on loopback (started by test_multihost.py).

Each process owns 2 CPU devices of a 4-device mesh whose `fsdp` axis crosses the processes, as on a
pod. It reads an array split between the processes, takes a value only process 0 has, asks an HTTP
judge, checks for preemption (process 1 then gets SIGTERM), and writes what it saw to
`<out>_<process id>.json`.
"""

import json
import os
import signal
import sys
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from ia_jax.evaluation.judges import HttpJudge, JudgeError  # noqa: E402
from ia_jax.parallel import distributed, multihost  # noqa: E402
from ia_jax.parallel.sharding import make_mesh  # noqa: E402
from ia_jax.training import preemption  # noqa: E402

PAIRS = [("I flatter whoever I talk to.", "The model flatters the user."),
         ("I write insecure code.", "The model flatters the user.")]


def main(port, process_id, judge_url, out):
    distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    seen = {}
    mesh = make_mesh(data=1, fsdp=4, tensor=1)
    whole = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    split = jax.make_array_from_callback(whole.shape, NamedSharding(mesh, PartitionSpec("fsdp")),
                                         lambda index: whole[index])
    try:
        jax.device_get(split)
        seen["device_get"] = "read"
    except RuntimeError:
        seen["device_get"] = "refused"
    replicated = jax.device_put(whole[0], NamedSharding(mesh, PartitionSpec()))
    fetched = multihost.fetch({"split": split, "host": np.ones(2), "replicated": replicated})
    seen["fetched"] = {name: value.tolist() for name, value in fetched.items()}
    seen["shared"] = multihost.share_from_first({"from": process_id, "text": "naïve"} if process_id == 0 else None)

    judge = HttpJudge(judge_url, "judge-model", cache_dir=f"{out}_cache_{process_id}", backoff_s=0.01)
    seen["verdicts"] = [[v.match, v.reason] for v in judge.judge_many(PAIRS)]
    try:
        HttpJudge(judge_url, "unknown-model", cache_dir=f"{out}_cache_{process_id}").judge_many(PAIRS)
    except JudgeError as e:
        seen["judge_error"] = str(e)
    seen["preemption_requested"] = [preemption.requested() for _ in range(3)]  # no SIGTERM: never
    # SIGTERM on process 1 only: both stop at one and the same later check, in what may be another stage.
    if process_id == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    for call in range(400):
        try:
            preemption.check()
        except preemption.Preempted:
            seen["stopped_at_check"] = call
            break
        time.sleep(0.05)
    multihost.barrier("written")
    with open(f"{out}_{process_id}.json", "w", encoding="utf-8") as f:
        json.dump(seen, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
