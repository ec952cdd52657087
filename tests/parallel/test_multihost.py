"""Two processes with jax.distributed on loopback: reading arrays split between them, sharing what only
process 0 computes, one remote judge's verdicts for both, and preemption: checks pass quietly until one
process gets SIGTERM, then both stop at the same check."""

import json
import os
import socket
import subprocess
import sys

from evaluation.test_judges import Server

HERE = os.path.dirname(__file__)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _respond(body, index):
    if body["model"] != "judge-model":
        return 404, {"error": {"message": f"model {body['model']} not found"}}
    prompt = body["messages"][0]["content"]
    answer = "Yes, same behavior." if prompt.lower().count("flatter") >= 2 else "No."
    return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}


def test_two_processes_read_share_and_judge_alike(tmp_path):
    server = Server(_respond)
    out = str(tmp_path / "seen")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    try:
        workers = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_worker.py"), str(port), str(i),
                                     server.url, out], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True) for i in range(2)]
        logs = []
        for worker in workers:
            try:
                logs.append(worker.communicate(timeout=240)[0])
            finally:
                worker.kill()
    finally:
        server.close()
    assert all(w.returncode == 0 for w in workers), "\n".join(logs)[-4000:]
    seen = [json.load(open(f"{out}_{i}.json")) for i in range(2)]
    assert seen[0] == seen[1]
    assert seen[0]["device_get"] == "refused"  # why `multihost.fetch` exists
    assert seen[0]["fetched"] == {"split": [[3 * i + j for j in range(3)] for i in range(8)], "host": [1.0, 1.0],
                                  "replicated": [0.0, 1.0, 2.0]}
    assert seen[0]["shared"] == {"from": 0, "text": "naïve"}
    assert seen[0]["verdicts"] == [[True, "Yes, same behavior."], [False, "No."]]
    assert "HTTP 404" in seen[0]["judge_error"]
    assert seen[0]["preemption_requested"] == [False] * 3
    assert "stopped_at_check" in seen[0]  # and the same check on both processes (seen[0] == seen[1])
    # Only process 0 asked (each pair once; a 404 is not retried, and cancels what has not started).
    models = [body["model"] for _, _, body in server.requests]
    assert models.count("judge-model") == 2 and 1 <= models.count("unknown-model") <= 2
