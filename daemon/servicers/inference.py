"""Inference service: named tensors in, named tensors out, for every tensor engine."""

from __future__ import annotations

from typing import AsyncIterator, Mapping

from galactic.v1 import inference_pb2 as pb
from galactic.v1 import inference_pb2_grpc, tensor_pb2

from daemon.config import LimitsConfig
from daemon.errors import shorten, to_status
from daemon.servicers import answer_concurrently, deadline_of, pick
from daemon.validation import Bounds
from engines import tensors
from engines.errors import InvalidArgument


def to_tensor_data(t: tensor_pb2.Tensor) -> tensors.TensorData:
    return tensors.TensorData(name=t.name, dtype=tensor_pb2.DType.Name(t.dtype) if t.dtype in
                              tensor_pb2.DType.values() else str(t.dtype), shape=tuple(t.shape), data=t.raw_data)


def to_pb_tensor(t: tensors.TensorData) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(name=t.name, dtype=tensor_pb2.DType.Value(t.dtype), shape=t.shape, raw_data=t.data)


def to_pb_spec(s) -> tensor_pb2.TensorSpec:
    """Any spec with name, dtype (torch or wire name) and shape."""
    return tensor_pb2.TensorSpec(name=s.name, dtype=tensor_pb2.DType.Value(tensors.wire_dtype(s.dtype)), shape=s.shape)


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, engines: Mapping[str, object], max_elements: int = tensors.MAX_ELEMENTS,
                 bounds: Bounds | None = None) -> None:
        self._engines = engines
        self._max_elements = max_elements
        self._bounds = bounds or Bounds(LimitsConfig())

    async def Infer(self, request: pb.InferRequest, context) -> pb.InferResponse:
        return await self._infer(request, deadline_of(context))

    async def InferStream(self, request_iterator, context) -> AsyncIterator[pb.InferStreamResponse]:
        # Answers may leave out of order (requests are batched together), tagged by id.
        deadline = deadline_of(context)

        async def handle(req: pb.InferRequest) -> pb.InferStreamResponse:
            self._bounds.check(req)  # unary requests were bounded by the interceptor
            return pb.InferStreamResponse(request_id=req.request_id, response=await self._infer(req, deadline))

        def on_error(req: pb.InferRequest, exc: Exception) -> pb.InferStreamResponse:
            rid = shorten(req.request_id, self._bounds.limits.max_id_chars)
            return pb.InferStreamResponse(request_id=rid, error=to_status(exc))

        async for frame in answer_concurrently(request_iterator, handle, on_error):
            yield frame

    async def _infer(self, request: pb.InferRequest, deadline: float | None) -> pb.InferResponse:
        engine = pick(self._engines, request.model)
        if request.version and request.version != engine.version:
            raise InvalidArgument(f"version {request.version!r} is not loaded (serving {engine.version!r})",
                                  field="version")
        inputs = {}
        for t in request.inputs:
            if t.name in inputs:
                raise InvalidArgument("duplicate input name", field=f"inputs[{t.name}]")
            inputs[t.name] = tensors.decode(to_tensor_data(t), self._max_elements)
        outputs = await engine.infer(inputs, deadline=deadline)
        return pb.InferResponse(
            model=engine.name, version=engine.version, request_id=request.request_id,
            outputs=[to_pb_tensor(tensors.encode(name, value)) for name, value in outputs.items()])
