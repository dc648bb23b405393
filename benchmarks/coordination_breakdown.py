"""Where a coordination call's time goes, phase by phase, in-process (no gRPC).

    python benchmarks/coordination_breakdown.py [--targets 1000 10000] [--threads 1] --json OUT

For one request of N targets x 12 sites (the same requests as `coordination.py`), times
each phase the daemon runs for a unary Coordinate: protobuf parse, protobuf -> dataclasses
(servicer), validation (event loop), then in the batched step (worker thread) the pair
features, the CoordNet forward, the assignment solve and the result dataclasses, and last
the response's protobuf and its serialisation. Medians over --repeats; prints a table and
writes OUT (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import coordination as bench  # noqa: E402
from daemon import shipped  # noqa: E402
from daemon.servicers.coordination import build_coordinate_request, to_pb  # noqa: E402
from engines.coordination import engine as engine_mod, features, problem, solver  # noqa: E402
from engines.coordination.config import CoordinationConfig  # noqa: E402

PHASES = ("parse", "translate", "validate", "features", "forward", "solve", "result", "step_other", "to_pb",
          "serialize")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the benchmark daemon's default)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pb, _ = bench._stubs()
    eng = engine_mod.CoordinationEngine(shipped.resolve("coordination", CoordinationConfig()))
    eng.load(lambda _m: None)
    clock: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock[name] = clock.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    # Instrument the step's parts where the engine looks them up (module attributes).
    engine_mod.features = type("F", (), {"pair_batch": staticmethod(timed("features", features.pair_batch))})
    engine_mod.solver = type("S", (), {"assign": staticmethod(timed("solve", solver.assign)),
                                       "urgent_pairs": staticmethod(solver.urgent_pairs)})
    engine_mod.problem = type("P", (), {"result": staticmethod(timed("result", problem.result)),
                                        "Problem": problem.Problem, "validate": problem.validate})
    model = eng._weights.model
    model.predict = timed("forward", model.predict)
    rows = []
    for n in args.targets:
        wire = bench.make_request(pb, n, 0, "b").SerializeToString()
        samples = []
        for _ in range(args.repeats + 2):
            clock.clear()
            t = time.perf_counter()
            m = pb.CoordinateRequest.FromString(wire)
            t1 = time.perf_counter()
            req = build_coordinate_request(m)
            t2 = time.perf_counter()
            prob = problem.validate(req, eng._sites, eng.config)
            t3 = time.perf_counter()
            (res,) = eng._step([prob])
            t4 = time.perf_counter()
            out = to_pb(res, eng.name, eng.version)
            t5 = time.perf_counter()
            out.SerializeToString()
            t6 = time.perf_counter()
            step = t4 - t3
            inner = sum(clock.get(k, 0.0) for k in ("features", "forward", "solve", "result"))
            samples.append({"parse": t1 - t, "translate": t2 - t1, "validate": t3 - t2,
                            **{k: clock.get(k, 0.0) for k in ("features", "forward", "solve", "result")},
                            "step_other": step - inner, "to_pb": t5 - t4, "serialize": t6 - t5, "total": t6 - t})
        samples = samples[2:]
        row = {"targets": n, "sites": len(bench.SITES), "threads": args.threads,
               **{f"{k}_ms": round(1000 * float(np.median([s[k] for s in samples])), 2) for k in (*PHASES, "total")}}
        rows.append(row)
    print("| targets x sites | " + " | ".join(PHASES) + " | total ms |")
    print("|---" * (len(PHASES) + 2) + "|")
    for r in rows:
        print(f"| {r['targets']} x {r['sites']} | " + " | ".join(str(r[f'{k}_ms']) for k in PHASES)
              + f" | {r['total_ms']} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
