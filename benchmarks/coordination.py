"""Coordinate end-to-end over gRPC: latency of big unary calls, throughput of small ones.

    python benchmarks/coordination.py --json OUT

Starts galacticd itself (coordination only) in a subprocess, so the client's load does not
share the server's GIL, once with dynamic batching and once with it off
(`GALACTIC_COORDINATION__BATCHING__ENABLED=false`), and measures through the daemon's whole
path: interceptor, servicer, batcher, model, solver. Prints a table and writes OUT, a JSON
list of rows {case, targets, sites, p50_ms, p99_ms, calls_per_s}.
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


CONFIG = """
[server]
listen = "127.0.0.1:{port}"
[telemetry]
metrics_listen = ""
log_level = "warning"
[llm]
enabled = false
[coordination.batching]
max_queue = 4096
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        port = _free_port()
        cfg = Path(f"/tmp/coordbench-{os.getpid()}.toml")
        cfg.write_text(CONFIG.format(port=port))
        env = {**os.environ, "GALACTIC_COORDINATION__BATCHING__ENABLED": str(batching).lower()}
        proc = subprocess.Popen([sys.executable, "-m", "daemon.main", "serve", "--config", str(cfg)], env=env, cwd=REPO)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                                 options=[("grpc.max_receive_message_length", 64 << 20),
                                                          ("grpc.max_send_message_length", 64 << 20)]) as ch:
                from galactic_client import AsyncClient

                async with AsyncClient(f"127.0.0.1:{port}") as probe:
                    await probe.wait_ready(timeout=120)  # health Watch: SERVING once loaded
                stub = pbg.CoordinationStub(ch)
                if batching:
                    rows.append(await unary(stub, pb, 1000, args.calls))
                    rows.append(await unary(stub, pb, 10000, max(args.calls // 4, 5)))
                case = "small-calls-batched" if batching else "small-calls-unbatched"
                rows.append(await small_calls(stub, pb, case, args.small_targets, args.concurrency, args.seconds))
        finally:
            proc.terminate()
            proc.wait(30)
            cfg.unlink(missing_ok=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--small-targets", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args()
    rows = asyncio.run(bench(args))
    print("| case | targets x sites | p50 ms | p99 ms | calls/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['targets']} x {r['sites']} | {r['p50_ms']} | {r['p99_ms']} | {r['calls_per_s']} |")
    ratio = rows[2]["calls_per_s"] / max(rows[3]["calls_per_s"], 1e-9)
    print(f"\nbatched/unbatched throughput: {ratio:.2f}x (target >= 4x); "
          f"p99 targets: 1000x12 < 50 ms, 10000x12 < 500 ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
