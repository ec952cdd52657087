"""A real GCS emulator (PyPI `gcp-storage-emulator`) on loopback, so gs:// code is tested without Google.

It runs as a subprocess of this interpreter (in-memory storage, one bucket). The port is picked free by the
OS and then handed to the emulator, which leaves a small window for another process to take it; a start
that dies is retried on a new port.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BUCKET = "ia-jax-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, log) -> subprocess.Popen | None:
    process = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                                f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}", "--quiet"],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.05)
    _stop(process)
    return None


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_emulator():
    """Yields the emulator's `http://127.0.0.1:<port>` address (the STORAGE_EMULATOR_HOST value)."""
    with tempfile.TemporaryFile() as log:
        for _ in range(3):
            port = _free_port()
            process = _start(port, log)
            if process is not None:
                break
        else:
            log.seek(0)
            raise RuntimeError("gcp-storage-emulator did not start (is the `test` extra installed?):\n"
                               + log.read().decode(errors="replace")[-3000:])
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            _stop(process)
