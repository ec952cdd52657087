"""`gs://` through the clients orbax itself uses, so checkpoints are written to GCS directly.

Orbax reaches `gs://` on its own: tensorstore's `gcs` kvstore writes the array data (on a pod, every
process its own shards, into one shared step directory), and etils `epath` (over fsspec and gcsfs when
TensorFlow is absent) writes metadata, lists steps, writes the `commit_success.txt` that marks a
finished step and deletes old steps. No local staging copy is needed, which is what lets several hosts
write one checkpoint. In production both clients find Application Default Credentials (a TPU VM's
service account) themselves and nothing here changes them.

With `STORAGE_EMULATOR_HOST` set (tests; e.g. `http://127.0.0.1:9023`) `prepare` points both at the
emulator, because neither reads that variable the way google-cloud-storage does:

- tensorstore: `TENSORSTORE_GCS_HTTP_URL` (its endpoint) and `GOOGLE_AUTH_TOKEN_FOR_TESTING` (a fixed
  bearer token, so it looks up no credentials). It reads them when it first touches GCS, so one
  process talks to one emulator.
- gcsfs reads `STORAGE_EMULATOR_HOST` itself, but its default filesystem class asks Google's Storage
  Control API (which an emulator does not serve) for each bucket's layout; the plain `GCSFileSystem`
  with anonymous credentials is registered for `gs://` instead.
"""

from __future__ import annotations

import functools
import os

from ia_jax.storage import gcs


def prepare(path) -> None:
    """Makes orbax's clients ready for `path`; nothing to do for a local path."""
    if not gcs.is_gcs(path):
        return
    gcs.parse(path)  # a malformed bucket name fails here, naming the path, not deep inside orbax
    try:
        import gcsfs  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{path}: orbax reaches gs:// through gcsfs (etils epath's backend without "
                          "TensorFlow); install it with `pip install gcsfs`") from e
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if host:
        host = host if "://" in host else f"http://{host}"
        os.environ["TENSORSTORE_GCS_HTTP_URL"] = host
        os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "emulator"  # any token: the emulator checks none
        _register_emulator_filesystem()


@functools.cache
def _register_emulator_filesystem() -> None:
    import fsspec
    from etils.epath import backend
    from gcsfs.core import GCSFileSystem

    class EmulatorFileSystem(GCSFileSystem):
        """gcsfs without the Storage Control lookups and credential search an emulator cannot answer."""

        def __init__(self, *args, finalize_on_close=None, **kwargs):  # epath passes a zonal-bucket option
            super().__init__(*args, **{**kwargs, "token": "anon"})

    for protocol in GCSFileSystem.protocol:
        fsspec.register_implementation(protocol, EmulatorFileSystem, clobber=True)
    # epath keeps one filesystem per scheme; drop one made before the switch.
    getattr(backend._FileSystemSpecBackend._get_filesystem, "cache_clear", lambda: None)()
