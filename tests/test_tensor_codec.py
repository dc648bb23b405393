"""The daemon's torch codec for the unified tensor interface."""

from __future__ import annotations

import pytest
import torch

from engines import tensors
from engines.errors import InvalidArgument


@pytest.mark.parametrize("name", sorted(tensors.DTYPES))
def test_round_trip_every_dtype(name):
    dtype = tensors.DTYPES[name]
    src = (torch.arange(24) % 7).reshape(2, 3, 4).to(dtype)
    data = tensors.encode("x", src)
    assert data.dtype == name and data.shape == (2, 3, 4)
    assert len(data.data) == 24 * src.element_size()
    back = tensors.decode(data)
    assert back.dtype == dtype and torch.equal(back, src)


def test_little_endian_row_major_bytes():
    data = tensors.encode("x", torch.tensor([[1, 2], [3, 256]], dtype=torch.int32))
    assert data.data == bytes([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 1, 0, 0])


def test_scalar_and_empty():
    assert tensors.decode(tensors.encode("s", torch.tensor(3.5))).item() == 3.5
    empty = tensors.decode(tensors.TensorData("e", "FP32", (0, 4), b""))
    assert empty.shape == (0, 4)


@pytest.mark.parametrize("t, field", [
    (tensors.TensorData("feat", "FP32", (2, 2), b"\0" * 15), "inputs[feat].raw_data"),
    (tensors.TensorData("feat", "FP32", (2, -2), b""), "inputs[feat].shape"),
    (tensors.TensorData("feat", "DTYPE_UNSPECIFIED", (1,), b"\0"), "inputs[feat].dtype"),
    (tensors.TensorData("feat", "FP32", (1 << 20, 1 << 10), b""), "inputs[feat].shape"),
])
def test_rejections_name_the_tensor(t, field):
    with pytest.raises(InvalidArgument) as err:
        tensors.decode(t, max_elements=1 << 24)
    assert err.value.field == field
