"""KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`): a front end that
translates, nothing else (STYLE habit 17).

Tensor engines (those behind `galactic.v1.Inference`, the coordination model today) answer
`ModelInfer` exactly as `Inference.Infer` does: the same `engine.infer()` call, so the same
dynamic batcher, validation and errors. Each coordination model also answers as
`<name>-coordinate`, a whole `Coordinate` step with one tensor per field
(`kserve_coordination.py`), through the same `engine.coordinate()` call. The LLM answers as Triton's vLLM backend does
(inputs `text_input`, `stream`, `sampling_parameters`, `exclude_input_in_output`; output
`text_output`), so clients written for that backend work unchanged: `ModelStreamInfer`
sends one response per engine chunk and a last one carrying `triton_final_response = true`;
`ModelInfer` answers the whole text. Every LLM request reaches the engine through
`tenants.bind` (the tenant's fairness key and token meter), as the native front end's do.

Errors leave through the one boundary: the interceptor for a whole call, `to_status()` for
an error response inside `ModelStreamInfer` (its `error_message`; the stream lives on).
Fields are named as this protocol spells them: `inputs[features].datatype`,
`raw_input_contents[1]`, `sampling_parameters.max_tokens`.

Answers come back the way the request came: raw inputs (what tritonclient sends) get
`raw_output_contents`, typed `contents` get typed contents (unless an output's datatype has no
typed list, FP16 and BF16: then all outputs are raw, as the specification requires).
"""

from __future__ import annotations

import contextlib
import json
import struct
import uuid
from importlib import metadata
from typing import AsyncIterator, Mapping

import grpc
import structlog
from opentelemetry import context as otel_context

from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc

from daemon import tenants
from daemon.errors import shorten, to_status
from daemon.servicers import deadline_of, kserve_coordination as coordinate, pick, write_concurrently
from daemon.validation import Bounds
from engines import tensors
from engines.errors import GalacticError, InvalidArgument, NotFound, Unavailable
from engines.llm.types import Constraint, FinalOutput, GenerationRequest, SamplingParams, TokenChunk

log = structlog.get_logger("galacticd.kserve")
TENSOR_SERVICE = "galactic.v1.Inference"
LLM_SERVICE = "galactic.v1.Generation"
FINAL = "triton_final_response"

# Datatype -> the typed list of InferTensorContents that carries it (FP16 and BF16 have none).
TYPED = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
         "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
         "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}

# The LLM's tensors, as Triton's vLLM backend declares them: name -> (datatype, shape).
LLM_INPUTS = {"text_input": ("BYTES", (1,)), "stream": ("BOOL", (1,)), "sampling_parameters": ("BYTES", (1,)),
              "exclude_input_in_output": ("BOOL", (1,)), "return_finish_reason": ("BOOL", (1,)),
              "return_num_input_tokens": ("BOOL", (1,)), "return_num_output_tokens": ("BOOL", (1,))}
LLM_OUTPUTS = {"text_output": ("BYTES", (-1,)), "finish_reason": ("BYTES", (-1,)),
               "num_input_tokens": ("UINT32", (1,)), "num_output_tokens": ("UINT32", (-1,))}
# vLLM's names for why a generation ended.
FINISH_REASONS = {"LENGTH": "length", "EOS": "stop", "STOP_SEQUENCE": "stop", "CANCELLED": "abort",
                  "DEADLINE": "abort"}

# sampling_parameters (vLLM's SamplingParams names) -> (SamplingParams field, type). vLLM's own
# clients send numbers as strings ({"temperature": "0.1"}); the backend converts, so do we.
SAMPLING = {"max_tokens": ("max_new_tokens", int), "temperature": ("temperature", float),
            "top_p": ("top_p", float), "top_k": ("top_k", int), "seed": ("seed", int),
            "repetition_penalty": ("repetition_penalty", float), "ignore_eos": ("ignore_eos", bool)}
# Request parameters that Triton itself reads (scheduling, sequences), never sampling ones.
TRITON_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                               "triton_enable_empty_final_response", "binary_data_output"})
# Accepted only at the value that leaves the answer as galactic makes it.
NEUTRAL = {"n": 1, "best_of": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0, "min_tokens": 0}
# Engine field -> how this protocol names it, so an error points at what the client sent.
_LLM_FIELDS = {f"sampling.{ours}": f"sampling_parameters.{theirs}" for theirs, (ours, _) in SAMPLING.items()}
_LLM_FIELDS.update({f"constraint{kind}": "sampling_parameters.guided_decoding"
                    for kind in ("", ".json_schema", ".json_object", ".regex", ".grammar")})
_LLM_FIELDS.update({"sampling.stop": "sampling_parameters.stop", "prompt": "inputs[text_input]",
                    "adapter": "sampling_parameters.lora_name"})


def _version() -> str:
    try:
        return metadata.version("galactic")
    except metadata.PackageNotFoundError:
        return ""


# -- tensors in ---------------------------------------------------------------------------

def _read_bytes(raw: bytes, count: int, field: str) -> list[bytes]:
    """BYTES elements from their raw form: each a 4-byte little-endian length, then the bytes."""
    items, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidArgument("a BYTES element's 4-byte length is cut short", field=field)
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            raise InvalidArgument(f"a BYTES element of {n} bytes runs past the end", field=field)
        items.append(raw[at + 4:at + 4 + n])
        at += 4 + n
    if len(items) != count:
        raise InvalidArgument(f"has {len(items)} BYTES elements; the shape needs {count}", field=field)
    return items


def _write_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _named_inputs(req: pb.ModelInferRequest) -> dict[str, tuple[int, pb.ModelInferRequest.InferInputTensor]]:
    """name -> (index, tensor), checking what the specification asks of the request's form."""
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidArgument(f"{len(raw)} entries for {len(req.inputs)} inputs (one per input, in order)",
                              field="raw_input_contents")
    named = {}
    for i, t in enumerate(req.inputs):
        if t.name in named:
            raise InvalidArgument("duplicate input name", field=f"inputs[{t.name}]")
        if raw and t.HasField("contents"):
            raise InvalidArgument("set either contents or raw_input_contents, not both",
                                  field=f"inputs[{t.name}].contents")
        named[t.name] = (i, t)
    return named


def _rename(exc: InvalidArgument, name: str, index: int) -> InvalidArgument:
    """The codec's field names (galactic.v1.Tensor's) as this protocol spells them."""
    exc.field = {f"inputs[{name}].dtype": f"inputs[{name}].datatype",
                 f"inputs[{name}].raw_data": f"raw_input_contents[{index}]",
                 f"inputs[{name}].values": f"inputs[{name}].contents"}.get(exc.field, exc.field)
    return exc


def _decode(req: pb.ModelInferRequest, index: int, t, max_elements: int):
    """One input as a torch tensor, through the native codec (engines/tensors.py)."""
    shape = tuple(t.shape)
    try:
        if req.raw_input_contents:
            data = tensors.TensorData(t.name, t.datatype, shape, req.raw_input_contents[index])
            return tensors.decode(data, max_elements)
        typed = TYPED.get(t.datatype)
        if typed is None and t.datatype in tensors.DTYPES:
            raise InvalidArgument(f"{t.datatype} travels only in raw_input_contents",
                                  field=f"inputs[{t.name}].contents")
        values = getattr(t.contents, typed) if typed else ()
        return tensors.from_values(t.name, t.datatype, shape, values, max_elements)
    except InvalidArgument as exc:
        raise _rename(exc, t.name, index) from None


def _elements(req: pb.ModelInferRequest, index: int, t, datatype: str) -> list:
    """The elements of one small control input (the LLM's), checked against its datatype."""
    if t.datatype != datatype:
        raise InvalidArgument(f"must be {datatype}, got {shorten(t.datatype)!r}", field=f"inputs[{t.name}].datatype")
    count = 1
    for d in t.shape:
        count *= d
    if any(d < 0 for d in t.shape) or count != 1:
        raise InvalidArgument(f"must hold one element (shape [1]), got shape {list(t.shape)}",
                              field=f"inputs[{t.name}].shape")
    if datatype == "BOOL":
        # The common forms read directly: a torch tensor per flag would cost more than the
        # rest of the request's parsing. Any other form takes the codec, and its errors.
        if req.raw_input_contents:
            raw = req.raw_input_contents[index]
            if len(raw) == 1:
                return [raw[0] != 0]
        elif len(t.contents.bool_contents) == 1:
            return [t.contents.bool_contents[0]]
    if datatype != "BYTES":
        return tensors.to_values(_decode(req, index, t, 1))
    if req.raw_input_contents:
        return _read_bytes(req.raw_input_contents[index], count, f"raw_input_contents[{index}]")
    values = list(t.contents.bytes_contents)
    if len(values) != count:
        raise InvalidArgument(f"has {len(values)} values; the shape needs {count}", field=f"inputs[{t.name}].contents")
    return values


def _column(req: pb.ModelInferRequest, index: int, t, datatype: str, shape: tuple[int, ...], max_elements: int):
    """One input of a columnar model (one value per row): a numpy array, or for BYTES a list
    of str, checked against its datatype and one-dimensional shape (-1: any length)."""
    field = f"inputs[{t.name}]"
    if t.datatype != datatype:
        raise InvalidArgument(f"must be {datatype}, got {shorten(t.datatype)!r}", field=f"{field}.datatype")
    dims = tuple(t.shape)
    if len(dims) != 1 or dims[0] < 0 or dims[0] > max_elements or shape[0] not in (-1, dims[0]):
        raise InvalidArgument(f"must have shape {list(shape)}, got {list(dims)}", field=f"{field}.shape")
    if datatype != "BYTES":
        return _decode(req, index, t, max_elements).numpy()
    if req.raw_input_contents:
        items = _read_bytes(req.raw_input_contents[index], dims[0], f"raw_input_contents[{index}]")
    else:
        items = t.contents.bytes_contents
        if len(items) != dims[0]:
            raise InvalidArgument(f"has {len(items)} values; the shape needs {dims[0]}", field=f"{field}.contents")
    try:
        return [b.decode() for b in items]
    except UnicodeDecodeError:
        bad = next(i for i, b in enumerate(items) if not _utf8(b))
        raise InvalidArgument("is not UTF-8 text", field=f"{field}[{bad}]") from None


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


# -- tensors out --------------------------------------------------------------------------

def _respond(req: pb.ModelInferRequest, model: str, version: str,
             outputs: list[tuple[str, str, tuple[int, ...], object]]) -> pb.ModelInferResponse:
    """outputs: (name, datatype, shape, value), value an engine's tensor, or for the LLM's
    outputs a list of bytes (BYTES) or of ints (UINT32)."""
    resp = pb.ModelInferResponse(model_name=model, model_version=version, id=req.id)
    raw = bool(req.raw_input_contents) or not req.inputs or any(TYPED.get(d) is None for _, d, _, _ in outputs)
    for name, datatype, shape, value in outputs:
        out = resp.outputs.add(name=name, datatype=datatype, shape=shape)
        if isinstance(value, list):
            if raw:
                resp.raw_output_contents.append(_write_bytes(value) if datatype == "BYTES"
                                                else struct.pack(f"<{len(value)}I", *value))
            else:
                getattr(out.contents, TYPED[datatype]).extend(value)
        elif raw:
            resp.raw_output_contents.append(tensors.encode(name, value).data)
        else:
            getattr(out.contents, TYPED[datatype]).extend(tensors.to_values(value))
    return resp


def _selected(req: pb.ModelInferRequest, available: list[str], model: str) -> list[str]:
    """The outputs the request asks for, in its order; all of them when it names none."""
    wanted = [o.name for o in req.outputs]
    for i, name in enumerate(wanted):
        if name not in available:
            raise InvalidArgument(f"{model} has no output {shorten(name)!r} (outputs: {', '.join(available)})",
                                  field=f"outputs[{i}].name")
        if name in wanted[:i]:
            raise InvalidArgument("output requested twice", field=f"outputs[{i}].name")
    return wanted or available


# -- the LLM ------------------------------------------------------------------------------

def _sampling(params: object) -> tuple[SamplingParams, str | None]:
    """vLLM's sampling parameters -> ours and the adapter (`lora_name`); anything that would
    change the answer and galactic does not do is refused, naming it, never ignored."""
    if not isinstance(params, dict):
        raise InvalidArgument("must be a JSON object", field="inputs[sampling_parameters]")
    values: dict = {}
    adapter = None
    for key, value in params.items():
        field = f"sampling_parameters.{shorten(str(key))}"
        if key in SAMPLING:
            ours, kind = SAMPLING[key]
            try:
                if kind is bool:
                    if isinstance(value, str) and value.lower() in ("true", "false"):
                        value = value.lower() == "true"
                    if not isinstance(value, bool):
                        raise ValueError(value)
                    values[ours] = value
                elif kind is int:  # 12, 12.0 or "12", as vLLM's int() takes them; not 1.5 or true
                    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                        raise ValueError(value)
                    values[ours] = int(value)
                    if not -2**63 <= values[ours] < 2**63:  # what the native protocol's int64 carries
                        raise ValueError(value)
                else:
                    values[ours] = float(value)
            except (TypeError, ValueError, OverflowError):
                raise InvalidArgument(f"must be {kind.__name__}, got {shorten(repr(value))}", field=field) from None
        elif key == "stop":
            stop = [value] if isinstance(value, str) else value
            if not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
                raise InvalidArgument("must be a string or a list of strings", field=field)
            values["stop"] = tuple(stop)
        elif key == "lora_name":
            adapter = str(value) or None
        elif key == "guided_decoding":
            values["constraint"] = _guided(value, field)
        elif key in NEUTRAL:
            try:
                neutral = float(value) == NEUTRAL[key]
            except (TypeError, ValueError):
                neutral = False
            if not neutral:
                raise InvalidArgument(f"only {NEUTRAL[key]} is supported", field=field)
        else:
            raise InvalidArgument(f"not supported (supported: {', '.join([*SAMPLING, 'stop', 'lora_name', *NEUTRAL])})",
                                  field=field)
    if values.get("top_k") == -1:  # vLLM's "off"
        values["top_k"] = 0
    return SamplingParams(**values), adapter


class _LLMCall:
    """One ModelInferRequest for the LLM, read as the vLLM backend reads it."""

    def __init__(self, model: str, req: pb.ModelInferRequest, deadline: float | None, max_prompt_chars: int) -> None:
        self.req = req
        self.wanted = _selected(req, list(LLM_OUTPUTS), model)  # checked before any work starts
        named = _named_inputs(req)
        for name in named:
            if name not in LLM_INPUTS:
                raise InvalidArgument(f"not an input of this model (inputs: {', '.join(LLM_INPUTS)})",
                                      field=f"inputs[{shorten(name)}]")
        if "text_input" not in named:
            raise InvalidArgument("missing input", field="inputs[text_input]")
        one = {name: _elements(req, i, t, LLM_INPUTS[name][0])[0] for name, (i, t) in named.items()}
        try:
            prompt = one["text_input"].decode()
        except UnicodeDecodeError:
            raise InvalidArgument("is not UTF-8 text", field="inputs[text_input]") from None
        if len(prompt) > max_prompt_chars:
            raise InvalidArgument(f"{len(prompt)} characters exceed the limit of {max_prompt_chars}",
                                  field="inputs[text_input]")
        self.stream = bool(one.get("stream", False))
        # The vLLM backend prepends the prompt to a whole answer unless told not to; a
        # stream never carries it.
        self.prepend = not one.get("exclude_input_in_output", self.stream)
        if self.prepend and self.stream:
            raise InvalidArgument("must be true when streaming", field="inputs[exclude_input_in_output]")
        self.extra = {name for name in ("finish_reason", "num_input_tokens", "num_output_tokens")
                      if one.get(f"return_{name}", False)}
        if "sampling_parameters" in one:
            try:
                params = json.loads(one["sampling_parameters"])
            except (UnicodeDecodeError, ValueError):
                raise InvalidArgument("is not JSON", field="inputs[sampling_parameters]") from None
        else:  # the vLLM backend's other way: the request's own parameters
            params = {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
                      for key, value in req.parameters.items() if key not in TRITON_PARAMETERS}
        sampling, adapter = _sampling(params)
        self.prompt = prompt
        self._chunk: pb.ModelStreamInferResponse | None = None  # what every streamed chunk shares
        self._raw = False
        self.request = GenerationRequest(request_id=uuid.uuid4().hex, prompt=prompt, adapter=adapter,
                                         sampling=sampling, deadline=deadline,
                                         trace_context=otel_context.get_current())

    def start(self, engine):
        """engine.generate() for the calling tenant (tenants.bind: its fairness key and
        token meter), engine errors naming this protocol's fields."""
        try:
            return engine.generate(tenants.bind(self.request))
        except GalacticError as exc:
            exc.field = _LLM_FIELDS.get(exc.field, exc.field)
            raise

    def response(self, model: str, version: str, text: str, final: FinalOutput | None,
                 completion_tokens: int, is_final: bool | None) -> pb.ModelInferResponse:
        outputs = [("text_output", "BYTES", (1,), [text.encode()])]
        if final is not None:
            if "finish_reason" in self.extra:
                outputs.append(("finish_reason", "BYTES", (1,), [FINISH_REASONS[final.finish_reason.name].encode()]))
            if "num_input_tokens" in self.extra:
                outputs.append(("num_input_tokens", "UINT32", (1,), [final.prompt_tokens]))
        if "num_output_tokens" in self.extra:
            outputs.append(("num_output_tokens", "UINT32", (1,), [completion_tokens]))
        resp = _respond(self.req, model, version, [o for o in outputs if o[0] in self.wanted])
        if is_final is not None:
            resp.parameters[FINAL].bool_param = is_final
        return resp

    def chunk(self, model: str, version: str, text: str, completion_tokens: int) -> pb.ModelStreamInferResponse:
        """A streamed chunk before the last, as `response(.., None, .., False)` makes it, in its
        ModelStreamInferResponse. All but the text and token count (names, datatypes, shapes,
        the final flag, the id) is the same in every chunk: built on the first and copied,
        which costs about a sixth of building each chunk whole."""
        if self._chunk is None:
            frame = pb.ModelStreamInferResponse()
            frame.infer_response.CopyFrom(self.response(model, version, "", None, 0, False))
            self._raw = bool(frame.infer_response.raw_output_contents)
            del frame.infer_response.raw_output_contents[:]
            for out in frame.infer_response.outputs:
                out.ClearField("contents")
            self._chunk = frame
        frame = pb.ModelStreamInferResponse()
        frame.CopyFrom(self._chunk)
        resp = frame.infer_response
        for out in resp.outputs:  # text_output and num_output_tokens, those the request wants
            if out.name == "text_output":
                data = text.encode()
                if self._raw:
                    resp.raw_output_contents.append(struct.pack("<I", len(data)) + data)
                else:
                    out.contents.bytes_contents.append(data)
            elif self._raw:
                resp.raw_output_contents.append(struct.pack("<I", completion_tokens))
            else:
                out.contents.uint_contents.append(completion_tokens)
        return frame


class KServeServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Serves every tensor engine and LLM of the daemon, by the request's model name."""

    def __init__(self, engines: Mapping[str, object], admission, bounds: Bounds) -> None:
        self._engines = dict(engines)
        # The rest are tensor engines (TENSOR_SERVICE): the daemon mounts this over no others.
        self._llms = {n: e for n, e in engines.items() if LLM_SERVICE in e.info().services}
        # `<name>-coordinate`: a whole Coordinate step as tensors (kserve_coordination.py).
        self._coordinate_models = coordinate.model_names(engines)
        self._admission = admission
        self._bounds = bounds
        self._server_version = _version()

    # -- health and metadata --------------------------------------------------------------
    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        a = self._admission
        ready = a.ready and not a.draining and all(self._ready(e) for e in self._engines.values())
        return pb.ServerReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="galactic", version=self._server_version)

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        # An unknown model or version is "not ready", as Triton answers it.
        engine = self._engines.get(request.name) or self._coordinate_models.get(request.name)
        ready = engine is not None and self._ready(engine) and request.version in ("", engine.version)
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        engine, version = self._pick(request.name, request.version, "name", "version")
        meta = pb.ModelMetadataResponse
        if request.name in self._coordinate_models:
            resp = meta(name=request.name, versions=[version], platform="galactic_coordination")
            resp.inputs.extend(meta.TensorMetadata(name=n, datatype=d, shape=s)
                               for n, (d, s, _) in coordinate.INPUTS.items())
            resp.outputs.extend(meta.TensorMetadata(name=n, datatype=d, shape=s)
                                for n, (d, s) in coordinate.OUTPUTS.items())
            return resp
        resp = meta(name=engine.name, versions=[version], platform=f"galactic_{engine.info().kind}")
        if engine.name in self._llms:
            resp.inputs.extend(meta.TensorMetadata(name=n, datatype=d, shape=s) for n, (d, s) in LLM_INPUTS.items())
            resp.outputs.extend(meta.TensorMetadata(name=n, datatype=d, shape=s) for n, (d, s) in LLM_OUTPUTS.items())
        else:
            resp.inputs.extend(meta.TensorMetadata(name=s.name, datatype=tensors.wire_dtype(s.dtype), shape=s.shape)
                               for s in engine.input_spec())
            resp.outputs.extend(meta.TensorMetadata(name=s.name, datatype=tensors.wire_dtype(s.dtype), shape=s.shape)
                                for s in engine.output_spec())
        return resp

    # -- inference ------------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        frames = [frame async for frame in self._infer(request, deadline_of(context), streaming=False)]
        return frames[-1]

    async def ModelStreamInfer(self, request_iterator, context) -> None:
        # Requests run concurrently (the engines batch them); responses leave as they are
        # made, each naming its request's id, written by the request's own task.
        deadline = deadline_of(context)

        def handle(req: pb.ModelInferRequest) -> AsyncIterator[pb.ModelStreamInferResponse]:
            # Called as the request arrives: an LLM request is checked and queued with the
            # engine now, so requests that arrive together share a prefill step (a task's
            # first turn later, a burst of 32 streams split over three). Its error, if any,
            # becomes the request's error frame.
            return self._begin(req, deadline, streaming=True)

        def on_error(req: pb.ModelInferRequest, exc: Exception) -> pb.ModelStreamInferResponse:
            status = to_status(exc)
            if status.code == grpc.StatusCode.INTERNAL.value[0]:  # a bug: its traceback goes to the log
                log.error("stream request failed", exc_info=exc)
            rid = shorten(req.id, self._bounds.limits.max_id_chars)
            resp = pb.ModelInferResponse(model_name=shorten(req.model_name, self._bounds.limits.max_name_chars),
                                         model_version=shorten(req.model_version), id=rid)
            resp.parameters[FINAL].bool_param = True
            return pb.ModelStreamInferResponse(error_message=status.message, infer_response=resp)

        # Draining: requests still arriving are refused, and the stream ends once those it
        # holds have finished.
        draining = self._admission.drain_started
        await write_concurrently(request_iterator, handle, on_error, context.write, until=draining)

    async def _infer(self, req: pb.ModelInferRequest, deadline: float | None,
                     streaming: bool) -> AsyncIterator[pb.ModelInferResponse | pb.ModelStreamInferResponse]:
        """The responses to one request: ModelInferResponses for ModelInfer, each in its
        ModelStreamInferResponse when `streaming` (ModelStreamInfer)."""
        async with contextlib.aclosing(self._begin(req, deadline, streaming)) as frames:
            async for resp in frames:
                yield resp

    def _begin(self, req: pb.ModelInferRequest, deadline: float | None,
               streaming: bool) -> AsyncIterator[pb.ModelInferResponse | pb.ModelStreamInferResponse]:
        """`_infer`'s responses, with the checks done and an LLM request queued with its
        engine before this returns (raising what they raise); a tensor model's work starts
        at the first response."""
        if streaming:
            if self._admission.draining:
                raise Unavailable("server is draining; retry on another host")
            self._bounds.check(req)  # unary requests were bounded by the interceptor
        engine, version = self._pick(req.model_name, req.model_version, "model_name", "model_version")
        if engine.name in self._llms:
            call = _LLMCall(engine.name, req, deadline, self._bounds.limits.max_prompt_chars)
            if call.stream and not streaming:
                raise InvalidArgument("streaming needs ModelStreamInfer; ModelInfer answers the whole text",
                                      field="inputs[stream]")
            stream = call.start(engine)
            return _Queued(self._generate(engine, version, call, stream, streaming), stream)
        return self._tensor(engine, version, req, deadline, streaming)

    async def _tensor(self, engine, version: str, req: pb.ModelInferRequest, deadline: float | None,
                      streaming: bool) -> AsyncIterator[pb.ModelInferResponse | pb.ModelStreamInferResponse]:
        if req.model_name in self._coordinate_models:
            resp = await self._coordinate_step(engine, version, req, deadline)
            yield _framed(resp, streaming)
            return
        named = _named_inputs(req)
        max_elements = self._bounds.limits.max_tensor_elements
        inputs = {name: _decode(req, i, t, max_elements) for name, (i, t) in named.items()}
        wanted = _selected(req, [s.name for s in engine.output_spec()], engine.name)
        outputs = await engine.infer(inputs, deadline=deadline)
        resp = _respond(req, engine.name, version,
                        [(n, tensors.wire_dtype(outputs[n].dtype), tuple(outputs[n].shape), outputs[n]) for n in wanted])
        yield _framed(resp, streaming)

    @staticmethod
    async def _generate(engine, version: str, call: "_LLMCall", stream,
                        streaming: bool) -> AsyncIterator[pb.ModelInferResponse | pb.ModelStreamInferResponse]:
        final_flag = True if streaming else None  # Triton marks every response of a decoupled model
        parts: list[str] = []
        tokens = 0
        try:
            async for out in stream:
                if isinstance(out, TokenChunk):
                    tokens += len(out.token_ids)
                    if call.stream:  # only ModelStreamInfer gets here
                        yield call.chunk(engine.name, version, out.text, len(out.token_ids))
                    else:
                        parts.append(out.text)
                elif call.stream:
                    yield _framed(call.response(engine.name, version, "", out, 0, True), streaming)
                else:
                    text = (call.prompt if call.prepend else "") + "".join(parts)
                    yield _framed(call.response(engine.name, version, text, out, tokens, final_flag), streaming)
        except GalacticError as exc:  # an adapter's on-demand load fails in the stream
            exc.field = _LLM_FIELDS.get(exc.field, exc.field)
            raise
        finally:
            stream.close()

    async def _coordinate_step(self, engine, version: str, req: pb.ModelInferRequest,
                               deadline: float | None) -> pb.ModelInferResponse:
        """`<name>-coordinate`: the inputs as the engine's columns, engine.coordinate(), the
        result's columns as outputs."""
        wanted = _selected(req, list(coordinate.OUTPUTS), req.model_name)
        named = _named_inputs(req)
        for name in named:
            if name not in coordinate.INPUTS:
                raise InvalidArgument(f"not an input of this model (inputs: {', '.join(coordinate.INPUTS)})",
                                      field=f"inputs[{shorten(name)}]")
        for name, (_, _, required) in coordinate.INPUTS.items():
            if required and name not in named:
                raise InvalidArgument("missing input", field=f"inputs[{name}]")
        max_elements = self._bounds.limits.max_tensor_elements
        values = {name: _column(req, i, t, *coordinate.INPUTS[name][:2], max_elements)
                  for name, (i, t) in named.items()}
        try:
            result = await engine.coordinate(coordinate.request(values, req.id), deadline=deadline)
        except GalacticError as exc:
            raise coordinate.rename(exc) from None
        outs = coordinate.outputs(result)
        return _respond(req, req.model_name, version,
                        [(n, coordinate.OUTPUTS[n][0], tuple(outs[n].shape), outs[n]) for n in wanted])

    # -- helpers --------------------------------------------------------------------------
    def _pick(self, name: str, version: str, name_field: str, version_field: str):
        engine = self._coordinate_models.get(name) or pick(self._engines, name, field=name_field)
        served = engine.version
        if version and version != served:
            raise NotFound(f"version {shorten(version)!r} of {engine.name} is not loaded (serving {served!r})",
                           field=version_field)
        return engine, served

    @staticmethod
    def _ready(engine) -> bool:
        return engine.info().state == "ready"


class _Queued:
    """The responses of an LLM request already queued with its engine (`_generate(...)`,
    whose stream `call.start` returned). Closing it cancels the request even if no response
    was asked for: an async generator closed before it started never runs its `finally`."""

    def __init__(self, frames, stream) -> None:
        self._frames, self._stream = frames, stream

    def __aiter__(self) -> "_Queued":
        return self

    def __anext__(self):
        return self._frames.__anext__()

    async def aclose(self) -> None:
        try:
            await self._frames.aclose()
        finally:
            self._stream.close()


def _framed(resp: pb.ModelInferResponse, streaming: bool) -> pb.ModelInferResponse | pb.ModelStreamInferResponse:
    """A response as ModelInfer returns it, or in its ModelStreamInferResponse for ModelStreamInfer."""
    return pb.ModelStreamInferResponse(infer_response=resp) if streaming else resp


def _guided(value: object, field: str) -> Constraint | None:
    """vLLM's `guided_decoding` ({"json": schema}, {"json_object": true}, {"regex": ...} or
    {"grammar": ...}: one of them) -> the engine's constraint, which the engine compiles."""
    if not isinstance(value, dict) or len([k for k, v in value.items() if v not in (None, False)]) > 1:
        raise InvalidArgument("must be an object with one of json, json_object, regex, grammar", field=field)
    for key, v in value.items():
        if v in (None, False):
            continue
        if key == "json":
            return Constraint("json_schema", v if isinstance(v, str) else json.dumps(v))
        if key == "json_object" and v is True:
            return Constraint("json_object")
        if key in ("regex", "grammar") and isinstance(v, str):
            return Constraint(key, v)
        raise InvalidArgument(f"{shorten(str(key))}: not supported (json, json_object, regex, grammar)", field=field)
    return None
