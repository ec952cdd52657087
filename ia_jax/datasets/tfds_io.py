"""Stage datasets as TFDS datasets in array_record files, written and read without TensorFlow.

Each pipeline stage (teacher generations, organism SFT data, introspection data, DPO pairs) is one
TFDS dataset: `<directory>/<name>/1.0.0/` with `dataset_info.json`, `features.json` and
`<name>-<split>.array_record-*` shards, readable with random access by `read_dataset` (or
`tfds.data_source`) and a `preview-<split>.jsonl` of the first examples for people to look at.

TensorFlow is not a dependency, which rules out the convenient `store_as_tfds_dataset` (it checks for
`tf.data`); a small builder class does the same. Two upstream quirks are handled here: a builder
defined inside a package needs `code_path = None` (tensorflow/datasets#11212), and its info must be
built directly rather than from package metadata files. A finished dataset is kept as it is when the
same stage runs again, so a completed stage is never rewritten. Text fields come back as `str`.

`gs://` directories work by copying: array_record writes local files only, and TFDS reaches `gs://`
without TensorFlow only through gcsfs, which we do not depend on. A `gs://` stage is built in a local
temporary folder, uploaded with `ia_jax.storage.gcs`, and marked complete by a `_COMPLETE` object
uploaded last; without it the upload was interrupted, so readers refuse it and writers rebuild it.
Readers download the version folder once into the local cache (`gcs.cache_path`) and read it there,
downloading again only when the remote marker differs from the cached one.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import tempfile
import uuid
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow_datasets as tfds

from ia_jax.storage import gcs

VERSION = "1.0.0"
FEATURE_KINDS = {
    "int": lambda: tfds.features.Scalar(np.int64),
    "float": lambda: tfds.features.Scalar(np.float32),
    "text": tfds.features.Text,
    "int_sequence": lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32),
    "float_sequence": lambda: tfds.features.Tensor(shape=(None,), dtype=np.float32),
}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
COMPLETE_MARKER = "_COMPLETE"  # in gs:// version folders only; local writes are atomic renames already


class DatasetError(ValueError):
    """A dataset request or example that cannot be stored; the message names the field and example."""


def _features(spec: Mapping[str, str]) -> tfds.features.FeaturesDict:
    unknown = {k: v for k, v in spec.items() if v not in FEATURE_KINDS}
    if not spec or unknown:
        raise DatasetError(f"features {unknown or '{}'}: each field needs a kind from {sorted(FEATURE_KINDS)}")
    return tfds.features.FeaturesDict({field: FEATURE_KINDS[kind]() for field, kind in spec.items()})


def _checked(split: str, examples: Iterable[Mapping[str, Any]], spec: Mapping[str, str]):
    for index, example in enumerate(examples):
        if set(example) != set(spec):
            raise DatasetError(f"split {split!r}, example {index}: fields {sorted(example)}, expected {sorted(spec)}")
        for field, kind in spec.items():
            value = example[field]
            ok = {
                "int": isinstance(value, (int, np.integer)) and not isinstance(value, bool),
                "float": isinstance(value, (int, float, np.number)) and not isinstance(value, bool),
                "text": isinstance(value, str),
                "int_sequence": np.ndim(value) == 1 and np.issubdtype(np.asarray(value).dtype, np.integer)
                or np.size(value) == 0,
                "float_sequence": np.ndim(value) == 1,
            }[kind]
            if not ok:
                raise DatasetError(f"split {split!r}, example {index}: field {field!r} is {type(value).__name__} "
                                   f"{np.shape(value)}, not {kind}")
        yield index, {f: np.asarray(v, np.int32) if spec[f] == "int_sequence" else v for f, v in example.items()}


class _StageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(VERSION)
    code_path = None  # tensorflow/datasets#11212: builders inside a package otherwise need importlib_resources

    def __init__(self, *, name: str, spec: Mapping[str, str], splits: Mapping[str, Iterable] | None, **kwargs):
        self.name = name
        self._spec = dict(spec)
        self._splits = dict(splits or {})
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=_features(self._spec), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: _checked(split, examples, self._spec) for split, examples in self._splits.items()}

    def _generate_examples(self, examples):  # required by the base class; _split_generators yields directly
        yield from examples


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def dataset_path(directory: str, name: str) -> str:
    return os.path.join(directory, name, VERSION)


def dataset_complete(directory: str, name: str) -> bool:
    """Whether stage `name` under `directory` is finished, so a pipeline can skip what produces it."""
    path = dataset_path(str(directory).rstrip("/"), name)
    if gcs.is_gcs(directory):
        return gcs.exists(f"{path}/{COMPLETE_MARKER}")
    return os.path.exists(os.path.join(path, "dataset_info.json"))


def write_dataset(directory: str, name: str, splits: Mapping[str, Iterable[Mapping[str, Any]]],
                  features: Mapping[str, str], *, preview: int = 3, num_shards: int | None = None) -> str:
    """Writes (or keeps, if already complete) stage `name` under `directory`; returns its version folder."""
    if not _NAME.match(name):
        raise DatasetError(f"dataset name {name!r} must be snake_case (letters, digits, underscores)")
    if not splits:
        raise DatasetError(f"dataset {name!r}: no splits to write")
    _features(features)
    if gcs.is_gcs(directory):
        return _write_to_gcs(directory, name, splits, features, preview, num_shards)
    return _write_local(directory, name, splits, features, preview, num_shards)


def _write_local(directory, name, splits, features, preview, num_shards) -> str:
    builder = _StageBuilder(name=name, spec=features, splits=splits, data_dir=directory, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        num_shards=num_shards, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    path = os.fspath(builder.data_dir)
    for split in builder.info.splits:
        source = builder.as_data_source(split=split)
        with open(os.path.join(path, f"preview-{split}.jsonl"), "w", encoding="utf-8") as f:
            for i in range(min(preview, len(source))):
                f.write(json.dumps({k: _jsonable(v) for k, v in source[i].items()}, ensure_ascii=False) + "\n")
    return path


def _write_to_gcs(directory, name, splits, features, preview, num_shards) -> str:
    gcs.parse(directory)  # a malformed uri is named as given, not as the marker path below it
    remote = dataset_path(str(directory).rstrip("/"), name)
    marker = f"{remote}/{COMPLETE_MARKER}"
    if gcs.exists(marker):
        return remote
    gcs.delete_dir(remote)  # an interrupted upload's files, e.g. shards of another shard count
    with tempfile.TemporaryDirectory(prefix="ia_jax_stage_") as local_root:
        gcs.upload_dir(_write_local(local_root, name, splits, features, preview, num_shards), remote)
    # A fresh id per upload tells a cached copy from a rebuilt dataset at the same path.
    gcs.write_text(marker, json.dumps({"upload_id": uuid.uuid4().hex,
                                       "uploaded_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}))
    return remote


def _local_copy(path: str) -> str:
    """The cached local copy of complete gs:// version folder `path`, downloaded if missing or stale."""
    path = path.rstrip("/")
    try:
        marker = gcs.read_text(f"{path}/{COMPLETE_MARKER}")
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: no {COMPLETE_MARKER} object, so no complete dataset is there (its upload was "
                           "interrupted, or nothing was written); run its stage again to rebuild it") from e
    local = gcs.cache_path(path)
    cached = pathlib.Path(local, COMPLETE_MARKER)
    if not cached.exists() or cached.read_text(encoding="utf-8") != marker:
        gcs.download_dir(path, local)
    return local


class DatasetReader:
    """Random access to one split: `len(reader)`, `reader[i]` (text as str, sequences as int32 arrays).

    A `gs://` path is read from its local cached copy; errors still name the `gs://` path.
    """

    def __init__(self, path: str, split: str):
        local = _local_copy(path) if gcs.is_gcs(path) else path
        if not os.path.exists(os.path.join(local, "dataset_info.json")):
            raise DatasetError(f"{path}: not a TFDS dataset version folder (no dataset_info.json)")
        builder = tfds.builder_from_directory(local)
        if split not in builder.info.splits:
            raise DatasetError(f"{path}: no split {split!r}; it has {sorted(builder.info.splits)}")
        self._source = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in self._source[index].items()}


def read_dataset(path: str, split: str) -> DatasetReader:
    return DatasetReader(path, split)
