"""The real `tritonclient[grpc]` against galacticd: health, metadata, ModelInfer on the
coordination model (raw contents through its API, typed contents through its own generated
stubs), a whole coordination step on `coordination-coordinate` (the README's example), and a
`start_stream` / `async_stream_infer` generation on the LLM.

tritonclient needs protobuf < 7 and the daemon runs protobuf 7, so the client runs in a venv
of its own with the versions pinned below (made once per module; pip's cache makes reruns
fast), as a subprocess that prints what it received as JSON; the assertions run here, against
native answers. Slow: it creates a venv and installs from the package registry.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from galactic.v1 import generation_pb2, generation_pb2_grpc, inference_pb2, inference_pb2_grpc
from galactic_client.tensors import from_tensor, to_tensor

pytestmark = pytest.mark.slow

# The newest tritonclient and what it resolved to beside it (2026-12); unpinned beside
# protobuf 7, pip would fall back to tritonclient 2.41.
PINS = ["tritonclient[grpc]==2.73.0", "grpcio==1.85.3", "protobuf==6.33.6", "numpy==2.4.6",
        "python-rapidjson==1.25", "packaging==26.4", "urllib3==2.8.0"]
N_FEATURES = 21
PROMPT = "The quick brown fox"

CLIENT = r'''
import json, queue, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

target, mode = sys.argv[1], sys.argv[2]
client = grpcclient.InferenceServerClient(target)
out = {}
features = np.asarray(json.loads(sys.argv[3]), dtype=np.float32) if mode.startswith("infer") else None
if mode == "health":
    out["live"] = client.is_server_live()
    out["ready"] = client.is_server_ready()
    out["model_ready"] = client.is_model_ready("coordination")
    out["unknown_ready"] = client.is_model_ready("no-such-model")
    out["server"] = client.get_server_metadata(as_json=True)
    out["coordination"] = client.get_model_metadata("coordination", as_json=True)
    out["tiny"] = client.get_model_metadata("tiny", as_json=True)
    try:
        client.get_model_metadata("no-such-model")
    except grpcclient.InferenceServerException as exc:
        out["unknown_status"] = exc.status()
elif mode == "infer-raw":
    site = np.arange(len(features), dtype=np.int64) % 3
    inputs = [grpcclient.InferInput("features", list(features.shape), "FP32"),
              grpcclient.InferInput("site", list(site.shape), "INT64")]
    inputs[0].set_data_from_numpy(features)
    inputs[1].set_data_from_numpy(site)
    result = client.infer("coordination", inputs, request_id="raw-1",
                          outputs=[grpcclient.InferRequestedOutput("p_success")])
    out["id"] = result.get_response().id
    out["names"] = [o.name for o in result.get_response().outputs]
    out["p_success"] = result.as_numpy("p_success").tolist()
elif mode == "infer-typed":
    # tritonclient's API always sends raw contents; its own generated stubs send typed ones.
    import grpc
    site = np.arange(len(features), dtype=np.int64) % 3
    T = service_pb2.ModelInferRequest.InferInputTensor
    request = service_pb2.ModelInferRequest(model_name="coordination", id="typed-1", inputs=[
        T(name="features", datatype="FP32", shape=features.shape,
          contents=service_pb2.InferTensorContents(fp32_contents=features.reshape(-1).tolist())),
        T(name="site", datatype="INT64", shape=site.shape,
          contents=service_pb2.InferTensorContents(int64_contents=site.tolist()))])
    with grpc.insecure_channel(target) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    # Answered in typed contents too (InferResult.as_numpy reads only raw ones for numbers).
    out["raw"] = len(response.raw_output_contents)
    for output in response.outputs:
        out[output.name] = list(output.contents.fp32_contents)
        out[output.name + ".shape"] = list(output.shape)
elif mode == "coordinate":
    # The README's example, as a user would run it: a whole Coordinate step in columns.
    n = 3
    cols = {"time_unix": np.array([1741584600.0]), "site_id": np.array([b"rubin", b"ctio"], dtype=np.object_),
            "seeing_arcsec": np.array([0.8, 0.9]), "cloud_extinction_mag": np.zeros(2),
            "humidity_pct": np.array([30.0, 40.0]), "target_id": np.array([b"a", b"b", b"c"], dtype=np.object_),
            "ra_deg": np.array([150.0, 160.0, 170.0]), "dec_deg": np.full(n, -30.0), "magnitude": np.full(n, 20.0),
            "band": np.full(n, 3, np.int32), "exposure_s": np.full(n, 60.0), "value": np.ones(n)}
    inputs = []
    for name, a in cols.items():
        datatype = {"O": "BYTES", "f": "FP64", "i": "INT32"}[a.dtype.kind]
        inputs.append(grpcclient.InferInput(name, list(a.shape), datatype))
        inputs[-1].set_data_from_numpy(a)
    result = client.infer("coordination-coordinate", inputs)
    for name in ("assignment_target_index", "assignment_site_index", "expected_value", "p_success",
                 "unassigned_target_index", "unassigned_reason", "total_expected_value"):
        out[name] = result.as_numpy(name).tolist()
elif mode == "stream":
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    def request(prompt, sampling, rid):
        inputs = [grpcclient.InferInput("text_input", [1], "BYTES"), grpcclient.InferInput("stream", [1], "BOOL"),
                  grpcclient.InferInput("sampling_parameters", [1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
        inputs[1].set_data_from_numpy(np.array([True]))
        inputs[2].set_data_from_numpy(np.array([json.dumps(sampling).encode()], dtype=np.object_))
        client.async_stream_infer("tiny", inputs, request_id=rid)
    request(sys.argv[3], {"max_tokens": 10, "ignore_eos": True, "temperature": "0"}, "bad")  # see below
    out["chunks"], out["final"], out["errors"] = [], [], []
    while True:
        try:
            result, error = results.get(timeout=120)
        except queue.Empty:
            print(json.dumps({"stuck": out}), flush=True)
            import os
            os._exit(3)  # grpc's stream thread would keep the interpreter alive
        if error is not None:
            out["errors"].append(str(error))
            # The stream lives on after a bad request: the good one goes on the same stream.
            request(sys.argv[4], {"max_tokens": 10, "ignore_eos": True, "temperature": "0"}, "good")
            continue
        response = result.get_response()
        out["chunks"].append([response.id, result.as_numpy("text_output")[0].decode()])
        final = response.parameters["triton_final_response"].bool_param
        out["final"].append(final)
        if final:
            break
    client.stop_stream()
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def triton_python(tmp_path_factory):
    venv = tmp_path_factory.mktemp("tritonclient") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "--quiet", *PINS],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    return py


@pytest.fixture
async def both_daemon(llm_daemon_with):
    from sections import COORDINATION

    return await llm_daemon_with(COORDINATION)


async def run_client(py, daemon, *args: str) -> dict:
    # The daemon runs on this test's event loop: the client must not block it.
    proc = await asyncio.create_subprocess_exec(
        str(py), "-c", CLIENT, f"127.0.0.1:{daemon.port}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 180)
    except TimeoutError:
        # Say where it stood: the client's output so far, every thread of this process
        # (the daemon runs here) and the engines' queues.
        import faulthandler

        proc.kill()
        out, err = await proc.communicate()
        faulthandler.dump_traceback(all_threads=True)
        state = {name: e.stats() for name, e in daemon.engines.items()}
        raise AssertionError(f"tritonclient hung; engines {state}; client stderr: {err.decode()[-3000:]}; "
                             f"stdout: {out.decode()[-1000:]}") from None
    if proc.returncode == 3:  # the client waited 120 s for a response: where did the daemon stand?
        import faulthandler

        faulthandler.dump_traceback(all_threads=True)
        state = {name: e.stats() for name, e in daemon.engines.items()}
        raise AssertionError(f"no response for 120 s; engines {state}; client: {out.decode()[-1000:]}")
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def features(rows: int = 6) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(rows, N_FEATURES)).astype(np.float32)


async def native_infer(channel, x: np.ndarray) -> dict[str, np.ndarray]:
    site = np.arange(len(x), dtype=np.int64) % 3
    resp = await inference_pb2_grpc.InferenceStub(channel).Infer(inference_pb2.InferRequest(
        model="coordination", inputs=[to_tensor("features", x), to_tensor("site", site)]), timeout=30)
    return {t.name: from_tensor(t) for t in resp.outputs}


async def test_health_and_metadata(triton_python, both_daemon):
    got = await run_client(triton_python, both_daemon, "health")
    assert got["live"] and got["ready"] and got["model_ready"] and not got["unknown_ready"]
    assert got["server"]["name"] == "galactic"
    coord = got["coordination"]
    assert coord["versions"] == [both_daemon.engines["coordination"].version]
    assert [(t["name"], t["datatype"], t["shape"]) for t in coord["inputs"]] == [
        ("features", "FP32", [str(-1), str(N_FEATURES)]), ("site", "INT64", [str(-1)])]  # int64 as JSON strings
    assert {t["name"] for t in got["tiny"]["inputs"]} >= {"text_input", "stream", "sampling_parameters"}
    assert got["unknown_status"] == "StatusCode.NOT_FOUND"


async def test_infer_raw_through_the_client_api(triton_python, both_daemon, channel_to):
    x = features()
    got = await run_client(triton_python, both_daemon, "infer-raw", json.dumps(x.tolist()))
    assert got["id"] == "raw-1" and got["names"] == ["p_success"]
    want = await native_infer(channel_to(both_daemon), x)
    np.testing.assert_array_equal(np.asarray(got["p_success"], np.float32), want["p_success"])


async def test_infer_typed_through_its_stubs(triton_python, both_daemon, channel_to):
    x = features()
    got = await run_client(triton_python, both_daemon, "infer-typed", json.dumps(x.tolist()))
    assert got["raw"] == 0  # typed in, typed out
    assert got["p_success.shape"] == [len(x)]
    want = await native_infer(channel_to(both_daemon), x)
    for name in ("p_success", "expected_snr"):
        np.testing.assert_array_equal(np.asarray(got[name], np.float32), want[name])


async def test_coordinate_in_columns_equals_native_coordinate(triton_python, both_daemon, channel_to):
    from galactic.v1 import coordination_pb2 as cpb, coordination_pb2_grpc

    got = await run_client(triton_python, both_daemon, "coordinate")
    forecast = {"rubin": (0.8, 30.0), "ctio": (0.9, 40.0)}
    want = await coordination_pb2_grpc.CoordinationStub(channel_to(both_daemon)).Coordinate(cpb.CoordinateRequest(
        time_unix=1741584600.0,
        observatories=[cpb.Observatory(site_id=s, forecast=cpb.Conditions(seeing_arcsec=see, humidity_pct=hum))
                       for s, (see, hum) in forecast.items()],
        targets=[cpb.Target(id=t, ra_deg=ra, dec_deg=-30.0, magnitude=20.0, band=cpb.BAND_R, exposure_s=60.0,
                            value=1.0) for t, ra in zip("abc", (150.0, 160.0, 170.0))]), timeout=60)
    ids, sites = ["a", "b", "c"], list(forecast)
    assert len(got["assignment_target_index"]) == len(want.assignments) > 0
    assert [(ids[i], sites[j]) for i, j in zip(got["assignment_target_index"], got["assignment_site_index"])] == [
        (a.target_id, a.site_id) for a in want.assignments]
    assert got["expected_value"] == [a.expected_value for a in want.assignments]
    assert got["p_success"] == [a.p_success for a in want.assignments]
    assert [(ids[i], r) for i, r in zip(got["unassigned_target_index"], got["unassigned_reason"])] == [
        (u.target_id, u.reason) for u in want.unassigned]
    assert got["total_expected_value"] == [want.total_expected_value]


async def test_stream_generation_receives_the_tokens_and_the_final_response(triton_python, both_daemon,
                                                                            channel_to):
    stub = generation_pb2_grpc.GenerationStub(channel_to(both_daemon))
    frames = [f async for f in stub.Generate(generation_pb2.GenerateRequest(
        model="tiny", prompt=PROMPT, stopping=generation_pb2.StoppingParams(max_new_tokens=10, ignore_eos=True)),
        timeout=60)]
    want = [f.tokens.text for f in frames if f.HasField("tokens")]
    # The first request's prompt is empty: refused with an error, the stream goes on.
    got = await run_client(triton_python, both_daemon, "stream", "", PROMPT)
    assert len(got["errors"]) == 1 and "text_input" in got["errors"][0]
    assert all(rid == "good" for rid, _ in got["chunks"])
    assert [text for _, text in got["chunks"][:-1]] == want and got["chunks"][-1][1] == ""
    assert got["final"] == [False] * len(want) + [True]
