"""A real GCS emulator (PyPI `gcp-storage-emulator`) on loopback, so gs:// code is tested without Google.

It runs as a subprocess of this interpreter (in-memory storage, one bucket). The port is picked free by the
OS and then handed to the emulator, which leaves a small window for another process to take it; a start
that dies is retried on a new port.

One fix is applied at start: the emulator leaves out the `x-goog-generation` header that GCS sends with
every object download, and tensorstore (orbax's array writer) takes an object's generation from it.
Without it a re-read OCDBT manifest gets generation 0 and the next conditional write of the manifest is
refused ("Malformed StorageGeneration"), in some runs and not others.
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

_LAUNCHER = """
import sys
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

download = objects.download

def download_with_generation(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = obj["generation"]
        response["x-goog-metageneration"] = obj["metageneration"]
    except NotFound:  # the handler itself answers 404
        pass
    download(request, response, storage, *args, **kwargs)

objects.download = download_with_generation  # before the server module builds its routes from it
from gcp_storage_emulator.__main__ import main
main(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, log) -> subprocess.Popen | None:
    process = subprocess.Popen([sys.executable, "-c", _LAUNCHER, "start", "--host=127.0.0.1",
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
