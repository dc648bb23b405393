"""Coordinate end-to-end over gRPC: latency of big unary calls, throughput of small ones.

    python benchmarks/coordination.py --json OUT

Starts its own grpc.aio server with just the CoordinationServicer in a subprocess (so the
client's load does not share the server's GIL), once with dynamic batching and once
without, and writes rows {case, targets, sites, p50_ms, p99_ms, calls_per_s}.
Targets: p99 < 50 ms for 1000 x 12, < 500 ms for 10000 x 12, batched/unbatched >= 4x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SITES = ("rubin", "gemini_south", "ctio", "la_silla", "paranal", "keck", "la_palma", "teide",
         "siding_spring", "salt", "kitt_peak", "palomar")  # 12 sites
WINDOW = 1741584600.0  # 2025-03-10 05:30 UTC


def _stubs():
    sys.path.insert(0, str(REPO / "tests" / "coordination"))
    from conftest import _ensure_coordination_stubs  # generates the stubs when not installed

    _ensure_coordination_stubs()
    from galactic.v1 import coordination_pb2, coordination_pb2_grpc

    return coordination_pb2, coordination_pb2_grpc


def make_request(pb, n: int, seed: int, rid: str):
    rng = np.random.default_rng(seed)
    bands = [pb.BAND_G, pb.BAND_R, pb.BAND_I, pb.BAND_Z]
    return pb.CoordinateRequest(
        request_id=rid, time_unix=WINDOW,
        observatories=[pb.Observatory(site_id=s, forecast=pb.Conditions(seeing_arcsec=0.8, humidity_pct=30.0))
                       for s in SITES],
        targets=[pb.Target(id=f"t{i}", ra_deg=float(rng.uniform(0, 360)), dec_deg=float(rng.uniform(-80, 50)),
                           magnitude=float(rng.uniform(19, 24)), band=bands[i % 4], exposure_s=60.0,
                           value=float(rng.uniform(0.5, 2)), time_critical=i % 50 == 0) for i in range(n)])


async def serve(port_file: Path, batching: bool) -> None:
    import grpc

    import torch

    _, pbg = _stubs()  # before the servicer, which imports them
    from daemon.servicers.coordination import CoordinationServicer
    from engines.coordination.config import BatchingConfig, CoordinationConfig
    from engines.coordination.engine import CoordinationEngine

    torch.set_num_threads(1)
    engine = CoordinationEngine(CoordinationConfig(batching=BatchingConfig(enabled=batching, max_queue=4096)))
    engine.load(lambda _m: None)
    await engine.start(asyncio.get_running_loop())
    server = grpc.aio.server()
    pbg.add_CoordinationServicer_to_server(CoordinationServicer(engine), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


def _row(case, n, lat, calls, seconds):
    lat = np.asarray(lat) * 1000.0
    return {"case": case, "targets": n, "sites": len(SITES), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "calls_per_s": round(calls / seconds, 1)}


async def unary(stub, pb, n: int, calls: int) -> dict:
    reqs = [make_request(pb, n, i, f"u{i}") for i in range(min(calls, 5))]
    for r in reqs[:2]:
        await stub.Coordinate(r)  # warm-up
    lat = []
    t0 = time.perf_counter()
    for i in range(calls):
        t = time.perf_counter()
        await stub.Coordinate(reqs[i % len(reqs)])
        lat.append(time.perf_counter() - t)
    return _row(f"unary-{n}x{len(SITES)}", n, lat, calls, time.perf_counter() - t0)


async def small_calls(stub, pb, case: str, n: int, concurrency: int, seconds: float) -> dict:
    reqs = [make_request(pb, n, i, f"s{i}") for i in range(32)]
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(k):
        i = k
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await stub.Coordinate(reqs[i % len(reqs)])
            lat.append(time.perf_counter() - t)
            i += concurrency
    await asyncio.gather(*(stub.Coordinate(r) for r in reqs[:4]))  # warm-up
    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return _row(case, n, lat, len(lat), time.perf_counter() - t0)


async def bench(args) -> list[dict]:
    import grpc

    pb, pbg = _stubs()
    rows = []
    for batching in (True, False):
        port_file = Path(f"/tmp/coordbench-{os.getpid()}-{int(batching)}.port")
        port_file.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)] + ([] if batching else ["--no-batching"]),
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            while not port_file.exists():  # the server writes its port once it listens
                if proc.poll() is not None:
                    raise RuntimeError("benchmark server failed to start")
                await asyncio.sleep(0.1)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port_file.read_text()}",
                                                 options=[("grpc.max_receive_message_length", 64 << 20),
                                                          ("grpc.max_send_message_length", 64 << 20)]) as ch:
                stub = pbg.CoordinationStub(ch)
                if batching:
                    rows.append(await unary(stub, pb, 1000, args.calls))
                    rows.append(await unary(stub, pb, 10000, max(args.calls // 4, 5)))
                case = "small-calls-batched" if batching else "small-calls-unbatched"
                rows.append(await small_calls(stub, pb, case, args.small_targets, args.concurrency, args.seconds))
        finally:
            proc.terminate()
            proc.wait(10)
            port_file.unlink(missing_ok=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--small-targets", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--no-batching", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, not args.no_batching))
        return 0
    rows = asyncio.run(bench(args))
    for r in rows:
        print(json.dumps(r))
    ratio = rows[2]["calls_per_s"] / max(rows[3]["calls_per_s"], 1e-9)
    print(f"batched/unbatched throughput: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "batched_over_unbatched": round(ratio, 2)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
