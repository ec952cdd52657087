"""Logical-axis rules: every weight gets a valid PartitionSpec on any mesh the devices allow."""

import jax
import pytest
from jax.sharding import PartitionSpec

from ia_jax.parallel.sharding import MeshError, logical_to_spec, make_mesh


def test_minus_one_takes_the_remaining_devices():
    mesh = make_mesh(data=2, fsdp=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert make_mesh().shape["fsdp"] == len(jax.devices())


@pytest.mark.parametrize("sizes,message", [
    (dict(data=3, fsdp=-1, tensor=1), r"fixed axes \(3 devices\) do not divide 8 devices"),
    (dict(data=2, fsdp=2, tensor=4), r"needs 16 devices, but 8 are available"),
    (dict(data=-1, fsdp=-1, tensor=1), r"are all -1"),
])
def test_impossible_meshes_are_refused(sizes, message):
    with pytest.raises(MeshError, match=message):
        make_mesh(**sizes)


def test_axes_that_do_not_divide_are_replicated():
    mesh = make_mesh(data=1, fsdp=2, tensor=4)
    assert logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (2, 64, 8, 16), mesh) == PartitionSpec(
        None, "fsdp", "tensor", None)
    assert logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (2, 64, 2, 16), mesh) == PartitionSpec(
        None, "fsdp", None, None)
    assert logical_to_spec(("batch", None), (8, 5), make_mesh(data=2, fsdp=4, tensor=1)) == PartitionSpec(
        ("data", "fsdp"), None)
    assert logical_to_spec(("batch", None), (6, 5), make_mesh(data=2, fsdp=4, tensor=1)) == PartitionSpec(
        "data", None)
