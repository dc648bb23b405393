"""The daemon side of the unified tensor interface: plain `TensorData` <-> torch.Tensor.

`TensorData` mirrors the protobuf `galactic.v1.Tensor` field for field, so the servicer
translates protobuf to it without touching torch, and engines never see protobuf. Bytes are
row-major little-endian; every check names the tensor, because "byte length mismatch" alone
does not tell a client which of its inputs is wrong.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Sequence

import torch

from engines.errors import InvalidArgument

# dtype name (as in the protobuf DType enum) -> torch dtype
DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}
NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

# Default cap on elements per tensor (256 Mi elements is 1 GiB of FP32): a client typo in a
# shape must not make the daemon allocate the machine's memory.
MAX_ELEMENTS = 1 << 28


def wire_dtype(dtype: str | torch.dtype) -> str:
    """The wire name ("FP32") of a torch dtype or its string ("float32", "torch.float32")."""
    if isinstance(dtype, torch.dtype):
        return NAMES[dtype]
    if dtype in DTYPES:
        return dtype
    return NAMES[getattr(torch, dtype.removeprefix("torch."))]


@dataclass(frozen=True)
class TensorData:
    name: str
    dtype: str  # a key of DTYPES
    shape: tuple[int, ...]
    data: bytes


def _checked(name: str, dtype: str, shape: tuple[int, ...], max_elements: int) -> tuple[str, int]:
    """(field of the tensor, element count) once dtype and shape are valid; raises naming it."""
    field = f"inputs[{name}]" if name else "inputs"
    if dtype not in DTYPES:
        raise InvalidArgument(f"unsupported or unset dtype {dtype!r}", field=f"{field}.dtype")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"negative dimension in shape {list(shape)}", field=f"{field}.shape")
    count = math.prod(shape)
    if count > max_elements:
        raise InvalidArgument(f"{count} elements exceeds the limit of {max_elements}", field=f"{field}.shape")
    return field, count


def decode(t: TensorData, max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """Validate and decode; raises InvalidArgument naming the tensor."""
    field, count = _checked(t.name, t.dtype, t.shape, max_elements)
    dtype = DTYPES[t.dtype]
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(t.data) != count * itemsize:
        raise InvalidArgument(
            f"has {len(t.data)} bytes; shape {list(t.shape)} of {t.dtype} needs {count * itemsize}",
            field=f"{field}.raw_data")
    if count == 0:
        return torch.empty(t.shape, dtype=dtype)
    # bytearray: frombuffer needs a writable buffer to avoid a warning, and the copy keeps
    # the tensor alive independently of the protobuf message.
    flat = torch.frombuffer(bytearray(t.data), dtype=dtype)
    if sys.byteorder == "big" and itemsize > 1:
        flat = flat.view(torch.uint8).view(-1, itemsize).flip(1).reshape(-1).view(dtype)
    return flat.reshape(t.shape)


def from_values(name: str, dtype: str, shape: tuple[int, ...], values: Sequence,
                max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """A tensor from its elements as Python numbers in row-major order (a protocol's typed
    lists, e.g. KServe v2 `fp32_contents`); raises InvalidArgument naming the tensor, with
    field `inputs[name].values` for a count or range mismatch."""
    field, count = _checked(name, dtype, shape, max_elements)
    if len(values) != count:
        raise InvalidArgument(f"has {len(values)} values; shape {list(shape)} needs {count}", field=f"{field}.values")
    try:
        return torch.tensor(list(values), dtype=DTYPES[dtype]).reshape(shape)
    except (RuntimeError, OverflowError, TypeError) as exc:  # e.g. 300 into INT8
        raise InvalidArgument(f"a value does not fit {dtype}: {str(exc)[:120]}", field=f"{field}.values") from None


def to_values(tensor: torch.Tensor) -> list:
    """The elements of `tensor` as Python numbers in row-major order (from_values' inverse)."""
    return tensor.detach().to("cpu").reshape(-1).tolist()


def encode(name: str, tensor: torch.Tensor) -> TensorData:
    if tensor.dtype not in NAMES:
        raise InvalidArgument(f"output dtype {tensor.dtype} has no wire type", field=f"outputs[{name}]")
    t = tensor.detach().to("cpu").contiguous()
    raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    if sys.byteorder == "big" and t.element_size() > 1:
        raw = raw.view(-1, t.element_size()).flip(1).reshape(-1)
    return TensorData(name=name, dtype=NAMES[t.dtype], shape=tuple(t.shape), data=raw.numpy().tobytes())
