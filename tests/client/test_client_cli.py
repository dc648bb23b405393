"""The `galactic` command against the real daemon: main(argv) in a worker thread (the daemon
runs on the test's loop), and once as a real subprocess."""

import asyncio
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from engines.coordination.features import N_FEATURES
from galactic_client import cli

from .conftest import LLM
from .test_client_services import COORDINATE

PYTHONPATH = os.pathsep.join(str(Path(__file__).resolve().parents[2] / p) for p in (".", "clients/python"))


async def galactic(capsys, *argv):
    code = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_health_subprocess(target):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "galactic_client.cli", "health",
        env={**os.environ, "PYTHONPATH": PYTHONPATH, "GALACTIC_TARGET": target},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert (process.returncode, out.decode().strip()) == (0, "SERVING"), err.decode()


async def test_generate_streams_to_stdout_and_timings_to_stderr(tap, capsys):
    code, out, err = await galactic(capsys, "--target", tap.target, "generate", "hello big world",
                                    "--max-new-tokens", "5", "--seed", "3", "--stop", "\n", "--stop", "END")
    assert code == 0 and out.endswith("\n") and "\n" not in out[:-1]  # stop "\n" ends the text
    assert "prompt=" in err and "ttft=" in err
    reason, completion = err.split("]")[0].lstrip("["), int(err.split("completion=")[1].split()[0])
    assert reason in ("EOS", "LENGTH", "STOP") and 0 <= completion <= 5
    (request,) = tap.requests("Generate")
    assert (request.sampling.seed, request.stopping.max_new_tokens) == (3, 5)
    assert list(request.stopping.stop) == ["\n", "END"] and not request.HasField("adapter")


async def test_rpc_error_prints_code_and_exits_non_zero(target, capsys):
    code, out, err = await galactic(capsys, "--target", target, "generate", "x", "--top-p", "1.5")
    assert code == 13  # 10 + INVALID_ARGUMENT
    assert err.startswith("error: INVALID_ARGUMENT: ") and "top_p" in err


async def test_health_of_unknown_service(target, capsys):
    code, _, err = await galactic(capsys, "--target", target, "health", "--service", "nope")
    assert code == 15 and err.startswith("error: NOT_FOUND")


async def test_admin_commands(target, capsys):
    t = ("--target", target)
    code, out, _ = await galactic(capsys, *t, "adapters", "load", "fr", "fr")
    assert code == 0 and "loaded fr (rank 8)" in out
    code, out, _ = await galactic(capsys, *t, "adapters", "list")
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["NAME", "MODEL", "STATE", "RANK", "IN_USE", "PATH"]
    assert [row.split()[:4] for row in rows] == [["fr", LLM, "pinned", "8"]]
    code, out, _ = await galactic(capsys, *t, "adapters", "unload", "fr", "--force")
    assert code == 0 and "unloaded fr" in out
    code, out, _ = await galactic(capsys, *t, "adapters", "list")  # under the root: a request may name it
    assert code == 0 and [row.split() for row in out.splitlines()[1:]] == [["fr", LLM, "resolvable"]]
    code, out, _ = await galactic(capsys, *t, "models")
    assert code == 0 and LLM in out and "coordination" in out and "READY" in out
    code, out, _ = await galactic(capsys, *t, "stats")
    assert code == 0 and LLM in out and "requests_total" in out


async def test_infer_from_npy_files(target, capsys, tmp_path):
    np.save(tmp_path / "features.npy", np.zeros((2, N_FEATURES), dtype=np.float32))
    np.save(tmp_path / "site.npy", np.array([0, 1], dtype=np.int64))
    code, out, err = await galactic(capsys, "--target", target, "infer", "coordination",
                                    "--input", f"features={tmp_path / 'features.npy'}",
                                    "--input", f"site={tmp_path / 'site.npy'}", "--json")
    assert code == 0, err
    outputs = json.loads(out)
    assert set(outputs) == {"p_success", "expected_snr"}
    assert all(o["dtype"] == "float32" and o["shape"] == [2] for o in outputs.values())
    code, _, err = await galactic(capsys, "--target", target, "infer", "coordination", "--input", "x")
    assert code == 1 and "NAME=FILE.npy" in err


@pytest.mark.parametrize("table", [False, True])
async def test_coordinate_from_json_file(target, capsys, tmp_path, table):
    request = tmp_path / "request.json"
    request.write_text(json.dumps(COORDINATE))
    code, out, _ = await galactic(capsys, "--target", target, "coordinate", str(request),
                                  *(["--table"] if table else []))
    assert code == 0
    if table:
        assert "model: coordination" in out.splitlines() and "request_id: c1" in out.splitlines()
    else:
        response = json.loads(out)
        assert (response["model"], response["request_id"]) == ("coordination", "c1")
        answered = {a["target_id"] for a in response.get("assignments", [])}
        answered |= {u["target_id"] for u in response.get("unassigned", [])}
        assert answered == {"t0", "t1", "t2", "t3"}
    request.write_text('{"no_such_field": 1}')
    code, _, err = await galactic(capsys, "--target", target, "coordinate", str(request))
    assert code == 1 and "no_such_field" in err


async def test_generate_json_schema_file(tap, capsys, tmp_path):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    code, out, err = await galactic(capsys, "--target", tap.target, "generate", "Answer:", "--json-schema", str(path),
                                    "--max-new-tokens", "32", "--temperature", "1.0", "--seed", "1")
    assert code == 0
    (request,) = tap.requests("Generate")
    assert json.loads(request.constraint.json_schema) == schema
    if err.startswith("[EOS]"):  # the grammar completed: the whole answer is the schema's JSON
        assert json.loads(out) in ({"ok": True}, {"ok": False})
