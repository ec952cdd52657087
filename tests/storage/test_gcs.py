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


def test_ranged_reader_reads_exactly_the_asked_bytes_in_parallel_chunks(gcs_root):
    data = os.urandom(300_000)
    uri = f"{gcs_root}/weights/blob.bin"
    with gcs.open_writer(uri) as f:
        f.write(data)
    reader = gcs.RangedReader(uri)
    assert reader.size == len(data)
    for start, length in [(0, 8), (8, 1000), (123_457, 99_999), (len(data) - 1, 1), (17, 0), (0, len(data))]:
        assert bytes(reader.read(start, length)) == data[start : start + length]
    chunked = gcs.RangedReader(uri, chunk_bytes=7_000, workers=4)  # 43 requests, 4 at a time, one buffer
    assert bytes(chunked.read(1, len(data) - 2)) == data[1:-1]
    with pytest.raises(ValueError, match=rf"^{uri}: byte range \[299999, 300001\) is outside the object "
                                         r"\(300000 bytes\)"):
        reader.read(len(data) - 1, 2)
    with pytest.raises(FileNotFoundError, match=rf"^{gcs_root}/weights/absent.bin: not found"):
        gcs.RangedReader(f"{gcs_root}/weights/absent.bin")
    with pytest.raises(FileNotFoundError, match=r"^gs://no-such-bucket/x.bin: not found"):
        gcs.RangedReader("gs://no-such-bucket/x.bin")


def test_open_writer_streams_a_resumable_upload_that_appears_only_when_complete(gcs_root):
    uri = f"{gcs_root}/out/stream.bin"
    chunk = 256 * 1024
    first = os.urandom(3 * chunk + 12_345)
    with gcs.open_writer(uri, chunk_size=chunk) as f:  # several chunk requests, then the final one
        for piece in range(0, len(first), 100_000):
            f.write(memoryview(first)[piece : piece + 100_000])
    assert gcs.RangedReader(uri).read(0, len(first)) == first

    # Failing after chunks went out (and before any did) cancels the upload: the earlier object stays.
    for size in (2 * chunk + 1, 10):
        with pytest.raises(RuntimeError, match="producer failed"), gcs.open_writer(uri, chunk_size=chunk) as f:
            f.write(os.urandom(size))
            raise RuntimeError("producer failed")
        assert gcs.RangedReader(uri).read(0, len(first)) == first
    with (pytest.raises(FileNotFoundError, match=r"^gs://no-such-bucket/x.bin: not found"),
          gcs.open_writer("gs://no-such-bucket/x.bin", chunk_size=chunk) as f):
        f.write(os.urandom(chunk + 1))


def test_join_list_dir_delete_and_filtered_download(gcs_root, tmp_path):
    assert gcs.join("gs://b/run/", "a", "x.json") == "gs://b/run/a/x.json" == gcs.join("gs://b/run", "a/x.json")
    _make_tree(tmp_path / "source", NESTED)
    gcs.upload_dir(str(tmp_path / "source"), f"{gcs_root}/tree")
    gcs.write_text(f"{gcs_root}/tree2/other.txt", "not in tree")
    assert gcs.list_dir(f"{gcs_root}/tree") == ["empty.bin", "top.txt"]  # not a/..., not tree2
    assert gcs.list_dir(f"{gcs_root}/tree/a/") == ["é ✓.json"]
    gcs.download_dir(f"{gcs_root}/tree", str(tmp_path / "some"), include=lambda name: name.endswith(".json"))
    assert _tree(tmp_path / "some") == {os.path.join("a", "é ✓.json"): NESTED[os.path.join("a", "é ✓.json")]}
    with pytest.raises(FileNotFoundError, match=rf"^{gcs_root}/tree: no objects in this folder that are asked for"):
        gcs.download_dir(f"{gcs_root}/tree", str(tmp_path / "none"), include=lambda name: False)
    gcs.delete(f"{gcs_root}/tree/top.txt")
    assert gcs.list_dir(f"{gcs_root}/tree") == ["empty.bin"]
    with pytest.raises(FileNotFoundError, match=rf"^{gcs_root}/tree/top.txt: not found"):
        gcs.delete(f"{gcs_root}/tree/top.txt")
