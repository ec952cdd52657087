"""gs:// helpers against a real GCS emulator on loopback."""

import os

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from ia_jax.storage import gcs


def _tree(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def _make_tree(root, files):
    for relative, content in files.items():
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)


NESTED = {"top.txt": b"top", "empty.bin": b"", os.path.join("a", "b", "deep.bin"): bytes(range(256)) * 300,
          os.path.join("a", "é ✓.json"): "{\"x\": \"é\"}".encode()}


def test_parse_and_malformed_uris_are_named():
    assert gcs.is_gcs("gs://b/x") and not gcs.is_gcs("/tmp/gs://x") and not gcs.is_gcs("s3://b/x")
    assert gcs.parse("gs://my-bucket/run/stage/1.0.0") == ("my-bucket", "run/stage/1.0.0")
    assert gcs.parse("gs://my-bucket/run/") == ("my-bucket", "run/")
    assert gcs.parse("gs://my-bucket") == ("my-bucket", "")
    for uri in ("gs://", "gs:///run", "gs://Bad_Bucket!/x", "gs://ab/x"):
        with pytest.raises(ValueError, match=rf"'{uri}': bucket name .* is not a valid GCS bucket name"):
            gcs.parse(uri)
    for uri in ("gs://bucket/a//b", "gs://bucket/a/../b", "gs://bucket/./b"):
        with pytest.raises(ValueError, match=rf"'{uri}': empty, '\.' or '\.\.' path segment"):
            gcs.parse(uri)
    with pytest.raises(ValueError, match=r"'/local/dir': not a gs:// path"):
        gcs.parse("/local/dir")


def test_client_is_anonymous_and_cached_under_an_emulator(gcs_root, monkeypatch):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    first = gcs.client()
    assert first is gcs.client() and isinstance(first._credentials, AnonymousCredentials)
    assert first.project == gcs.EMULATOR_PROJECT
    assert first._connection.API_BASE_URL == os.environ["STORAGE_EMULATOR_HOST"]
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "other-project")
    assert gcs.client().project == "other-project"


def test_upload_download_round_trip_of_a_nested_folder(gcs_root, tmp_path):
    _make_tree(tmp_path / "source", NESTED)
    gcs.upload_dir(str(tmp_path / "source"), f"{gcs_root}/tree/")
    assert sorted(gcs.list_blobs(f"{gcs_root}/tree")) == sorted(
        f"{gcs_root}/tree/{relative.replace(os.sep, '/')}" for relative in NESTED)
    target = tmp_path / "mirror" / "tree"
    _make_tree(target, {"stale.txt": b"from an older copy"})
    gcs.download_dir(f"{gcs_root}/tree", str(target))
    assert _tree(target) == NESTED  # replaced, not merged
    assert os.listdir(tmp_path / "mirror") == ["tree"]  # no temporary folders left beside it


def test_an_interrupted_download_keeps_the_old_copy_whole(gcs_root, tmp_path, monkeypatch):
    _make_tree(tmp_path / "source", NESTED)
    gcs.upload_dir(str(tmp_path / "source"), gcs_root)
    target, old_copy = tmp_path / "mirror" / "tree", {"old.txt": b"the previous complete copy"}
    _make_tree(target, old_copy)
    real_download, seen_during_download = storage.Blob.download_to_filename, []

    def fail_on_third(blob, filename, **kwargs):
        seen_during_download.append(_tree(target))
        if len(seen_during_download) == 3:
            raise ConnectionResetError("connection lost mid-download")
        return real_download(blob, filename, **kwargs)

    monkeypatch.setattr(storage.Blob, "download_to_filename", fail_on_third)
    with pytest.raises(ConnectionResetError):
        gcs.download_dir(gcs_root, str(target))
    assert seen_during_download == [old_copy] * 3  # files land elsewhere until the rename
    assert _tree(target) == old_copy and os.listdir(tmp_path / "mirror") == ["tree"]


def test_text_objects_and_delete(gcs_root):
    uri = f"{gcs_root}/notes/é.txt"
    assert not gcs.exists(uri)
    gcs.write_text(uri, "hello é ✓\n")
    assert gcs.exists(uri) and gcs.read_text(uri) == "hello é ✓\n"
    assert not gcs.exists(f"{gcs_root}/notes")  # a folder is not an object
    gcs.write_text(f"{gcs_root}/notes2/keep.txt", "kept")
    gcs.delete_dir(f"{gcs_root}/notes")
    assert gcs.list_blobs(gcs_root) == [f"{gcs_root}/notes2/keep.txt"]  # `notes` did not match `notes2`
    with pytest.raises(ValueError, match="refusing to delete every object in bucket"):
        gcs.delete_dir(gcs_root.rsplit("/", 1)[0] + "/")


def test_missing_objects_and_buckets_are_named(gcs_root, tmp_path):
    missing = f"{gcs_root}/nothing/here.txt"
    with pytest.raises(FileNotFoundError, match=rf"^{missing}: not found"):
        gcs.read_text(missing)
    with pytest.raises(FileNotFoundError, match=rf"^{gcs_root}/nothing: no objects in this folder"):
        gcs.download_dir(f"{gcs_root}/nothing", str(tmp_path / "mirror"))
    assert not (tmp_path / "mirror").exists()
    with pytest.raises(FileNotFoundError, match=r"^gs://no-such-bucket/x.txt: not found"):
        gcs.write_text("gs://no-such-bucket/x.txt", "x")
    with pytest.raises(FileNotFoundError, match=r"^gs://no-such-bucket/run: not found"):
        gcs.list_blobs("gs://no-such-bucket/run")
    with pytest.raises(FileNotFoundError, match=r"not a local folder to upload to gs://"):
        gcs.upload_dir(str(tmp_path / "absent"), gcs_root)
    with pytest.raises(ValueError, match="names a folder, not an object"):
        gcs.read_text(f"{gcs_root}/folder/")


def test_cache_path_mirrors_bucket_and_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("IA_JAX_CACHE_DIR", str(tmp_path))
    assert gcs.cache_path("gs://bucket/run/stage/1.0.0/") == os.path.join(
        str(tmp_path), "gcs", "bucket", "run", "stage", "1.0.0")
    monkeypatch.delenv("IA_JAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gcs.cache_path("gs://bucket/x") == os.path.join(str(tmp_path), "xdg", "ia_jax", "gcs", "bucket", "x")
