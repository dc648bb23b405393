"""LLM serving benchmark: tokens/s, TTFT and inter-token latency at concurrency 1, 8, 32.

    python benchmarks/llm_serving.py [--quick] --json OUT

Systems, run interleaved in one process on one locally built model (a Llama of a few tens
of millions of parameters, random weights: speed does not depend on what it says):

* limit      - a tight batched decode loop with a KV cache, no server: the ceiling;
* baseline   - one request at a time through `model.generate` + `TextIteratorStreamer`;
* galacticd  - our engine (continuous batching);
* galacticd-4-adapters - the same with requests spread over 4 LoRA adapters.

TODO(integrator): "baseline" and "galacticd" drive the engine API in-process. Wire
`_grpc_baseline` / `_grpc_galacticd` (marked below) to a gRPC server on port 0 and the
galactic client once the protos and daemon are on this branch, so the network is measured.

Every run samples /proc/stat before and after and reports how many cores other processes
used meanwhile (`other_cores`), flagging rows run on a disturbed machine: on a 2-core host
any neighbour skews decode 10-100x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


@dataclass(frozen=True)
class Setup:
    hidden: int
    layers: int
    vocab: int
    new_tokens: int
    concurrency: tuple[int, ...]
    rounds: int


QUICK = Setup(hidden=512, layers=8, vocab=2048, new_tokens=32, concurrency=(1, 8, 32), rounds=1)
FULL = Setup(hidden=512, layers=8, vocab=4096, new_tokens=64, concurrency=(1, 8, 32), rounds=2)
PROMPT = "The quick brown fox jumps over the lazy dog while the scheduler batches"


# ---- machine load -----------------------------------------------------------------------

def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class LoadProbe:
    """Machine busy cores vs this process's cores over a run; the rest is disturbance."""

    def __enter__(self) -> "LoadProbe":
        self.t0, self.cpu0, self.m0 = time.monotonic(), time.process_time(), _cpu_times()
        try:  # reset this process's peak RSS (VmHWM) so peak_rss_mb is per run
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self.t0, 1e-9)
        busy1, total1 = _cpu_times()
        ncpu = os.cpu_count() or 1
        frac = (busy1 - self.m0[0]) / max(total1 - self.m0[1], 1e-9)
        self.machine_cores = frac * ncpu
        self.own_cores = (time.process_time() - self.cpu0) / wall
        self.other_cores = max(0.0, self.machine_cores - self.own_cores)
        self.peak_rss_mb = _peak_rss_mb()


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---- model and adapters -----------------------------------------------------------------

def build(setup: Setup, root: Path) -> tuple[Path, Path]:
    import pydoc_data.topics
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.llm.tokenizer import train_tokenizer

    model_dir, adapters = root / "model", root / "adapters"
    tok = train_tokenizer(list(pydoc_data.topics.topics.values()), vocab_size=setup.vocab)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=setup.hidden, intermediate_size=setup.hidden * 3,
                      num_hidden_layers=setup.layers, num_attention_heads=setup.hidden // 64,
                      num_key_value_heads=setup.hidden // 64, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    for i in range(4):
        base = LlamaForCausalLM.from_pretrained(model_dir, local_files_only=True)
        get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                        init_lora_weights=False)).save_pretrained(adapters / f"a{i}")
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.1f}M parameters, hidden {setup.hidden}, {setup.layers} layers", file=sys.stderr)
    return model_dir, adapters


@dataclass
class Trace:
    ttft: list[float]
    itl: list[float]
    tokens: int
    wall: float


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] * 1000.0


# ---- systems ----------------------------------------------------------------------------

def run_limit(model, tok, n: int, new_tokens: int) -> Trace:
    """Tight loop: batched prefill, then `new_tokens` greedy decode steps with the KV cache."""
    ids = torch.tensor([tok(PROMPT)["input_ids"]] * n)
    t0 = time.monotonic()
    itl: list[float] = []
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        ttft = time.monotonic() - t0
        cache, last = out.cache, time.monotonic()
        for _ in range(new_tokens - 1):
            out = model(input_ids=nxt, cache=cache, use_cache=True)
            cache, nxt = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
            now = time.monotonic()
            itl.extend([now - last] * n)
            last = now
    return Trace([ttft] * n, itl, n * new_tokens, time.monotonic() - t0)


def run_baseline(model, tok, n: int, new_tokens: int) -> Trace:
    """n clients, one server thread running generate() + TextIteratorStreamer serially.

    TODO(integrator): `_grpc_baseline` - the same behind a gRPC server, called via the client.
    """
    from transformers import TextIteratorStreamer

    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    t0 = time.monotonic()
    ttft, itl, tokens = [], [], 0
    for _ in range(n):  # arrivals all at t0; the server serves them one after another
        streamer = TextIteratorStreamer(tok, skip_prompt=True)
        th = threading.Thread(target=model.generate, kwargs=dict(
            input_ids=ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=streamer))
        th.start()
        first, last = None, None
        for _piece in streamer:  # text arrives at whitespace; count what the client sees
            now = time.monotonic()
            if first is None:
                first = now
                ttft.append(now - t0)
            else:
                itl.append(now - last)
            last = now
        th.join()
        tokens += new_tokens
    return Trace(ttft, itl, tokens, time.monotonic() - t0)


async def run_engine(engine, n: int, new_tokens: int, adapters: list[str | None]) -> Trace:
    """n concurrent streams against the engine API.

    TODO(integrator): `_grpc_galacticd` - the same through galacticd's Generation service.
    """
    from engines.llm.types import GenerationRequest, SamplingParams, TokenChunk

    ttft, itl = [], []
    t0 = time.monotonic()

    async def one(i: int) -> int:
        last, count = None, 0
        req = GenerationRequest(f"b{i}-{time.monotonic_ns()}", prompt=PROMPT, adapter=adapters[i % len(adapters)],
                                sampling=SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
        async for item in engine.generate(req):
            if isinstance(item, TokenChunk):
                now = time.monotonic()
                if last is None:
                    ttft.append(now - t0)
                else:
                    itl.append(now - last)
                last = now
                count += len(item.token_ids)
        return count

    counts = await asyncio.gather(*(one(i) for i in range(n)))
    return Trace(ttft, itl, sum(counts), time.monotonic() - t0)


async def main_async(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engines.config import from_mapping
    from engines.llm.config import LLMConfig
    from engines.llm.engine import LLMEngine

    setup = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    root = Path(tempfile.mkdtemp(prefix="galactic-bench-"))
    model_dir, adapters_dir = build(setup, root)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    cfg = from_mapping(LLMConfig, {
        "name": "bench", "path": str(model_dir), "device": "cpu",
        "scheduler": {"max_running": max(setup.concurrency), "max_waiting": 256, "prefill_chunk_tokens": 512},
        "adapters": {"root": str(adapters_dir), "max_loaded": 4},
    }, "llm")
    engine = LLMEngine(cfg)
    engine.load(lambda msg: None)
    await engine.start(asyncio.get_running_loop())
    names = [f"a{i}" for i in range(4)]
    for name in names:
        await engine.load_adapter(name, name)

    systems = {
        "limit": lambda n: asyncio.to_thread(run_limit, model, tok, n, setup.new_tokens),
        "baseline": lambda n: asyncio.to_thread(run_baseline, model, tok, n, setup.new_tokens),
        "galacticd": lambda n: run_engine(engine, n, setup.new_tokens, [None]),
        "galacticd-4-adapters": lambda n: run_engine(engine, n, setup.new_tokens, names),
    }
    rows = []
    await systems["galacticd"](2)  # warm-up (allocator, first-call paths)
    for rnd in range(setup.rounds):
        for n in setup.concurrency:
            for name, run in systems.items():  # interleaved, so drift hits every system alike
                with LoadProbe() as probe:
                    tr = await run(n)
                row = {
                    "system": name, "concurrency": n, "round": rnd,
                    "tokens_per_s": round(tr.tokens / tr.wall, 1),
                    "ttft_p50_ms": round(_pct(tr.ttft, 0.5), 1), "ttft_p99_ms": round(_pct(tr.ttft, 0.99), 1),
                    "itl_p50_ms": round(_pct(tr.itl, 0.5), 2), "itl_p99_ms": round(_pct(tr.itl, 0.99), 2),
                    "peak_rss_mb": round(probe.peak_rss_mb, 1),
                    "other_cores": round(probe.other_cores, 2), "disturbed": probe.other_cores > 0.25,
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    await engine.stop(5)
    shutil.rmtree(root, ignore_errors=True)
    ratio = {}
    for n in setup.concurrency:
        base = [r["tokens_per_s"] for r in rows if r["system"] == "galacticd" and r["concurrency"] == n]
        lora = [r["tokens_per_s"] for r in rows if r["system"] == "galacticd-4-adapters" and r["concurrency"] == n]
        ratio[str(n)] = round(statistics.median(lora) / max(statistics.median(base), 1e-9), 3)
    return {
        "setup": setup.__dict__ | {"concurrency": list(setup.concurrency)},
        "host": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "rows": rows,
        "adapters_vs_base_tokens_ratio": ratio,
        "disturbed_rows": sum(r["disturbed"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, fewer tokens, one round (< 5 min)")
    parser.add_argument("--json", type=Path, required=True, help="write results here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    result = asyncio.run(main_async(args))  # builds its model under a temp dir it removes
    args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
