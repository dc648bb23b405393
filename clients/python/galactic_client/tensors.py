"""numpy codec for `galactic.v1.Tensor`: row-major, little-endian raw bytes.

numpy is an optional extra (`pip install galactic-client[numpy]`), imported on first use so
that `import galactic_client` works without it. numpy has no bfloat16: BF16 tensors are
encoded from float32 (upper 16 bits, round to nearest even) and decoded to float32.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from galactic.v1 import tensor_pb2

if TYPE_CHECKING:
    import numpy as np

__all__ = ["TensorError", "to_tensor", "from_tensor", "DEFAULT_MAX_ELEMENTS"]

# Matches the daemon's default request limit; a larger tensor is almost always a bug
# (a wrong shape), and decoding it would allocate without bound.
DEFAULT_MAX_ELEMENTS = 1 << 28

# DType -> (numpy dtype string, itemsize). BF16 is decoded via uint16 -> float32.
_CODEC: dict[int, tuple[str, int]] = {
    tensor_pb2.BOOL: ("|b1", 1),
    tensor_pb2.UINT8: ("|u1", 1),
    tensor_pb2.INT8: ("|i1", 1),
    tensor_pb2.INT16: ("<i2", 2),
    tensor_pb2.INT32: ("<i4", 4),
    tensor_pb2.INT64: ("<i8", 8),
    tensor_pb2.FP16: ("<f2", 2),
    tensor_pb2.BF16: ("<u2", 2),
    tensor_pb2.FP32: ("<f4", 4),
    tensor_pb2.FP64: ("<f8", 8),
}
# numpy dtype kind+size -> DType, for encoding.
_FROM_NUMPY: dict[str, int] = {
    "b1": tensor_pb2.BOOL,
    "u1": tensor_pb2.UINT8,
    "i1": tensor_pb2.INT8,
    "i2": tensor_pb2.INT16,
    "i4": tensor_pb2.INT32,
    "i8": tensor_pb2.INT64,
    "f2": tensor_pb2.FP16,
    "f4": tensor_pb2.FP32,
    "f8": tensor_pb2.FP64,
}


class TensorError(ValueError):
    """A tensor that cannot be encoded or decoded; the message names the tensor."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        super().__init__(f"tensor {name!r}: {reason}")


def _numpy():
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("galactic_client tensors need numpy: pip install 'galactic-client[numpy]'") from exc
    return numpy


def _bf16_bits(np, array) -> "np.ndarray":
    """float32 -> upper 16 bits, rounded to nearest even; NaN stays a (quiet) NaN."""
    bits = np.ascontiguousarray(array, dtype="<f4").view("<u4")
    # Adding 0x7FFF plus the lowest kept bit rounds half to even before truncating.
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = np.isnan(np.asarray(array, dtype=np.float32))
    if nan.any():
        rounded = np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x0040), rounded)
    return rounded.astype("<u2")


def to_tensor(name: str, array: Any, *, dtype: int | None = None) -> tensor_pb2.Tensor:
    """Encode an array-like as a Tensor. Pass `dtype=DType.BF16` to send float data as bf16."""
    np = _numpy()
    arr = np.asarray(array)
    if dtype == tensor_pb2.BF16:
        raw = _bf16_bits(np, arr.astype(np.float32, copy=False)).tobytes(order="C")
        return tensor_pb2.Tensor(name=name, dtype=tensor_pb2.BF16, shape=list(arr.shape), raw_data=raw)
    key = f"{arr.dtype.kind}{arr.dtype.itemsize}"
    inferred = _FROM_NUMPY.get(key)
    if dtype is None:
        if inferred is None:
            raise TensorError(name, f"numpy dtype {arr.dtype} has no galactic DType")
        dtype = inferred
    if dtype not in _CODEC:
        raise TensorError(name, f"unsupported dtype {dtype}")
    np_dtype, _ = _CODEC[dtype]
    raw = np.ascontiguousarray(arr, dtype=np_dtype).tobytes(order="C")
    return tensor_pb2.Tensor(name=name, dtype=dtype, shape=list(arr.shape), raw_data=raw)


def from_tensor(tensor: tensor_pb2.Tensor, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> "np.ndarray":
    """Decode a Tensor into a new numpy array (BF16 -> float32), validating it first.

    Raises TensorError for an unknown dtype, a negative dimension, more than `max_elements`
    elements, or raw_data whose length is not product(shape) * itemsize.
    """
    np = _numpy()
    name = tensor.name
    if tensor.dtype not in _CODEC:
        raise TensorError(name, f"unsupported dtype {tensor.dtype} (DTYPE_UNSPECIFIED is never valid)")
    shape = tuple(tensor.shape)
    if any(dim < 0 for dim in shape):
        raise TensorError(name, f"negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if count > max_elements:
        raise TensorError(name, f"{count} elements exceed the limit of {max_elements}")
    np_dtype, itemsize = _CODEC[tensor.dtype]
    expected = count * itemsize
    if len(tensor.raw_data) != expected:
        raise TensorError(
            name, f"raw_data has {len(tensor.raw_data)} bytes, shape {list(shape)} needs {expected}"
        )
    if tensor.dtype == tensor_pb2.BOOL and tensor.raw_data.translate(None, b"\x00\x01"):
        raise TensorError(name, "BOOL bytes must be 0 or 1")
    arr = np.frombuffer(tensor.raw_data, dtype=np_dtype).reshape(shape)
    if tensor.dtype == tensor_pb2.BF16:
        return (arr.astype("<u4") << np.uint32(16)).view("<f4").astype(np.float32)
    # frombuffer views immutable bytes: copy so callers get a writable, native-order array.
    return arr.astype(arr.dtype.newbyteorder("="), copy=True)
