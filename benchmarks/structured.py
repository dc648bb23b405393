"""Structured-output benchmark (issue 20): 32 streams with half of them constrained to a JSON
schema, against 32 unconstrained streams, on the same daemon in the same run.

    python benchmarks/structured.py --json OUT [--quick]

One galacticd (the default `runner = "process"`) serves llm_serving.py's locally built
Llama (random weights). Each round runs, in alternating order so drift hits both alike:

* free: `--streams` (32) concurrent greedy streams, `ignore_eos`, `--new-tokens` (64) each;
* mixed: the same, with every second stream constrained to SCHEMA (a classification
  record with a fixed-length array of scores, so that a stream cannot complete its JSON
  before `--new-tokens`: both workloads then decode the same number of tokens; a
  constrained request cannot set `ignore_eos`, and one that completes its grammar stops).

tokens/s counts the completion tokens each stream actually produced (`usage`), over the
burst's wall time; the finish reasons of the constrained streams are recorded. The mean
mask time per step is the daemon's own `galactic_llm_mask_seconds` (per step with
constrained rows: what sampling still waited for, the masks being computed beside the
forward, plus advancing the matchers), sum / count over the mixed bursts, read from its
/metrics. Target (issue 20): mixed tokens/s at least 0.90 of free. The schema is compiled
in the warm-up, not in a timed burst. Each row records the machine's load, as
llm_serving.py does. stdout gets a table; OUT a JSON list of rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_serving import FULL, PROMPT, LoadProbe, _free_port, _loadavg, _pct, build, run_and_write, start_galacticd  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999999},
        "label": {"enum": ["spam", "ham", "unknown"]},
        "scores": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
                   "minItems": 64, "maxItems": 64},
    },
    "required": ["id", "label", "scores"],
    "additionalProperties": False,
}
QUICK_MODEL = replace(FULL, hidden=128, layers=2, vocab=1024)


async def one(stub, new_tokens: int, constrained: bool) -> tuple[float, int, str]:
    """(TTFT s, completion tokens, finish reason) of one streaming Generate call."""
    from galactic.v1 import generation_pb2 as pb

    req = pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(temperature=0.0),
                             stopping=pb.StoppingParams(max_new_tokens=new_tokens, ignore_eos=not constrained))
    if constrained:
        req.constraint.json_schema = json.dumps(SCHEMA)
    t_call, ttft, final = time.monotonic(), None, None
    async for frame in stub.Generate(req, timeout=1200):
        if frame.HasField("tokens"):
            if ttft is None and frame.tokens.text:
                ttft = time.monotonic() - t_call
        else:
            final = frame.final
    return (ttft or 0.0), final.usage.completion_tokens, pb.FinishReason.Name(final.finish_reason)


def scrape(port: int) -> dict[str, float]:
    """The daemon's mask-time histogram sum and count, and its step count (model "bench")."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    out = {}
    for name in ("galactic_llm_mask_seconds_sum", "galactic_llm_mask_seconds_count", "galactic_llm_step_tokens_count"):
        out[name] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith(name + "{") and 'model="bench"' in line)
    return out


async def burst(stub, streams: int, new_tokens: int, mixed: bool) -> dict:
    t0 = time.monotonic()
    results = await asyncio.gather(*(one(stub, new_tokens, mixed and i % 2 == 1) for i in range(streams)))
    wall = time.monotonic() - t0
    shaped = [r for i, r in enumerate(results) if mixed and i % 2 == 1]
    free = [r for i, r in enumerate(results) if not (mixed and i % 2 == 1)]
    reasons: dict[str, int] = {}
    for _, _, reason in shaped:
        reasons[reason] = reasons.get(reason, 0) + 1
    return {"tokens_per_s": round(sum(r[1] for r in results) / wall, 1),
            "ttft_p50_ms": round(_pct([r[0] for r in results], 0.5), 1),
            "free_tokens": sum(r[1] for r in free), "constrained_tokens": sum(r[1] for r in shaped),
            "constrained_finish": reasons, "wall_s": round(wall, 3)}


async def main_async(args: argparse.Namespace) -> list[dict]:
    import grpc

    from galactic.v1 import generation_pb2_grpc

    setup = QUICK_MODEL if args.quick else FULL
    streams = args.streams or (8 if args.quick else 32)
    new_tokens = args.new_tokens or (16 if args.quick else 64)
    rounds = args.rounds or (1 if args.quick else 3)
    root = Path(tempfile.mkdtemp(prefix="galactic-structured-bench-"))
    model_dir, adapters_dir = build(setup, root)
    metrics_port = _free_port()
    server = await start_galacticd(model_dir, adapters_dir, root, streams, [], metrics_port=metrics_port,
                                   server_threads=args.server_threads)
    rows = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await channel.channel_ready()
            stub = generation_pb2_grpc.GenerationStub(channel)
            await burst(stub, 4, 4, mixed=True)  # warm-up; compiles the schema (grammar cache)
            for rnd in range(rounds):
                for workload in (("free", "mixed") if rnd % 2 == 0 else ("mixed", "free")):
                    before = scrape(metrics_port)
                    with LoadProbe(server.proc.pid) as probe:
                        result = await burst(stub, streams, new_tokens, mixed=workload == "mixed")
                    after = scrape(metrics_port)
                    d = {k: after[k] - before[k] for k in after}
                    masked = d["galactic_llm_mask_seconds_count"]
                    rows.append({"workload": workload, "round": rnd, "streams": streams, "new_tokens": new_tokens,
                                 **result,
                                 "steps": int(d["galactic_llm_step_tokens_count"]), "masked_steps": int(masked),
                                 "mask_ms_per_step": round(1e3 * d["galactic_llm_mask_seconds_sum"] / masked, 3)
                                 if masked else None,
                                 "other_cores": round(probe.other_cores, 2), "disturbed": probe.other_cores > 0.25,
                                 "loadavg": _loadavg()})
                    print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return rows


def summarize(rows: list[dict]) -> str:
    lines = ["| workload | round | tok/s | TTFT p50 ms | free / constrained tokens | constrained finish | "
             "mask ms / masked step | masked steps / steps | disturbed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['round']} | {r['tokens_per_s']} | {r['ttft_p50_ms']} | "
                     f"{r['free_tokens']} / {r['constrained_tokens']} | {r['constrained_finish'] or '-'} | "
                     f"{r['mask_ms_per_step'] if r['mask_ms_per_step'] is not None else '-'} | "
                     f"{r['masked_steps']} / {r['steps']} | {'yes' if r['disturbed'] else 'no'} |")
    free = statistics.median(r["tokens_per_s"] for r in rows if r["workload"] == "free")
    mixed = statistics.median(r["tokens_per_s"] for r in rows if r["workload"] == "mixed")
    masks = [r["mask_ms_per_step"] for r in rows if r["workload"] == "mixed" and r["mask_ms_per_step"] is not None]
    lines += ["", f"mixed / free tokens/s (medians): {mixed:.1f} / {free:.1f} = {mixed / free:.2f} (target >= 0.90)",
              f"mean mask time per step with constrained rows: {statistics.mean(masks):.3f} ms" if masks else
              "mean mask time per step: no masked steps recorded",
              f"loadavg during rows: {', '.join(sorted({r['loadavg'] for r in rows}))}",
              f"disturbed rows: {sum(r['disturbed'] for r in rows)} of {len(rows)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="write results here")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small model, 8 streams of 16 tokens, 1 round")
    parser.add_argument("--streams", type=int, default=0, help="concurrent streams (default 32)")
    parser.add_argument("--new-tokens", type=int, default=0, help="tokens per stream (default 64)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds of free + mixed (default 3)")
    parser.add_argument("--server-threads", type=int, default=0,
                        help="galacticd's server.intra_op_threads (default 0: torch's own)")
    return run_and_write(main_async, summarize, parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
