"""Device meshes and the one table that maps logical axis names to mesh axes.

Weights and activations name their axes logically (`embed`, `heads`, `mlp`, `batch`); only this table
knows the mesh. Changing a parallelism layout is an edit here, not in the model. A mesh axis that does
not divide a dimension (4 kv heads over 8-way tensor parallelism) is dropped for that tensor, which
replicates it along that axis rather than failing.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("micro_batches", None),
    ("seq", None),
    ("activation_embed", None),
    ("layers", None),
    ("adapters", None),
    ("lora_rank", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
)


class MeshError(ValueError):
    """A mesh shape that the available devices cannot form; the message names the axis sizes."""


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one size may be -1, meaning all remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise MeshError(f"mesh axes {free} are all -1; at most one axis may take the remaining devices")
    if any(size == 0 or size < -1 for size in sizes.values()):
        raise MeshError(f"mesh axis sizes must be positive or -1, got {sizes}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if len(devices) % fixed:
            raise MeshError(f"mesh {sizes}: the fixed axes ({fixed} devices) do not divide {len(devices)} devices")
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise MeshError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, but {len(devices)} are available")
    shape = tuple(sizes[name] for name in MESH_AXES)
    # create_device_mesh orders devices by the physical topology (TPU torus), not just by id.
    return Mesh(mesh_utils.create_device_mesh(shape, devices=devices), MESH_AXES)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
    """The PartitionSpec for one tensor: each logical axis through `rules`, keeping only mesh axes
    that exist, have size > 1, are not used by an earlier dimension, and divide the dimension."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for axis_name, dim in zip(logical_axes, shape, strict=True):
        target = table.get(axis_name) if axis_name is not None else None
        candidates = (target,) if isinstance(target, str) else tuple(target or ())
        chosen = []
        for mesh_axis in candidates:
            size = mesh.shape.get(mesh_axis, 1)
            if size == 1 or mesh_axis in used:
                continue
            if dim % (math.prod(mesh.shape[a] for a in chosen) * size) == 0:
                chosen.append(mesh_axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def named_sharding(logical_axes, shape, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


def tree_shardings(logical_axes_tree, shapes_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for a pytree, given a matching pytree of logical-axis tuples."""
    return jax.tree.map(
        lambda axes, x: named_sharding(axes, x.shape, mesh, rules),
        logical_axes_tree,
        shapes_tree,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_global_batch(local_batch, mesh: Mesh, batch_axis: int = 0, rules=LOGICAL_AXIS_RULES):
    """Host arrays (this process's rows of the global batch) -> global arrays sharded over `batch`.

    On one process this is a sharded device_put; on several, each process passes its own contiguous
    slice of rows and the result is one global array, the layout `jax.distributed` runs expect.
    """
    def put(x):
        x = np.asarray(x)
        axes = [None] * x.ndim
        axes[batch_axis] = "batch"
        global_shape = list(x.shape)
        global_shape[batch_axis] *= jax.process_count()
        sharding = named_sharding(axes, global_shape, mesh, rules)
        return jax.make_array_from_process_local_data(sharding, x, tuple(global_shape))

    return jax.tree.map(put, local_batch)
