"""In-process step benchmark: the engine's scheduler + model runner, no server, no threads.

    python benchmarks/llm_steps.py [--budgets 64,128,256] [--layouts static,dynamic] [--repeats 2]

The model of `llm_serving.py --quick` (hidden 512, 8 layers, vocab 2048, random weights),
37-token prompts, 32 new tokens, greedy. A burst of 32 requests arrives at once (what
`llm_serving.py` sends at concurrency 32); every configuration (layout x step budget)
runs it, interleaved with the limit (one batched prefill, then batch-32 decode steps with
a `DynamicCache`), `--repeats` times. Per configuration: tokens/s against the limit, each
request's inter-token gaps (p50, p99) against the limit's decode step, TTFT p50/max, and
the costliest step. Isolates the step policy and the forward from gRPC and the event
loop; `llm_serving.py` measures those too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

PROMPT_TOKENS, NEW_TOKENS, STREAMS = 37, 32, 32
# Wall clock by default. `--clock cpu` (with --threads 1) times this thread's CPU time
# instead: on a shared 2-core host, a neighbour's load then barely moves the figures
# (it still costs cache), so configurations compare fairly even when the machine is busy.
clock = time.perf_counter


def build_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024)
    return LlamaForCausalLM(cfg).eval()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] * 1000.0


def run_limit(model, prompts: list[list[int]]) -> dict:
    ids = torch.tensor(prompts)
    t0 = clock()
    out = model(input_ids=ids, use_cache=True)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    t_first = clock()
    cache, steps, last = out.past_key_values, [], t_first
    for _ in range(NEW_TOKENS - 1):
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        now = clock()
        steps.append(now - last)
        last = now
    wall = clock() - t0
    return {"tokens_per_s": STREAMS * NEW_TOKENS / wall, "step_ms": statistics.median(steps) * 1000,
            "ttft_ms": (t_first - t0) * 1000}


def run_engine(model, prompts: list[list[int]], layout: str, budget: int) -> dict:
    import copy

    from engines.llm import slots
    from engines.llm.config import SchedulerConfig
    from engines.llm.layouts import PaddedLayout, SlotLayout
    from engines.llm.runner import ModelRunner, StepModel
    from engines.llm.scheduler import Scheduler, Sequence
    from engines.llm.types import GenerationRequest, SamplingParams

    if layout == "static":
        model = copy.copy(model)  # attention switch on a shallow copy's own config
        model.config = copy.deepcopy(model.config)
        slots.register()
        model.config._attn_implementation = slots.ATTENTION
        step_model = StepModel(model, torch.device("cpu"))
        runner = ModelRunner(SlotLayout(step_model, model.config, STREAMS), step_model)
    else:
        step_model = StepModel(model, torch.device("cpu"))
        runner = ModelRunner(PaddedLayout(step_model), step_model)
    sched = Scheduler(SchedulerConfig(max_running=STREAMS, max_step_tokens=budget, prefill_chunk_tokens=budget))
    seqs = [Sequence(GenerationRequest(str(i), prompt="x", sampling=SamplingParams(max_new_tokens=NEW_TOKENS,
                                                                                    ignore_eos=True)),
                     p, order=i) for i, p in enumerate(prompts)]
    for s in seqs:
        sched.add(s)
    times: dict[Sequence, list[float]] = {s: [] for s in seqs}
    worst = 0.0
    t0 = clock()
    while sched.has_work():
        plan = sched.schedule(time.monotonic())
        ts = clock()
        result = runner.execute(plan)
        now = clock()
        worst = max(worst, now - ts)
        done = []
        for x in result.sampled:
            times[x.seq].append(now)
            if len(times[x.seq]) >= NEW_TOKENS:
                done.append(x.seq)
        runner.free(done)
        for s in done:
            sched.finish(s)
    wall = clock() - t0
    itl = [b - a for ts in times.values() for a, b in zip(ts, ts[1:])]
    ttft = [ts[0] - t0 for ts in times.values()]
    return {"tokens_per_s": STREAMS * NEW_TOKENS / wall, "itl_p50_ms": pct(itl, 0.5), "itl_p99_ms": pct(itl, 0.99),
            "ttft_p50_ms": pct(ttft, 0.5), "ttft_max_ms": max(ttft) * 1000, "worst_step_ms": worst * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="64,128,256")
    parser.add_argument("--layouts", default="static,dynamic")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--new-tokens", type=int, default=32,
                        help="tokens per request (llm_serving.py's full run uses 64)")
    args = parser.parse_args()
    global clock, NEW_TOKENS
    NEW_TOKENS = args.new_tokens
    if args.clock == "cpu":
        if args.threads != 1:
            parser.error("--clock cpu needs --threads 1 (other threads' time is not counted)")
        clock = time.thread_time
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model = build_model()
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, 2048, (STREAMS, PROMPT_TOKENS), generator=g).tolist()
    configs = [(lay, int(b)) for lay in args.layouts.split(",") for b in args.budgets.split(",")]
    rows: dict[str, list[dict]] = {}
    with torch.no_grad():
        run_engine(model, prompts[:4], configs[0][0], configs[0][1])  # warm-up
        run_limit(model, prompts[:4])
        for _ in range(args.repeats):
            rows.setdefault("limit", []).append(run_limit(model, prompts))
            for lay, b in configs:
                rows.setdefault(f"{lay}@{b}", []).append(run_engine(model, prompts, lay, b))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    lim = {k: statistics.median(r[k] for r in rows["limit"]) for k in rows["limit"][0]}
    print(f"clock: {args.clock}, threads: {torch.get_num_threads()}")
    print(f"limit: {lim['tokens_per_s']:.0f} tok/s, decode step (batch {STREAMS}) {lim['step_ms']:.1f} ms, "
          f"prefill of the burst {lim['ttft_ms']:.0f} ms; loadavg {load}")
    print("| config | tok/s | % of limit | ITL p50 ms | ITL p99 ms | p99 / step | TTFT p50 ms | TTFT max ms | worst step ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rs in rows.items():
        if name == "limit":
            continue
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"| {name} | {m['tokens_per_s']:.0f} | {m['tokens_per_s'] / lim['tokens_per_s']:.0%} | "
              f"{m['itl_p50_ms']:.1f} | {m['itl_p99_ms']:.1f} | {m['itl_p99_ms'] / lim['step_ms']:.2f}x | "
              f"{m['ttft_p50_ms']:.0f} | {m['ttft_max_ms']:.0f} | {m['worst_step_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
