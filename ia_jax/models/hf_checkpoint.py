"""Hugging Face checkpoints in and out: `config.json` + safetensors (single file or sharded), in a local
folder or a `gs://` one.

Loading builds the model abstractly (no random weights are ever materialised), checks every tensor's
name and shape against the config from the file headers alone (a wrong checkpoint fails in seconds,
not after a long read), then fills one weight at a time. Each weight is placed straight onto its
sharding: a device receives only its own block, read from the memory-mapped file, so the host never
holds a second copy of the model. Saving streams one tensor at a time in the other direction.

From `gs://`, `config.json` and the index are small reads, each file's header a small ranged read, and
every (per-layer) tensor one ranged read of just its bytes, made once however many device blocks share it:
nothing is written to local disk and the host holds about one tensor beyond the blocks it places
(tests/models/test_hf_checkpoint_gcs.py measures both). Saving to `gs://` uploads each safetensors file
as it is produced, by a resumable upload fed tensor by tensor, with no local copy either. (A tokenizer's
few small files are the exception: `load_tokenizer` caches them locally.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Iterator

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from ia_jax.models.config import load_hf_config, to_hf_dict
from ia_jax.models.decoder import CausalLM
from ia_jax.models.safetensors_io import SafetensorsFile, write_safetensors
from ia_jax.parallel.sharding import LOGICAL_AXIS_RULES, named_sharding
from ia_jax.storage import gcs

_log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
# Tensors some checkpoints carry that the architecture does not use.
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


class CheckpointError(ValueError):
    """A checkpoint that does not match its config; the message names the tensor and file."""


# Folder operations for a local path or a `gs://` one; files inside are read through SafetensorsFile.
def _join(directory: str, name: str) -> str:
    return gcs.join(directory, name) if gcs.is_gcs(directory) else os.path.join(directory, name)


def _exists(path: str) -> bool:
    return gcs.exists(path) if gcs.is_gcs(path) else os.path.exists(path)


def _listdir(directory: str) -> list[str]:
    if gcs.is_gcs(directory):
        return gcs.list_dir(directory)
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _read_text(path: str) -> str:
    if gcs.is_gcs(path):
        return gcs.read_text(path)
    with open(path, encoding="utf-8") as f:
        return f.read()


def _write_text(path: str, text: str) -> None:
    """Whole or not at all: a local file through a renamed `.tmp`, a `gs://` object by one upload."""
    if gcs.is_gcs(path):
        gcs.write_text(path, text)
        return
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _remove(path: str) -> None:
    if gcs.is_gcs(path):
        gcs.delete(path)
    else:
        os.remove(path)


class _WeightLayout:
    """How one of our weights corresponds to Hugging Face tensors (one per layer when stacked).

    Our kernels are `[in..., out...]` (named-einsum friendly); transformers stores `[out, in]` with
    heads flattened. Vectors (biases, norm scales) are flattened; the embedding is stored as is.
    """

    def __init__(self, path: tuple[str, ...], variable: nnx.Variable):
        self.path = path
        self.shape = tuple(variable.shape)
        self.stacked = "layers" in path
        self.kind = {"kernel": "kernel", "embedding": "embedding"}.get(path[-1], "vector")
        self.logical_axes = variable.get_metadata().get("logical_axes")
        inner = self.shape[1:] if self.stacked else self.shape
        if self.kind == "kernel":
            in_ndim = variable.get_metadata()["in_ndim"]
            self.inner_shape = inner
            self.hf_shape = (math.prod(inner[in_ndim:]), math.prod(inner[:in_ndim]))
        elif self.kind == "embedding":
            self.inner_shape = self.hf_shape = inner
        else:
            self.inner_shape, self.hf_shape = inner, (math.prod(inner),)

    def hf_name(self, layer: int | None) -> str:
        parts = []
        for key in self.path:
            parts.append("weight" if key in ("kernel", "embedding") else str(key))
            if key == "layers" and layer is not None:
                parts.append(str(layer))
        return ".".join(parts)

    def hf_names(self) -> list[tuple[int | None, str]]:
        layers = range(self.shape[0]) if self.stacked else [None]
        return [(layer, self.hf_name(layer)) for layer in layers]

    def from_hf(self, hf_array: np.ndarray) -> np.ndarray:
        """Our layout of one (per-layer) tensor, as a view where numpy allows."""
        if self.kind == "kernel":
            return hf_array.T.reshape(self.inner_shape)
        return hf_array.reshape(self.inner_shape)

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        if self.kind == "kernel":
            return array.reshape(self.hf_shape[1], self.hf_shape[0]).T
        return array.reshape(self.hf_shape)


class CheckpointFiles:
    """Maps tensor names to the (lazily opened) safetensors file that holds them; `directory` may be `gs://`."""

    def __init__(self, directory: str):
        self.directory = directory
        index_path = _join(directory, INDEX_FILE)
        single_path = _join(directory, SINGLE_FILE)
        if _exists(index_path):
            try:
                weight_map = json.loads(_read_text(index_path))["weight_map"]
                self._files = {name: _join(directory, file) for name, file in weight_map.items()}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{index_path}: not a safetensors index ({e!r})") from None
        elif _exists(single_path):
            self._files = {name: single_path for name in SafetensorsFile(single_path).keys()}
        else:
            present = _listdir(directory)
            hint = (
                " (only safetensors are loaded; pickled .bin/.pt weights never are)"
                if any(p.endswith((".bin", ".pt", ".pth")) for p in present)
                else ""
            )
            raise CheckpointError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}; found {present}{hint}")
        self._open: dict[str, SafetensorsFile] = {}

    def names(self):
        return self._files.keys()

    def file_of(self, name: str) -> SafetensorsFile:
        path = self._files[name]
        if path not in self._open:
            try:
                self._open[path] = SafetensorsFile(path)
            except FileNotFoundError as e:
                raise CheckpointError(f"{path}: listed in {INDEX_FILE} for tensor {name!r} but missing") from e
        file = self._open[path]
        if name not in file:
            raise CheckpointError(f"{path}: {INDEX_FILE} says it holds tensor {name!r}, but it does not")
        return file

    def tensor(self, name: str) -> np.ndarray:
        return self.file_of(name)[name]


def weight_layouts(state) -> Iterator[tuple[tuple[str, ...], nnx.Variable, _WeightLayout]]:
    for path, variable in nnx.to_flat_state(state):
        yield path, variable, _WeightLayout(tuple(str(k) for k in path), variable)


def check_against_config(files: CheckpointFiles, layouts: list[_WeightLayout]) -> None:
    expected = {}
    for layout in layouts:
        for _, name in layout.hf_names():
            expected[name] = layout.hf_shape
    missing = [name for name in expected if name not in files.names()]
    if missing:
        shown = ", ".join(f"{n!r} (expected shape {list(expected[n])})" for n in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{files.directory}: missing tensor {shown}{more}")
    for name, shape in expected.items():
        file = files.file_of(name)
        if file.shape(name) != shape:
            raise CheckpointError(
                f"{file.path}: tensor {name!r} has shape {list(file.shape(name))}, expected {list(shape)} "
                f"from config.json"
            )
    unused = [n for n in files.names() if n not in expected and not _IGNORED.search(n) and n != "lm_head.weight"]
    if unused:
        _log.warning("%s: ignoring %d tensors the architecture does not use, e.g. %s",
                     files.directory, len(unused), unused[:3])


def _block_key(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    return tuple(s.indices(dim) for s, dim in zip(index, shape))


def _place(files: CheckpointFiles, layout: _WeightLayout, dtype, sharding) -> jax.Array:
    """Builds one weight on its sharding, reading each Hugging Face tensor once.

    The distinct blocks this process's devices hold are allocated first, then filled one (per-layer)
    tensor at a time, so a `gs://` tensor is one ranged read however many blocks need part of it, and a
    layer no local device holds is not read at all. Devices that replicate a block (a weight sharded on
    one mesh axis and replicated on another) get the same host array, so the host holds at most one copy
    of this weight's blocks plus the one tensor being read.
    """
    names = dict(layout.hf_names())
    blocks: dict[tuple, np.ndarray] = {}
    for index in sharding.addressable_devices_indices_map(layout.shape).values():
        key = _block_key(index, layout.shape)
        if key not in blocks:
            blocks[key] = np.empty([len(range(*k)) for k in key], dtype)
    if layout.stacked:
        for layer in range(layout.shape[0]):
            targets = [(key, block) for key, block in blocks.items() if layer in range(*key[0])]
            if not targets:
                continue
            tensor = layout.from_hf(files.tensor(names[layer]))
            for key, block in targets:
                block[range(*key[0]).index(layer)] = tensor[tuple(slice(*k) for k in key[1:])]
            del tensor
    else:
        tensor = layout.from_hf(files.tensor(names[None]))
        for key, block in blocks.items():
            block[...] = tensor[tuple(slice(*k) for k in key)]
        del tensor
    array = jax.make_array_from_callback(layout.shape, sharding, lambda index: blocks[_block_key(index, layout.shape)])
    # Transfers are asynchronous and hold their host blocks: waiting here keeps at most one weight in flight
    # (reads, not transfers, bound a load's time).
    array.block_until_ready()
    blocks.clear()
    return array


def load_hf(path: str, *, mesh: Mesh | None = None, rules=LOGICAL_AXIS_RULES, dtype: str | None = None,
            param_dtype: str | None = None) -> CausalLM:
    """Loads a Hugging Face checkpoint directory (local or `gs://`) into a `CausalLM`.

    `dtype` is the compute dtype and `param_dtype` the storage dtype (each 'float32' or 'bfloat16';
    default float32). With a `mesh`, every weight lands directly on the sharding its logical axes get
    from `rules`; without one, on the default device.
    """
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    config = load_hf_config(path, **overrides)
    abstract = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    files = CheckpointFiles(path)
    entries = list(weight_layouts(state))
    check_against_config(files, [layout for _, _, layout in entries])
    np_dtype = np.dtype(config.weight_dtype)
    for _, variable, layout in entries:
        if mesh is None:
            sharding = SingleDeviceSharding(jax.devices()[0])
        else:
            sharding = named_sharding(layout.logical_axes, layout.shape, mesh, rules)
        variable.set_value(_place(files, layout, np_dtype, sharding))
    return nnx.merge(graphdef, state)


def _plan_shards(sizes: list[int], max_shard_bytes: int) -> list[list[int]]:
    shards: list[list[int]] = [[]]
    current = 0
    for i, size in enumerate(sizes):
        if shards[-1] and current + size > max_shard_bytes:
            shards.append([])
            current = 0
        shards[-1].append(i)
        current += size
    return shards


def save_hf(model: CausalLM, path: str, *, max_shard_bytes: int = 2 * 1024**3, tokenizer=None) -> None:
    """Writes `config.json` + safetensors that `transformers.AutoModelForCausalLM.from_pretrained` loads,
    plus the tokenizer's files when one is given, into folder `path` (local or `gs://`).

    Tensors go out one at a time (one layer of one weight is the most ever fetched to the host), split
    into `model-0000i-of-0000N.safetensors` with an index above `max_shard_bytes`; to `gs://`, each file is
    streamed to its object as it is produced, which appears only once complete. Shards of an earlier
    save that the new one does not overwrite are removed, so the directory never mixes two models.
    """
    if not gcs.is_gcs(path):
        os.makedirs(path, exist_ok=True)
    _, state = nnx.split(model)
    sources: dict[str, tuple[jax.Array, _WeightLayout, int | None]] = {}
    specs = []
    for _, variable, layout in weight_layouts(state):
        array = variable.get_value()
        if not getattr(array, "is_fully_addressable", True):  # numpy values are host-local
            raise CheckpointError(
                f"save_hf({path}): weight {'.'.join(layout.path)} spans several processes; gather it first"
            )
        for layer, name in layout.hf_names():
            sources[name] = (array, layout, layer)
            specs.append((name, layout.hf_shape, np.dtype(array.dtype)))

    def fetch(name: str) -> np.ndarray:
        array, layout, layer = sources[name]
        value = np.asarray(jax.device_get(array if layer is None else array[layer]))
        return layout.to_hf(value)

    sizes = [math.prod(shape) * dtype.itemsize for _, shape, dtype in specs]
    shards = _plan_shards(sizes, max_shard_bytes)
    if len(shards) == 1:
        file_names = [SINGLE_FILE]
    else:
        file_names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file_name, members in zip(file_names, shards):
        write_safetensors(_join(path, file_name), [specs[i] for i in members], fetch)
        weight_map.update({specs[i][0]: file_name for i in members})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
        _write_text(_join(path, INDEX_FILE), json.dumps(index, indent=2))
    for stale in _listdir(path):
        is_ours = stale == SINGLE_FILE or stale == INDEX_FILE or _SHARD_PATTERN.match(stale)
        if is_ours and stale not in file_names and not (stale == INDEX_FILE and len(shards) > 1):
            _remove(_join(path, stale))
    _write_text(_join(path, "config.json"), json.dumps(to_hf_dict(model.config), indent=2))
    if tokenizer is not None:
        from ia_jax.tokenization.chat import save_tokenizer  # transformers is imported only when needed

        save_tokenizer(tokenizer, path)
