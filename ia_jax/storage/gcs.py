"""`gs://` paths through google-cloud-storage: whole folders up and down, small text objects, and
streams for big files (ranged reads of one object, resumable uploads fed piece by piece).

Why not a filesystem layer: without TensorFlow, epath/TFDS/orbax reach `gs://` only through gcsfs (not a
dependency), and array_record cannot write to `gs://` at all. So artifacts are built in a local folder and
copied with google-cloud-storage, which is already a dependency; readers download into a local cache.
Model weights are the exception: `RangedReader` and `open_writer` move them straight between memory and
the bucket, tensor by tensor, so a checkpoint never needs a local copy.

Failures come back as the built-in `FileNotFoundError` / `PermissionError` / `OSError` with the `gs://` path
in the message (the server's error is chained), so callers handle local and remote paths alike.

Setting `STORAGE_EMULATOR_HOST` (e.g. `http://127.0.0.1:9023`) points the client at a local emulator with
anonymous credentials; tests use that, so no test needs a Google account.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions

SCHEME = "gs://"
EMULATOR_PROJECT = "ia-jax-local"  # any name works for an emulator; used when GOOGLE_CLOUD_PROJECT is unset
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def is_gcs(path) -> bool:
    return str(path).startswith(SCHEME)


def parse(uri) -> tuple[str, str]:
    """`gs://bucket/a/b` -> ("bucket", "a/b"); the prefix keeps a trailing slash and may be empty.

    Empty, `.` and `..` path segments are refused: they have no folder meaning, and `..` would let an object
    escape the local cache folder that mirrors it.
    """
    uri = str(uri)
    if not is_gcs(uri):
        raise ValueError(f"{uri!r}: not a gs:// path")
    bucket, _, prefix = uri[len(SCHEME):].partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{uri!r}: bucket name {bucket!r} is not a valid GCS bucket name "
                         "(3+ characters: lowercase letters, digits, '-', '_', '.')")
    segments = prefix.split("/")[:-1] if prefix.endswith("/") else prefix.split("/")
    if prefix and any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"{uri!r}: empty, '.' or '..' path segment")
    return bucket, prefix


def client() -> storage.Client:
    """One client per process (per emulator setting), so its connection pool is reused."""
    return _client(os.environ.get("STORAGE_EMULATOR_HOST"), os.environ.get("GOOGLE_CLOUD_PROJECT"))


@functools.lru_cache(maxsize=None)
def _client(emulator_host: str | None, project: str | None) -> storage.Client:
    if emulator_host:  # the library itself reads STORAGE_EMULATOR_HOST for its endpoint
        return storage.Client(project=project or EMULATOR_PROJECT, credentials=AnonymousCredentials())
    return storage.Client(project=project)


def _as_os_error(uri: str, e: api_exceptions.GoogleAPICallError) -> OSError:
    if isinstance(e, api_exceptions.NotFound):
        return FileNotFoundError(f"{uri}: not found (no such bucket or object): {e.message}")
    if isinstance(e, (api_exceptions.Forbidden, api_exceptions.Unauthorized)):
        return PermissionError(f"{uri}: access denied; check the credentials and their roles on the bucket: "
                               f"{e.message}")
    return OSError(f"{uri}: {e}")


@contextlib.contextmanager
def _named(uri: str):
    try:
        yield
    except api_exceptions.GoogleAPICallError as e:
        raise _as_os_error(uri, e) from e
    except storage_exceptions.InvalidResponse as e:  # resumable uploads (BlobWriter) raise these unconverted
        raise _as_os_error(uri, api_exceptions.from_http_response(e.response)) from e
    except storage_exceptions.DataCorruption as e:
        raise OSError(f"{uri}: transfer corrupted (checksum mismatch): {e}") from e


def _blob(uri: str) -> storage.Blob:
    bucket, name = parse(uri)
    if not name or name.endswith("/"):
        raise ValueError(f"{uri!r}: names a folder, not an object")
    return client().bucket(bucket).blob(name)


def _folder(uri: str) -> tuple[str, str]:
    bucket, prefix = parse(uri)
    return bucket, (prefix.rstrip("/") + "/" if prefix else "")


def join(uri: str, *names: str) -> str:
    """`join("gs://b/run/", "a", "x.json")` -> `gs://b/run/a/x.json`."""
    return "/".join([str(uri).rstrip("/"), *names])


def exists(uri: str) -> bool:
    """Whether the object exists (a folder prefix is not an object)."""
    with _named(uri):
        return _blob(uri).exists()


def read_text(uri: str) -> str:
    with _named(uri):
        return _blob(uri).download_as_text(encoding="utf-8")


def write_text(uri: str, text: str) -> None:
    with _named(uri):
        _blob(uri).upload_from_string(text.encode("utf-8"), content_type="text/plain; charset=utf-8")


def list_blobs(uri_prefix: str) -> list[str]:
    """Every object whose name starts with the prefix, as it is written: `gs://b/run` also lists `gs://b/run2/x`."""
    bucket, prefix = parse(uri_prefix)
    with _named(uri_prefix):
        return [f"{SCHEME}{bucket}/{blob.name}" for blob in client().list_blobs(bucket, prefix=prefix)]


def list_dir(uri: str) -> list[str]:
    """Names of the objects directly in folder `uri`, sorted (like `os.listdir`, without subfolders)."""
    bucket, prefix = _folder(uri)
    with _named(uri):
        blobs = client().list_blobs(bucket, prefix=prefix, delimiter="/")
        return sorted(blob.name[len(prefix):] for blob in blobs if blob.name != prefix)


def delete(uri: str) -> None:
    """Deletes one object; a missing one raises `FileNotFoundError`."""
    with _named(uri):
        _blob(uri).delete()


def upload_dir(local_dir: str, uri: str) -> None:
    """Uploads every file below `local_dir` to the same relative path below folder `uri`."""
    if not os.path.isdir(local_dir):
        raise FileNotFoundError(f"{local_dir}: not a local folder to upload to {uri}")
    bucket_name, prefix = _folder(uri)
    bucket = client().bucket(bucket_name)
    for root, _, files in os.walk(local_dir):
        for file in sorted(files):
            path = os.path.join(root, file)
            name = prefix + os.path.relpath(path, local_dir).replace(os.sep, "/")
            with _named(f"{SCHEME}{bucket_name}/{name}"):
                bucket.blob(name).upload_from_filename(path)


def delete_dir(uri: str) -> None:
    """Deletes every object below folder `uri` (nothing to delete is fine); never a whole bucket."""
    bucket, prefix = _folder(uri)
    if not prefix:
        raise ValueError(f"{uri!r}: refusing to delete every object in bucket {bucket!r}; name a folder")
    with _named(uri):
        for blob in list(client().list_blobs(bucket, prefix=prefix)):
            blob.delete()


def download_dir(uri: str, local_dir: str, *, include: Callable[[str], bool] | None = None) -> None:
    """Replaces `local_dir` with a copy of folder `uri`, or of the objects whose name relative to it (`a/b.txt`)
    `include` accepts.

    Files land in a temporary folder beside `local_dir` that is renamed into place at the end, so an
    interrupted download leaves no `local_dir` that looks complete, and the old copy stays whole until then.
    """
    bucket, prefix = _folder(uri)
    with _named(uri):
        blobs = [blob for blob in client().list_blobs(bucket, prefix=prefix) if not blob.name.endswith("/")]
    if include is not None:
        blobs = [blob for blob in blobs if include(blob.name[len(prefix):])]
    if not blobs:
        raise FileNotFoundError(f"{uri}: no objects in this folder" + (" that are asked for" if include else ""))
    local_dir = os.path.abspath(local_dir)
    parent, base = os.path.split(local_dir)
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{base}.partial-", dir=parent)
    try:
        for blob in blobs:
            source = f"{SCHEME}{bucket}/{blob.name}"
            relative = blob.name[len(prefix):].split("/")
            if any(s in ("", ".", "..") for s in relative):
                raise ValueError(f"{source}: object name has an empty, '.' or '..' segment; cannot mirror it")
            target = os.path.join(partial, *relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with _named(source):
                blob.download_to_filename(target)
        if os.path.exists(local_dir):
            old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            os.rename(local_dir, os.path.join(old, base))
            os.rename(partial, local_dir)
            shutil.rmtree(old)
        else:
            os.rename(partial, local_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already after a successful rename


def cache_path(uri: str) -> str:
    """Local mirror folder for `uri`: `$IA_JAX_CACHE_DIR/gcs/<bucket>/<prefix>` (default `~/.cache/ia_jax`)."""
    bucket, prefix = parse(uri)
    root = os.environ.get("IA_JAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ia_jax")
    return os.path.join(root, "gcs", bucket, *[s for s in prefix.split("/") if s])


READ_CHUNK_BYTES = 32 * 1024 * 1024  # a read larger than this is split into parallel ranged requests
READ_WORKERS = 8


class _Into:
    """A write-only stream into a preallocated buffer, so a download lands in place with no second copy."""

    def __init__(self, view: memoryview, uri: str):
        self.view, self.position, self.uri = view, 0, uri

    def write(self, data) -> int:
        size = len(data)
        if self.position + size > len(self.view):
            raise OSError(f"{self.uri}: the server sent more bytes than the range asked for")
        self.view[self.position : self.position + size] = data
        self.position += size
        return size

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:  # the library rewinds on a full resend
        if (position, whence) != (0, io.SEEK_SET):
            raise io.UnsupportedOperation("only a rewind to the start")
        self.position = 0
        return 0


class RangedReader:
    """Random access to one object's bytes by HTTP range requests; nothing is stored on local disk.

    Opening costs one metadata request (size and generation). Every read asks for exactly its byte range,
    split into `chunk_bytes` requests run `workers` at a time when it is larger, each written straight into
    the result buffer. Reads go to the generation seen on open (the media link GCS returns names it), so
    an object replaced meanwhile is never mixed with its successor: the read fails, or in a versioned
    bucket still sees the old bytes (the emulator ignores generations). Failed requests are retried by
    google-cloud-storage's default policy; what still fails raises the built-in errors naming `uri`.
    """

    def __init__(self, uri: str, *, chunk_bytes: int = READ_CHUNK_BYTES, workers: int = READ_WORKERS):
        bucket, name = parse(uri)
        if not name or name.endswith("/"):
            raise ValueError(f"{uri!r}: names a folder, not an object")
        with _named(uri):
            blob = client().bucket(bucket).get_blob(name)
        if blob is None:
            raise FileNotFoundError(f"{uri}: not found (no such object)")
        self.uri, self.size, self._blob = uri, int(blob.size), blob
        self.chunk_bytes, self.workers = chunk_bytes, workers

    def read(self, start: int, length: int) -> bytearray:
        """Bytes `[start, start + length)` of the object."""
        if start < 0 or length < 0 or start + length > self.size:
            raise ValueError(f"{self.uri}: byte range [{start}, {start + length}) is outside the object "
                             f"({self.size} bytes)")
        result = bytearray(length)
        view = memoryview(result)
        offsets = range(0, length, self.chunk_bytes)
        if len(offsets) <= 1:
            self._read_into(view, start)
        else:
            with ThreadPoolExecutor(min(self.workers, len(offsets))) as pool:
                list(pool.map(lambda o: self._read_into(view[o : o + self.chunk_bytes], start + o), offsets))
        return result

    def _read_into(self, view: memoryview, start: int) -> None:
        if not len(view):
            return
        stream = _Into(view, self.uri)
        with _named(self.uri):
            # raw: the stored bytes, never decompressed (a gzip-encoded object would ignore the range).
            self._blob.download_to_file(stream, start=start, end=start + len(view) - 1, raw_download=True)
        if stream.position != len(view):
            raise OSError(f"{self.uri}: asked for bytes [{start}, {start + len(view)}), got {stream.position}; "
                          "the object is shorter than its metadata says")


@contextlib.contextmanager
def open_writer(uri: str, *, chunk_size: int | None = None,
                content_type: str = "application/octet-stream") -> Iterator[BinaryIO]:
    """A binary file whose writes stream to object `uri` by a resumable upload, `chunk_size` bytes a request
    (a multiple of 256 KiB; default google-cloud-storage's 40 MiB, which is all it buffers).

    The object appears, whole, only when the block exits normally; an exception cancels the upload and
    leaves whatever was stored under `uri` before as it was, as a rename into place does for local files.
    """
    blob = _blob(uri)
    with _named(uri), blob.open("wb", chunk_size=chunk_size, ignore_flush=True, content_type=content_type) as file:
        yield file
