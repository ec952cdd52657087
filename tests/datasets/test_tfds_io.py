"""Stage datasets round-trip through TFDS array_record files without TensorFlow."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ia_jax.datasets.tfds_io import DatasetError, read_dataset, write_dataset

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
    with pytest.raises(DatasetError, match="gs:// dataset directories are not supported yet"):
        write_dataset("gs://bucket/run", "stage", {"train": []}, FEATURES)
    path = write_dataset(str(tmp_path), "good", {"train": [_example(0)]}, FEATURES)
    with pytest.raises(DatasetError, match=r"no split 'test'; it has \['train'\]"):
        read_dataset(path, "test")
    with pytest.raises(DatasetError, match="not a TFDS dataset version folder"):
        read_dataset(str(tmp_path), "train")
