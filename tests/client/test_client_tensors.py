"""numpy <-> galactic.v1.Tensor: round trips for every dtype, and the rejections."""

import numpy as np
import pytest

from galactic.v1 import tensor_pb2
from galactic_client import TensorError, from_tensor, to_tensor

ARRAYS = {
    tensor_pb2.BOOL: np.array([[True, False], [False, True]]),
    tensor_pb2.UINT8: np.array([0, 7, 255], dtype=np.uint8),
    tensor_pb2.INT8: np.array([-128, 0, 127], dtype=np.int8),
    tensor_pb2.INT16: np.array([[-32768], [32767]], dtype=np.int16),
    tensor_pb2.INT32: np.arange(-6, 6, dtype=np.int32).reshape(3, 2, 2),
    tensor_pb2.INT64: np.array([-(2**62), 2**62], dtype=np.int64),
    tensor_pb2.FP16: np.array([0.5, -2.0, 65504.0], dtype=np.float16),
    tensor_pb2.FP32: np.array([[1.5, -0.25, np.inf]], dtype=np.float32),
    tensor_pb2.FP64: np.array(3.141592653589793),  # a scalar: shape ()
}


@pytest.mark.parametrize("dtype", list(ARRAYS), ids=tensor_pb2.DType.Name)
def test_round_trip(dtype):
    array = ARRAYS[dtype]
    tensor = to_tensor("x", array)
    assert tensor.dtype == dtype
    assert list(tensor.shape) == list(array.shape)
    assert len(tensor.raw_data) == array.size * array.itemsize
    decoded = from_tensor(tensor)
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)
    decoded.flat[0] = decoded.flat[0]  # writable, not a view of the message's bytes


def test_bytes_are_little_endian_row_major():
    tensor = to_tensor("x", np.array([[1, 2], [3, 4]], dtype=">i4"))  # big-endian input
    assert tensor.raw_data == b"".join(v.to_bytes(4, "little") for v in (1, 2, 3, 4))
    fortran = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    np.testing.assert_array_equal(from_tensor(to_tensor("f", fortran)), fortran)


def test_bf16_round_trip_and_rounding():
    exact = np.array([1.0, -2.5, 0.0, 2.0**127, -(2.0**-126), np.inf], dtype=np.float32)  # bf16-representable
    tensor = to_tensor("h", exact, dtype=tensor_pb2.BF16)
    assert tensor.dtype == tensor_pb2.BF16 and len(tensor.raw_data) == 2 * exact.size
    assert tensor.raw_data[:2] == b"\x80\x3f"  # 1.0 is 0x3F80
    decoded = from_tensor(tensor)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, exact)
    # 1 + 2**-8 lies halfway between bf16 neighbours 1 and 1 + 2**-7: ties go to even (1.0);
    # 1 + 3 * 2**-8 is halfway between 1 + 2**-7 and 1 + 2**-6: even is 1 + 2**-6.
    halfway = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20], dtype=np.float32)
    np.testing.assert_array_equal(
        from_tensor(to_tensor("h", halfway, dtype=tensor_pb2.BF16)), [1.0, 1 + 2**-6, 1 + 2**-7]
    )
    assert np.isnan(from_tensor(to_tensor("h", np.array([np.nan], np.float32), dtype=tensor_pb2.BF16))).all()


@pytest.mark.parametrize(
    "tensor, match",
    [
        (tensor_pb2.Tensor(name="feats", dtype=tensor_pb2.FP32, shape=[2, 3], raw_data=b"\0" * 20), "24"),
        (tensor_pb2.Tensor(name="feats", dtype=tensor_pb2.INT8, shape=[2, -1], raw_data=b""), "negative"),
        (tensor_pb2.Tensor(name="feats", dtype=tensor_pb2.UINT8, shape=[1000, 1000], raw_data=b""), "exceed"),
        (tensor_pb2.Tensor(name="feats", shape=[1], raw_data=b"\0"), "dtype"),
        (tensor_pb2.Tensor(name="feats", dtype=tensor_pb2.BOOL, shape=[2], raw_data=b"\x01\x02"), "0 or 1"),
    ],
    ids=["length", "negative-dim", "too-many", "unspecified-dtype", "bool-byte"],
)
def test_rejections_name_the_tensor(tensor, match):
    with pytest.raises(TensorError, match=match) as info:
        from_tensor(tensor, max_elements=10_000)
    assert "'feats'" in str(info.value) and isinstance(info.value, ValueError)


def test_unencodable_dtype_names_the_tensor():
    with pytest.raises(TensorError, match="'words'"):
        to_tensor("words", np.array(["a", "b"]))


async def test_infer_round_trip(client):
    """numpy in, numpy out through the real Inference service (the coordination model)."""
    n_features = next(list(t.shape) for t in (await client.get_model("coordination")).inputs if t.name == "features")[1]
    inputs = {"features": np.zeros((3, n_features), dtype=np.float32), "site": np.array([0, 1, 2], dtype=np.int64)}
    outputs = await client.infer("coordination", inputs)
    assert set(outputs) == {"p_success", "expected_snr"}
    for array in outputs.values():
        assert array.dtype == np.float32 and array.shape == (3,) and np.isfinite(array).all()
    assert ((outputs["p_success"] >= 0) & (outputs["p_success"] <= 1)).all()
    # The same rows score the same, alone or batched with others.
    alone = await client.infer("coordination", {k: v[1:2] for k, v in inputs.items()})
    np.testing.assert_allclose(alone["p_success"], outputs["p_success"][1:2], rtol=1e-5)
