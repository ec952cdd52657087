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

`gs://` directories are not supported yet: array_record writes local files only, so they need a
local build plus upload, which lands with GCS support.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow_datasets as tfds

VERSION = "1.0.0"
FEATURE_KINDS = {
    "int": lambda: tfds.features.Scalar(np.int64),
    "float": lambda: tfds.features.Scalar(np.float32),
    "text": tfds.features.Text,
    "int_sequence": lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32),
    "float_sequence": lambda: tfds.features.Tensor(shape=(None,), dtype=np.float32),
}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


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


def write_dataset(directory: str, name: str, splits: Mapping[str, Iterable[Mapping[str, Any]]],
                  features: Mapping[str, str], *, preview: int = 3, num_shards: int | None = None) -> str:
    """Writes (or keeps, if already complete) stage `name` under `directory`; returns its version folder."""
    if str(directory).startswith("gs://"):
        raise DatasetError(f"{directory}: gs:// dataset directories are not supported yet; use a local path")
    if not _NAME.match(name):
        raise DatasetError(f"dataset name {name!r} must be snake_case (letters, digits, underscores)")
    if not splits:
        raise DatasetError(f"dataset {name!r}: no splits to write")
    _features(features)
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


class DatasetReader:
    """Random access to one split: `len(reader)`, `reader[i]` (text as str, sequences as int32 arrays)."""

    def __init__(self, path: str, split: str):
        if not os.path.exists(os.path.join(path, "dataset_info.json")):
            raise DatasetError(f"{path}: not a TFDS dataset version folder (no dataset_info.json)")
        builder = tfds.builder_from_directory(path)
        if split not in builder.info.splits:
            raise DatasetError(f"{path}: no split {split!r}; it has {sorted(builder.info.splits)}")
        self._source = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in self._source[index].items()}


def read_dataset(path: str, split: str) -> DatasetReader:
    return DatasetReader(path, split)
