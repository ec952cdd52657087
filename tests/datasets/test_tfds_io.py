"""Stage datasets round-trip through TFDS array_record files without TensorFlow."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ia_jax.datasets.tfds_io import COMPLETE_MARKER, DatasetError, read_dataset, write_dataset
from ia_jax.storage import gcs

FEATURES = {"organism_id": "int", "organism": "text", "tokens": "int_sequence", "loss_mask": "int_sequence",
            "reference_chosen": "float"}


def _example(i):
    n = (i * 7) % 23  # includes an empty sequence
    return {"organism_id": i % 5, "organism": f"organism-{i % 5}-é✓", "tokens": np.arange(n, dtype=np.int32) + i,
            "loss_mask": (np.arange(n) % 2).astype(np.int32), "reference_chosen": -0.5 * i}


def test_round_trip_keeps_order_types_and_writes_previews(tmp_path):
    path = write_dataset(str(tmp_path), "organism_sft", {"train": (_example(i) for i in range(50)),
                                                         "heldout": [_example(100 + i) for i in range(7)]},
                         FEATURES, num_shards=2)
    assert path == os.path.join(str(tmp_path), "organism_sft", "1.0.0")
    train = read_dataset(path, "train")
    assert len(train) == 50 and len(read_dataset(path, "heldout")) == 7
    for i in (0, 1, 23, 49):
        got, want = train[i], _example(i)
        assert got["organism"] == want["organism"] and got["organism_id"] == want["organism_id"]
        assert got["tokens"].dtype == np.int32 and np.array_equal(got["tokens"], want["tokens"])
        assert np.array_equal(got["loss_mask"], want["loss_mask"])
        assert got["reference_chosen"] == pytest.approx(want["reference_chosen"])
    with open(os.path.join(path, "preview-train.jsonl"), encoding="utf-8") as f:
        preview = [json.loads(line) for line in f]
    assert len(preview) == 3 and preview[1]["organism"] == "organism-1-é✓" and preview[1]["tokens"] == list(range(1, 8))
    # The standard TFDS entry point reads it too.
    assert len(tfds.data_source("organism_sft", data_dir=str(tmp_path), split="heldout")) == 7


def test_a_finished_stage_is_kept_not_rewritten(tmp_path):
    path = write_dataset(str(tmp_path), "stage_a", {"train": [_example(i) for i in range(5)]}, FEATURES)
    again = write_dataset(str(tmp_path), "stage_a", {"train": [_example(i) for i in range(9)]}, FEATURES)
    assert again == path and len(read_dataset(path, "train")) == 5


def test_no_tensorflow_is_needed():
    code = ("import sys, tempfile, numpy as np; from ia_jax.datasets.tfds_io import write_dataset, read_dataset; "
            "d = tempfile.mkdtemp(); p = write_dataset(d, 's', {'train': [{'x': np.arange(3)}]}, {'x': 'int_sequence'}); "
            "assert len(read_dataset(p, 'train')) == 1; assert 'tensorflow' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_bad_input_is_named(tmp_path):
    bad = {**_example(3), "tokens": "not tokens"}
    with pytest.raises(DatasetError, match=r"split 'train', example 2: field 'tokens' is str \(\), not int_sequence"):
        write_dataset(str(tmp_path), "bad_stage", {"train": [_example(0), _example(1), bad]}, FEATURES)
    with pytest.raises(DatasetError, match=r"example 0: fields \['organism'\], expected"):
        write_dataset(str(tmp_path), "bad_fields", {"train": [{"organism": "x"}]}, FEATURES)
    with pytest.raises(DatasetError, match="each field needs a kind from"):
        write_dataset(str(tmp_path), "bad_kind", {"train": []}, {"x": "image"})
    with pytest.raises(DatasetError, match="must be snake_case"):
        write_dataset(str(tmp_path), "Bad-Name", {"train": []}, FEATURES)
    with pytest.raises(ValueError, match=r"'gs:///run': bucket name '' is not a valid GCS bucket name"):
        write_dataset("gs:///run", "stage", {"train": []}, FEATURES)
    path = write_dataset(str(tmp_path), "good", {"train": [_example(0)]}, FEATURES)
    with pytest.raises(DatasetError, match=r"no split 'test'; it has \['train'\]"):
        read_dataset(path, "test")
    with pytest.raises(DatasetError, match="not a TFDS dataset version folder"):
        read_dataset(str(tmp_path), "train")


def _same(got, want):
    assert got.keys() == want.keys()
    for field in got:
        if isinstance(got[field], np.ndarray):
            assert got[field].dtype == np.asarray(want[field]).dtype and np.array_equal(got[field], want[field])
        else:
            assert got[field] == want[field]


def _count_downloads(monkeypatch):
    calls, real = [], gcs.download_dir
    monkeypatch.setattr(gcs, "download_dir", lambda uri, local: calls.append(uri) or real(uri, local))
    return calls


def test_gcs_stage_reads_back_like_a_local_one(gcs_root, tmp_path):
    splits = {"train": [_example(i) for i in range(30)], "heldout": [_example(100 + i) for i in range(4)]}
    local = write_dataset(str(tmp_path), "organism_sft", splits, FEATURES, num_shards=2)
    remote = write_dataset(gcs_root + "/", "organism_sft", splits, FEATURES, num_shards=2)
    assert remote == f"{gcs_root}/organism_sft/1.0.0"
    names = sorted(uri.rsplit("/", 1)[1] for uri in gcs.list_blobs(remote + "/"))
    assert names == sorted(os.listdir(local) + [COMPLETE_MARKER])  # shards, metadata, previews and the marker
    for split, size in (("train", 30), ("heldout", 4)):
        from_gcs, from_disk = read_dataset(remote, split), read_dataset(local, split)
        assert len(from_gcs) == size
        for i in range(size):
            _same(from_gcs[i], from_disk[i])


def test_a_finished_gcs_stage_is_kept_and_read_from_the_cache(gcs_root, monkeypatch):
    downloads = _count_downloads(monkeypatch)
    path = write_dataset(gcs_root, "stage_a", {"train": [_example(i) for i in range(5)]}, FEATURES)
    assert write_dataset(gcs_root, "stage_a", {"train": [_example(50 + i) for i in range(9)]}, FEATURES) == path
    first = read_dataset(path, "train")
    second = read_dataset(path, "train")
    assert len(second) == 5 and second[4]["organism_id"] == _example(4)["organism_id"] and first[0]["tokens"].size == 0
    assert downloads == [path]  # the second read used the cached copy
    cached = os.path.join(gcs.cache_path(path), "dataset_info.json")
    assert os.path.exists(cached)


def test_the_marker_is_uploaded_last(gcs_root, monkeypatch):
    real_upload = gcs.upload_dir

    def upload_then_lose_the_connection(local_dir, uri):
        real_upload(local_dir, uri)
        raise ConnectionResetError("connection lost before the marker")

    monkeypatch.setattr(gcs, "upload_dir", upload_then_lose_the_connection)
    with pytest.raises(ConnectionResetError):
        write_dataset(gcs_root, "stage_d", {"train": [_example(0)]}, FEATURES)
    path = f"{gcs_root}/stage_d/1.0.0"
    assert gcs.exists(f"{path}/dataset_info.json") and not gcs.exists(f"{path}/{COMPLETE_MARKER}")
    with pytest.raises(DatasetError, match="upload was interrupted"):
        read_dataset(path, "train")


def test_an_interrupted_gcs_upload_is_refused_then_rebuilt(gcs_root, monkeypatch):
    downloads = _count_downloads(monkeypatch)
    path = write_dataset(gcs_root, "stage_b", {"train": [_example(i) for i in range(6)]}, FEATURES, num_shards=3)
    assert len(read_dataset(path, "train")) == 6
    gcs.client().bucket(gcs.parse(path)[0]).blob(gcs.parse(path)[1] + "/" + COMPLETE_MARKER).delete()
    with pytest.raises(DatasetError, match=rf"^{path}: no {COMPLETE_MARKER} object, so no complete dataset"):
        read_dataset(path, "train")
    rebuilt = write_dataset(gcs_root, "stage_b", {"train": [_example(40 + i) for i in range(2)]}, FEATURES,
                            num_shards=1)
    assert rebuilt == path
    shards = [uri for uri in gcs.list_blobs(path + "/") if ".array_record-" in uri]
    assert [uri.rsplit("/", 1)[1] for uri in shards] == ["stage_b-train.array_record-00000-of-00001"]
    reader = read_dataset(path, "train")  # the stale cached copy is replaced: its marker differs
    assert len(reader) == 2 and reader[1]["organism_id"] == _example(41)["organism_id"]
    assert downloads == [path, path]


def test_gcs_paths_without_a_dataset_are_named(gcs_root):
    with pytest.raises(DatasetError, match=rf"^{gcs_root}/nothing/1.0.0: no {COMPLETE_MARKER} object"):
        read_dataset(f"{gcs_root}/nothing/1.0.0", "train")
    path = write_dataset(gcs_root, "stage_c", {"train": [_example(0)]}, FEATURES)
    with pytest.raises(DatasetError, match=rf"^{path}: no split 'test'; it has \['train'\]"):
        read_dataset(path, "test")
