"""The `galactic` command against a real server: main(argv) in a worker thread (the server
runs on the test's loop), and once as a real subprocess."""

import asyncio
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from galactic_client import cli

PYTHONPATH = os.pathsep.join(str(Path(__file__).resolve().parents[2] / p) for p in (".", "clients/python"))


async def galactic(capsys, *argv):
    code = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_health_subprocess(daemon):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "galactic_client.cli", "health",
        env={**os.environ, "PYTHONPATH": PYTHONPATH, "GALACTIC_TARGET": daemon.target},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert (process.returncode, out.decode().strip()) == (0, "SERVING"), err.decode()


async def test_generate_streams_to_stdout_and_timings_to_stderr(daemon, capsys):
    code, out, err = await galactic(capsys, "--target", daemon.target, "generate", "hello big world",
                                    "--max-new-tokens", "5", "--seed", "3", "--stop", "\n", "--stop", "END")
    assert code == 0 and out == "hello big world \n"
    assert "[EOS]" in err and "completion=3" in err and "ttft=2.0ms" in err
    request = daemon.generation.requests[-1]
    assert (request.sampling.seed, request.stopping.max_new_tokens) == (3, 5)
    assert list(request.stopping.stop) == ["\n", "END"] and not request.HasField("adapter")


async def test_rpc_error_prints_code_and_exits_non_zero(daemon, capsys):
    code, out, err = await galactic(capsys, "--target", daemon.target, "generate",
                                    "abort:INVALID_ARGUMENT:sampling.top_p: must be in (0, 1]")
    assert code == 13  # 10 + INVALID_ARGUMENT
    assert err.strip() == "error: INVALID_ARGUMENT: sampling.top_p: must be in (0, 1]"


async def test_health_of_unknown_service(daemon, capsys):
    code, _, err = await galactic(capsys, "--target", daemon.target, "health", "--service", "nope")
    assert code == 15 and err.startswith("error: NOT_FOUND")


async def test_admin_commands(daemon, capsys):
    target = ("--target", daemon.target)
    code, out, _ = await galactic(capsys, *target, "adapters", "load", "fr", "adapters/fr")
    assert code == 0 and "loaded fr (rank 8)" in out
    code, out, _ = await galactic(capsys, *target, "adapters", "list")
    assert code == 0 and out.splitlines()[0].split() == ["NAME", "MODEL", "RANK", "IN_USE", "PATH"] and "fr" in out
    code, out, _ = await galactic(capsys, *target, "adapters", "unload", "fr", "--force")
    assert code == 0 and "unloaded fr" in out
    code, out, _ = await galactic(capsys, *target, "models")
    assert code == 0 and "tiny-llm" in out and "READY" in out
    code, out, _ = await galactic(capsys, *target, "stats")
    assert code == 0 and "requests_total  3" in out


async def test_infer_from_npy_files(daemon, capsys, tmp_path):
    np.save(tmp_path / "x.npy", np.arange(4, dtype=np.int32).reshape(2, 2))
    code, out, _ = await galactic(capsys, "--target", daemon.target, "infer", "scorer",
                                  "--input", f"x={tmp_path / 'x.npy'}", "--json")
    assert code == 0 and json.loads(out) == {"x": {"dtype": "int32", "shape": [2, 2], "data": [[0, 1], [2, 3]]}}
    code, _, err = await galactic(capsys, "--target", daemon.target, "infer", "scorer", "--input", "x")
    assert code == 1 and "NAME=FILE.npy" in err


@pytest.mark.parametrize("table", [False, True])
async def test_coordinate_from_json_file(daemon, capsys, tmp_path, coordination_module, table):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"site": "la-silla", "budget_s": 2}))
    code, out, _ = await galactic(capsys, "--target", daemon.target, "coordinate", str(request),
                                  *(["--table"] if table else []))
    assert code == 0
    if table:
        assert out.splitlines() == ["site: la-silla", "score: 4.0"]
    else:
        assert json.loads(out) == {"site": "la-silla", "score": 4.0}
    request.write_text('{"no_such_field": 1}')
    code, _, err = await galactic(capsys, "--target", daemon.target, "coordinate", str(request))
    assert code == 1 and "no_such_field" in err
