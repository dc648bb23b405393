"""Prefix caching benchmark (issue 21): the same daemon with `[llm.prefix_cache]` on and off.

    python benchmarks/prefix_cache.py --json OUT [--quick]

Two galacticd processes serve one locally built model (llm_serving.py's Llama of a few tens
of millions of parameters, random weights, its context raised to 2,048 positions), one with
the prefix cache on (the default) and one with it off; every round runs each workload on
both, the order alternating round by round, so drift hits both alike. Greedy, `ignore_eos`.

* shared-cold: `--requests` (32) concurrent requests sharing a `--prompt-tokens` (1,500)
  token system prompt, each with its own `--question-tokens` (30) token question. The
  system prompt is new to the daemon (a fresh one each round): the cache-on daemon
  prefills it once, for the first request, and reuses it for the others.
* shared-warm: the same after one request with that system prompt (not timed) went first,
  as when the prompt is in steady use.
* chat: a `--turns` (10) turn chat whose every turn re-sends the history (a short system
  prompt, each question, each answer) and a new question; TTFT per turn.

TTFT is what the client sees: from the call to the first frame with text; tokens/s counts
the completion tokens of every stream over the wall time of the burst. The daemon's
`usage.cached_prompt_tokens` is recorded too. Targets (issue 21): shared TTFT p50 cache-on
at most 0.15 of cache-off and tokens/s at least 2x; chat TTFT of the last turn within 1.5x
of the first with the cache (cache-off grows with the history). Each row records the
machine's load from /proc/stat (`other_cores`, `disturbed`), as llm_serving.py does.
Both daemons keep the scheduler's defaults but for the token budget (room for a whole
burst); with streams decoding, a step prefills at most `max_step_tokens` (default 2 x
max_running) prompt tokens, which is what makes a long uncached prompt slow to start
beside running streams (`--max-step-tokens` to compare). stdout gets a table; OUT a JSON
list of rows (the first describes the setup).
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
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_serving import FULL, LoadProbe, _loadavg, _pct, build, run_and_write, start_galacticd  # noqa: E402


@dataclass(frozen=True)
class Workload:
    requests: int = 32
    prompt_tokens: int = 1500
    question_tokens: int = 30
    new_tokens: int = 32
    turns: int = 10
    chat_system_tokens: int = 100
    answer_tokens: int = 48
    rounds: int = 3


MODEL = replace(FULL, max_positions=2048)
# --quick: a smoke run (a small model, short prompts, one round), to show the script works.
QUICK_MODEL = replace(FULL, hidden=128, layers=2, vocab=1024, max_positions=2048)
QUICK = Workload(requests=8, prompt_tokens=200, question_tokens=30, new_tokens=8, turns=4,
                 chat_system_tokens=40, answer_tokens=12, rounds=1)


class Text:
    """Prompts of an exact token count under the benchmark's tokenizer, cut from Python's
    own documentation (so they read as text, and no two are the same)."""

    def __init__(self, tok) -> None:
        import pydoc_data.topics

        self._tok = tok
        self._ids = tok("\n".join(pydoc_data.topics.topics.values()))["input_ids"]
        self._at = 0

    def take(self, n: int) -> str:
        if self._at + n > len(self._ids):
            self._at = 0
        ids, self._at = self._ids[self._at:self._at + n], self._at + n
        return self._tok.decode(ids)

    def count(self, text: str) -> int:
        return len(self._tok(text)["input_ids"])


@dataclass
class Answer:
    ttft: float
    tokens: int
    cached: int
    text: str


async def stream(stub, prompt: str, new_tokens: int) -> Answer:
    """One streaming Generate call; TTFT from the call to the first frame with text."""
    from galactic.v1 import generation_pb2 as pb

    req = pb.GenerateRequest(prompt=prompt, stopping=pb.StoppingParams(max_new_tokens=new_tokens, ignore_eos=True),
                             sampling=pb.SamplingParams(temperature=0.0))
    t_call, ttft, text, final = time.monotonic(), None, "", None
    async for frame in stub.Generate(req, timeout=1200):
        if frame.HasField("tokens"):
            if ttft is None and frame.tokens.text:
                ttft = time.monotonic() - t_call
            text += frame.tokens.text
        else:
            final = frame.final
    return Answer(ttft if ttft is not None else time.monotonic() - t_call, final.usage.completion_tokens,
                  final.usage.cached_prompt_tokens, text)


@dataclass(frozen=True)
class Prompts:
    """One round's texts of one workload, the same for both daemons."""

    system: str
    questions: list[str]
    warm: str | None = None  # shared-warm: sent first, not timed

    @classmethod
    def make(cls, text: Text, w: Workload, workload: str, tag: str) -> "Prompts":
        if workload == "chat":
            return cls(f"{tag}\nSystem: {text.take(w.chat_system_tokens)}\n",
                       [f"User: {text.take(w.question_tokens)}\nAssistant:" for _ in range(w.turns)])
        return cls(f"{tag}\n{text.take(w.prompt_tokens)}\n",
                   [f"Question {i}: {text.take(w.question_tokens)}" for i in range(w.requests)],
                   text.take(w.question_tokens) if workload == "shared-warm" else None)


async def shared(stub, p: Prompts, new_tokens: int, count) -> dict:
    if p.warm is not None:  # the system prompt in steady use: one request with it has gone before
        await stream(stub, p.system + p.warm, 1)
    t0 = time.monotonic()
    answers = await asyncio.gather(*(stream(stub, p.system + q, new_tokens) for q in p.questions))
    wall = time.monotonic() - t0
    ttfts = [a.ttft for a in answers]
    return {"ttft_p50_ms": round(_pct(ttfts, 0.5), 1), "ttft_p99_ms": round(_pct(ttfts, 0.99), 1),
            "tokens_per_s": round(sum(a.tokens for a in answers) / wall, 1),
            "cached_prompt_tokens": sum(a.cached for a in answers),
            "prompt_tokens": count(p.system + p.questions[0])}


async def chat(stub, p: Prompts, answer_tokens: int, count) -> dict:
    history = p.system
    ttfts, cached, prompt_tokens = [], [], []
    for question in p.questions:
        history += question
        answer = await stream(stub, history, answer_tokens)
        ttfts.append(round(answer.ttft * 1000, 1))
        cached.append(answer.cached)
        prompt_tokens.append(count(history))
        history += answer.text + "\n"
    return {"turn_ttft_ms": ttfts, "turn_cached_prompt_tokens": cached, "turn_prompt_tokens": prompt_tokens,
            "last_over_first": round(ttfts[-1] / max(ttfts[0], 1e-9), 2)}


async def main_async(args: argparse.Namespace) -> list[dict]:
    import grpc
    from transformers import AutoTokenizer

    from galactic.v1 import generation_pb2_grpc

    model_setup, w = (QUICK_MODEL, QUICK) if args.quick else (MODEL, Workload())
    overrides = {k: v for k, v in {"requests": args.requests, "prompt_tokens": args.prompt_tokens,
                                   "turns": args.turns, "rounds": args.rounds}.items() if v}
    w = replace(w, **overrides)
    root = Path(tempfile.mkdtemp(prefix="galactic-prefix-bench-"))
    model_dir, adapters_dir = build(model_setup, root)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    text = Text(tok)
    longest = max(w.prompt_tokens + w.question_tokens + 16,
                  w.chat_system_tokens + w.turns * (w.question_tokens + w.answer_tokens + 8)) + w.new_tokens
    if longest > model_setup.max_positions:
        raise SystemExit(f"prompts of up to ~{longest} tokens exceed the model's {model_setup.max_positions} positions")
    # Room for every request of a burst at once (the scheduler reserves prompt + new tokens
    # up front), in both daemons alike: the cache, not the budget, makes the difference.
    common = {"scheduler.max_batch_tokens": w.requests * (longest + w.new_tokens) + 4096,
              "scheduler.max_prompt_tokens": model_setup.max_positions}
    if args.max_step_tokens:
        common["scheduler.max_step_tokens"] = args.max_step_tokens
    daemons = {}
    try:
        for name, enabled in (("cache-on", "true"), ("cache-off", "false")):
            sub = root / name
            sub.mkdir()
            daemons[name] = await start_galacticd(
                model_dir, adapters_dir, sub, w.requests, [],
                settings={**common, "prefix_cache": f"{{ enabled = {enabled}, max_tokens = {4 * longest} }}"},
                server_threads=args.server_threads)
        channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{d.port}") for name, d in daemons.items()}
        stubs = {name: generation_pb2_grpc.GenerationStub(ch) for name, ch in channels.items()}
        for ch in channels.values():
            await ch.channel_ready()
        warm_up = Prompts.make(text, replace(w, requests=2), "shared-cold", "Warm-up.")
        for stub in stubs.values():  # allocator, first-call paths
            await shared(stub, warm_up, 2, text.count)
        rows = []
        for rnd in range(w.rounds):
            order = list(daemons) if rnd % 2 == 0 else list(daemons)[::-1]
            for workload in ("shared-cold", "shared-warm", "chat"):
                # New texts every round (cold means cold), the same for both daemons.
                prompts = Prompts.make(text, w, workload, f"Round {rnd}, {workload}.")
                for name in order:
                    with LoadProbe(daemons[name].proc.pid) as probe:
                        if workload == "chat":
                            result = await chat(stubs[name], prompts, w.answer_tokens, text.count)
                        else:
                            result = await shared(stubs[name], prompts, w.new_tokens, text.count)
                    rows.append({"system": name, "workload": workload, "round": rnd, **result,
                                 "other_cores": round(probe.other_cores, 2), "disturbed": probe.other_cores > 0.25,
                                 "loadavg": _loadavg()})
                    print(json.dumps(rows[-1]), file=sys.stderr)
        for ch in channels.values():
            await ch.close()
    finally:
        for d in daemons.values():
            d.stop()
        shutil.rmtree(root, ignore_errors=True)
    meta = {"system": "setup", "model": {"hidden": model_setup.hidden, "layers": model_setup.layers,
                                         "vocab": model_setup.vocab, "max_positions": model_setup.max_positions},
            "workload": w.__dict__}
    return [meta, *rows]


def summarize(rows: list[dict]) -> str:
    data = [r for r in rows if r["system"] != "setup"]

    def med(system: str, workload: str, key: str) -> float:
        xs = [r[key] for r in data if r["system"] == system and r["workload"] == workload]
        return statistics.median(xs) if xs else float("nan")

    lines = ["| system | workload | round | TTFT p50 ms | TTFT p99 ms | tok/s | cached prompt tokens | disturbed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data:
        if r["workload"] == "chat":
            continue
        lines.append(f"| {r['system']} | {r['workload']} | {r['round']} | {r['ttft_p50_ms']} | {r['ttft_p99_ms']} | "
                     f"{r['tokens_per_s']} | {r['cached_prompt_tokens']} | {'yes' if r['disturbed'] else 'no'} |")
    lines += ["", "| system | round | chat TTFT per turn, ms | cached prompt tokens per turn | last / first | disturbed |",
              "|---|---|---|---|---|---|"]
    for r in data:
        if r["workload"] == "chat":
            lines.append(f"| {r['system']} | {r['round']} | {' '.join(map(str, r['turn_ttft_ms']))} | "
                         f"{' '.join(map(str, r['turn_cached_prompt_tokens']))} | {r['last_over_first']} | "
                         f"{'yes' if r['disturbed'] else 'no'} |")
    lines.append("")
    for workload in ("shared-cold", "shared-warm"):
        ttft = med("cache-on", workload, "ttft_p50_ms") / med("cache-off", workload, "ttft_p50_ms")
        tps = med("cache-on", workload, "tokens_per_s") / med("cache-off", workload, "tokens_per_s")
        lines.append(f"{workload}: TTFT p50 on/off {ttft:.2f} (target <= 0.15), tokens/s on/off {tps:.2f}x (target >= 2x)")
    on, off = med("cache-on", "chat", "last_over_first"), med("cache-off", "chat", "last_over_first")
    lines += [f"chat: TTFT last turn / first turn, cache on {on:.2f}x (target <= 1.5x), cache off {off:.2f}x",
              f"loadavg during rows: {', '.join(sorted({r['loadavg'] for r in data}))}",
              f"disturbed rows: {sum(r['disturbed'] for r in data)} of {len(data)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="write results here")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small model, 8 requests, 200-token prompt, 4 turns")
    parser.add_argument("--requests", type=int, default=0, help="requests sharing the system prompt (default 32)")
    parser.add_argument("--prompt-tokens", type=int, default=0, help="shared system prompt length (default 1500)")
    parser.add_argument("--turns", type=int, default=0, help="chat turns (default 10)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--max-step-tokens", type=int, default=0,
                        help="both daemons' scheduler.max_step_tokens (default: the engine's own, 2 x max_running)")
    parser.add_argument("--server-threads", type=int, default=0,
                        help="each galacticd's server.intra_op_threads (default 0: torch's own)")
    return run_and_write(main_async, summarize, parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
