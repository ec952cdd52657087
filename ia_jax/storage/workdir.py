"""A `gs://` workdir, worked on through a local mirror folder.

Every stage writes ordinary local files (teacher answers appended as they come, PEFT exports, TFDS
array_record files that cannot be written to `gs://` at all), so a run on a `gs://` workdir works in a
local mirror: `pull` fetches what an earlier run (maybe on another machine) left, and `push` uploads
what changed after every stage, on preemption and at the end. Training checkpoints are the exception:
several hosts of a pod must write their shards of one checkpoint into one shared directory, so orbax
writes them to `gs://` directly (`remote_path` maps a mirrored `.../checkpoints` folder to its `gs://`
place) and the mirror skips them both ways.

On several processes every host pulls and works in its own mirror (the stages compute identical
files on every host), and only process 0 pushes.
"""

from __future__ import annotations

import base64
import hashlib
import os

import jax

from ia_jax.storage import gcs
from ia_jax.training import preemption

CHECKPOINTS = "checkpoints"
_ACTIVE: list["Mirror"] = []


def _skipped(relative: str) -> bool:
    return CHECKPOINTS in relative.split("/")


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


class Mirror:
    """`uri` (gs://) mirrored in `local` (default: under `gcs.cache_path(uri)`)."""

    def __init__(self, uri: str, local: str | None = None):
        gcs.parse(uri)
        self.uri = uri.rstrip("/")
        self.local = os.path.abspath(local or gcs.cache_path(self.uri) + ".workdir")

    def _remote_files(self) -> dict[str, object]:
        bucket, prefix = gcs.parse(self.uri + "/")
        with gcs._named(self.uri):
            blobs = list(gcs.client().list_blobs(bucket, prefix=prefix))
        return {blob.name[len(prefix):]: blob for blob in blobs
                if not blob.name.endswith("/") and not _skipped(blob.name[len(prefix):])}

    def pull(self) -> int:
        """Downloads every remote file (checkpoints aside) that is missing or different locally."""
        fetched = 0
        for relative, blob in self._remote_files().items():
            if any(s in ("", ".", "..") for s in relative.split("/")):
                raise ValueError(f"{self.uri}/{relative}: object name has an empty, '.' or '..' segment")
            target = os.path.join(self.local, *relative.split("/"))
            if os.path.exists(target) and _md5(target) == blob.md5_hash:
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with gcs._named(f"{self.uri}/{relative}"):
                blob.download_to_filename(target + ".partial")
            os.replace(target + ".partial", target)
            fetched += 1
        return fetched

    def push(self) -> int:
        """Uploads every local file (checkpoints and `.partial` files aside) that the remote lacks or
        holds differently; process 0 only. Returns the number uploaded."""
        if jax.process_index() != 0 or not os.path.isdir(self.local):
            return 0
        with preemption.deferred():  # a second SIGTERM must not cut the upload that saves the first
            return self._push()

    def _push(self) -> int:
        remote = self._remote_files()
        bucket_name, prefix = gcs.parse(self.uri + "/")
        bucket = gcs.client().bucket(bucket_name)
        sent = 0
        for root, _, files in os.walk(self.local):
            for name in sorted(files):
                path = os.path.join(root, name)
                relative = os.path.relpath(path, self.local).replace(os.sep, "/")
                if _skipped(relative) or ".partial" in relative:
                    continue
                blob = remote.get(relative)
                if blob is not None and blob.md5_hash == _md5(path):
                    continue
                with gcs._named(f"{self.uri}/{relative}"):
                    bucket.blob(prefix + relative).upload_from_filename(path)
                sent += 1
        return sent

    def __enter__(self) -> "Mirror":
        os.makedirs(self.local, exist_ok=True)
        self.pull()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        self.push()  # on success, failure and preemption alike: nothing finished is lost


def remote_path(path: str) -> str:
    """Where `path` really lives: a folder inside an active mirror's `checkpoints` maps to `gs://`."""
    path = str(path)
    if gcs.is_gcs(path):
        return path
    absolute = os.path.abspath(path)
    for mirror in _ACTIVE:
        if absolute.startswith(mirror.local + os.sep):
            relative = os.path.relpath(absolute, mirror.local).replace(os.sep, "/")
            if _skipped(relative):
                return f"{mirror.uri}/{relative}"
    return path
