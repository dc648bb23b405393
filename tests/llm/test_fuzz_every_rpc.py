"""Property-based: every RPC of every galactic service, driven with generated messages.

Messages are generated from the protobuf descriptors (so a field added later is fuzzed
too): wrong and extreme numbers, NaN and Inf, empty, huge and odd strings, unknown enum
values, unknown models and adapters, raw bytes that may not parse at all, and for the
streaming calls lists of frames (duplicate ids in a session, cancels before and after
their submits). Every answer, and every error frame inside a stream, must carry one of
the documented statuses: never INTERNAL or UNKNOWN. Meanwhile good requests run beside
them on other connections and must come back exactly as they did before the fuzzing.

The daemon runs on the test's event loop; hypothesis drives a synchronous client from a
worker thread. Examples are derandomized (the same on every CI run) and bounded in count
so the whole file stays near a minute on two CPU cores.
"""

from __future__ import annotations

import asyncio
import shutil
import threading

import grpc
import pytest
from pathlib import Path

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from galactic.v1 import (admin_pb2, coordination_pb2, generation_pb2, inference_pb2)
from inference import grpc_service_pb2

pytestmark = pytest.mark.slow

# What a galactic RPC may answer to a client's input. INTERNAL and UNKNOWN are bugs;
# UNAVAILABLE would mean the daemon (or an engine) fell over.
DOCUMENTED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.PERMISSION_DENIED,
}
DOCUMENTED_VALUES = {c.value[0] for c in DOCUMENTED}
KNOWN_STRINGS = ["", "tiny", "coordination", "nope", "alpha", "beta", "features", "site", "r1", "r2",
                 "def add(a, b):", "user", "rubin", "gemini_south", "alpha/../..",
                 "../../etc"]
EXAMPLES = 60  # per RPC
EXAMPLE = Path(__file__).resolve().parents[2] / "training" / "data" / "example_request.json"
SERVICES = [admin_pb2, coordination_pb2, generation_pb2, inference_pb2, grpc_service_pb2]


def _repeated(fd: FieldDescriptor) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return flag if isinstance(flag, bool) else fd.label == FieldDescriptor.LABEL_REPEATED


def strings() -> st.SearchStrategy[str]:
    huge = st.builds(lambda n, c: c * n, st.sampled_from([129, 300, 5000, 200_000]),
                     st.sampled_from(["a", "é", "\x00", "/", "{{"]))
    return st.one_of(st.sampled_from(KNOWN_STRINGS), st.text(max_size=12), huge)


def scalars(fd: FieldDescriptor) -> st.SearchStrategy:
    T = FieldDescriptor
    if fd.type == T.TYPE_STRING:
        return strings()
    if fd.type == T.TYPE_BYTES:
        return st.binary(max_size=48)
    if fd.type == T.TYPE_BOOL:
        return st.booleans()
    if fd.type in (T.TYPE_FLOAT, T.TYPE_DOUBLE):
        width = 32 if fd.type == T.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from([0.0, 0.5, 1.0, -1.0]), st.floats(width=width))
    if fd.type == T.TYPE_ENUM:
        return st.sampled_from([v.number for v in fd.enum_type.values] + [99])
    if fd.type in (T.TYPE_UINT32, T.TYPE_FIXED32):
        return st.one_of(st.integers(0, 20), st.just(2**32 - 1))
    if fd.type in (T.TYPE_UINT64, T.TYPE_FIXED64):
        return st.one_of(st.integers(0, 20), st.just(2**64 - 1))
    if fd.type in (T.TYPE_INT32, T.TYPE_SINT32, T.TYPE_SFIXED32):
        return st.one_of(st.integers(-2, 30), st.sampled_from([2**31 - 1, -2**31]))
    return st.one_of(st.integers(-2, 30), st.sampled_from([2**40, 2**63 - 1, -2**63]))  # 64-bit


def messages(desc, depth: int = 0) -> st.SearchStrategy:
    """Messages of type `desc` with a random subset of fields set to random values."""
    cls = message_factory.GetMessageClass(desc)
    optional = {}
    for fd in desc.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            continue
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            value = st.deferred(lambda fd=fd: messages(fd.message_type, depth + 1))
        else:
            value = scalars(fd)
        optional[fd.name] = st.lists(value, max_size=3) if _repeated(fd) else value

    def build(values: dict) -> object:
        msg = cls()
        for name, value in values.items():
            field = getattr(msg, name)
            if isinstance(value, list):
                if value and hasattr(value[0], "DESCRIPTOR"):
                    field.extend(value)
                else:
                    field.extend(value)
            elif hasattr(value, "DESCRIPTOR"):
                field.CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries({}, optional=optional).map(build)


def frames(method) -> st.SearchStrategy[bytes]:
    """One request frame: usually a generated message, sometimes raw bytes."""
    return st.one_of(messages(method.input_type).map(lambda m: m.SerializeToString()),
                     st.binary(max_size=32))


def session_frames() -> st.SearchStrategy[list[bytes]]:
    """Session frames over a few ids: duplicates, cancels before and after their submits."""
    rid = st.sampled_from(["r1", "r2", "r3", ""])
    submit = st.builds(
        lambda r, req, t: generation_pb2.SessionRequest(submit=generation_pb2.Submit(request_id=r, request=req,
                                                                                     timeout_ms=t)),
        rid, messages(generation_pb2.GenerateRequest.DESCRIPTOR), st.sampled_from([0, 0, 1, 5000]))
    cancel = st.builds(lambda r: generation_pb2.SessionRequest(cancel=generation_pb2.Cancel(request_id=r)), rid)
    frame = st.one_of(submit, submit, cancel, st.just(generation_pb2.SessionRequest()))
    return st.lists(frame.map(lambda m: m.SerializeToString()), max_size=5).flatmap(
        lambda fs: st.one_of(st.just(fs), st.binary(min_size=1, max_size=16).map(lambda raw: fs + [raw])))


def check_status(code: grpc.StatusCode, where: str) -> None:
    assert code in DOCUMENTED, f"{where}: {code.name}"


def check_frames(responses, where: str) -> None:
    for resp in responses:
        if resp.DESCRIPTOR.fields_by_name.get("error") and resp.HasField("error"):
            assert resp.error.code in DOCUMENTED_VALUES, f"{where}: error frame {resp.error}"
        # KServe's ModelStreamInfer carries only the text; an INTERNAL error says this.
        if resp.DESCRIPTOR.fields_by_name.get("error_message"):
            assert not resp.error_message.startswith("internal error"), f"{where}: {resp.error_message}"


def call(channel: grpc.Channel, method, payload) -> None:
    """One call of `method` (a MethodDescriptor) with raw frame(s) `payload`."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    out = message_factory.GetMessageClass(method.output_type).FromString
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
        (method.client_streaming, method.server_streaming)]
    stub = kind(path, response_deserializer=out)  # requests go as the raw bytes given
    try:
        if method.server_streaming:
            check_frames(list(stub(iter(payload) if method.client_streaming else payload, timeout=20)), path)
        else:
            check_frames([stub(iter(payload) if method.client_streaming else payload, timeout=20)], path)
    except grpc.RpcError as err:
        check_status(err.code(), f"{path} ({err.details()})")


@pytest.fixture
async def full_daemon(daemon_factory, tiny_dir, adapters_root, tmp_path):
    root = tmp_path / "adapters"
    shutil.copytree(adapters_root, root)
    return await daemon_factory({
        "llm": {"name": "tiny", "path": str(tiny_dir), "device": "cpu",
                "scheduler": {"max_running": 8, "max_batch_tokens": 2048, "max_waiting": 64,
                              "prefill_chunk_tokens": 16, "max_prompt_tokens": 128, "max_new_tokens_limit": 8},
                "adapters": {"root": str(root), "max_loaded": 3}},
        "coordination": {"batching": {"max_queue_delay_ms": 1.0}},
    })


class GoodTraffic:
    """Good requests on their own connection, in a loop, each compared with its first answer."""

    def __init__(self, port: int) -> None:
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._stop = threading.Event()
        self.served = 0
        self.failures: list[str] = []
        gen = self._channel.unary_stream("/galactic.v1.Generation/Generate",
                                          request_serializer=generation_pb2.GenerateRequest.SerializeToString,
                                          response_deserializer=generation_pb2.GenerateResponse.FromString)
        coord = self._channel.unary_unary("/galactic.v1.Coordination/Coordinate",
                                          request_serializer=coordination_pb2.CoordinateRequest.SerializeToString,
                                          response_deserializer=coordination_pb2.CoordinateResponse.FromString)
        gen_request = generation_pb2.GenerateRequest(
            model="tiny", prompt="def add(a, b):", sampling=generation_pb2.SamplingParams(temperature=0.0),
            stopping=generation_pb2.StoppingParams(max_new_tokens=6, ignore_eos=True))
        coord_request = json_format.Parse(EXAMPLE.read_text(), coordination_pb2.CoordinateRequest())
        self._calls = [
            lambda: [r.tokens.token_ids[:] for r in gen(gen_request, timeout=60) if r.HasField("tokens")],
            lambda: coord(coord_request, timeout=60),
        ]
        self.expected = [c() for c in self._calls]
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for fn, want in zip(self._calls, self.expected):
                try:
                    got = fn()
                except grpc.RpcError as err:
                    self.failures.append(f"{err.code().name}: {err.details()}")
                    continue
                if got != want:
                    self.failures.append(f"changed answer: {got} != {want}")
                self.served += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Blocking: call it off the event loop, which must keep serving the last call."""
        self._stop.set()
        self._thread.join(120)
        self._channel.close()


def _property(channel: grpc.Channel, method):
    def prop(payload) -> None:
        call(channel, method, payload)
    return prop


def fuzz_all(port: int) -> list[str]:
    """Runs every RPC's property in this (worker) thread; returns the methods driven."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)])
    driven = []
    common = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
    try:
        for module in SERVICES:
            for service in module.DESCRIPTOR.services_by_name.values():
                for method in service.methods:
                    if method.full_name == "galactic.v1.Generation.Session":
                        strategy = session_frames()
                    elif method.client_streaming:
                        strategy = st.lists(frames(method), max_size=4)
                    else:
                        strategy = frames(method)

                    common(given(payload=strategy)(_property(channel, method)))()
                    driven.append(method.full_name)
    finally:
        channel.close()
    return driven


async def test_every_rpc_answers_only_documented_statuses(full_daemon):
    good = await asyncio.to_thread(GoodTraffic, full_daemon.port)
    good.start()
    try:
        driven = await asyncio.to_thread(fuzz_all, full_daemon.port)
    finally:
        await asyncio.to_thread(good.stop)
    assert len(driven) == sum(len(s.methods) for m in SERVICES for s in m.DESCRIPTOR.services_by_name.values())
    assert good.failures == [] and good.served > 0
    engine = full_daemon.engines["tiny"]
    await engine.wait_until(lambda e: e.running_count == 0 and e.waiting_count == 0, timeout=60)
