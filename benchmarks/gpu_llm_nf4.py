"""GPU check: a 1B-class Llama built from its config, served by LLMEngine, 32 streams.

Measures what our users' bar asks: peak GPU memory while serving (< 2 GB in nf4), time to
first token and tokens per second, through the same engine code path CI covers on the CPU
(`quantization = "nf4"` only adds bitsandbytes' Linear4bit at load). Weights are random
(no hub): speed and memory do not depend on their values.

Rows: bf16 and nf4, each served eager (`compile = "off"`) and with the compiled decode step
(`compile = "decode"`: static shapes, torch.compile with CUDA graphs), each against
`model.generate` on the same loaded model at batch 1 and 32 (target: compiled >= 2x
generate at 32 streams). The scheduler gets a GPU-sized step budget (512 tokens) and a
512-position cache (prompts and completions here are short).

    python benchmarks/gpu_llm_nf4.py --json OUT [--streams 32] [--new-tokens 128] [--compile off,decode]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from engines.llm.config import LLMConfig, SchedulerConfig
from engines.llm.engine import LLMEngine
from engines.llm.types import FinalOutput, GenerationRequest, SamplingParams, TokenChunk
from training.llm.tokenizer import train_tokenizer

# Llama-3.2-1B's shape (1.24 B parameters with tied embeddings).
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=4096, tie_word_embeddings=True,
                rope_theta=500000.0)


def build_model_dir(root: Path) -> Path:
    out = root / "llama-1b-random"
    texts = [f"observation {i} of target {i * 7 % 101} at airmass {1 + i % 9 / 10}" for i in range(2000)]
    tok = train_tokenizer(texts, vocab_size=2000)
    cfg = LlamaConfig(**LLAMA_1B, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    return out, params


async def stream(engine: LLMEngine, i: int, new_tokens: int) -> dict:
    req = GenerationRequest(request_id=f"r{i}", prompt=f"observation {i} of target {i * 3} at airmass",
                            sampling=SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
    t0 = time.perf_counter()
    first, n, final = None, 0, None
    async for out in engine.generate(req):
        if isinstance(out, TokenChunk):
            first = first or time.perf_counter()
            n += len(out.token_ids)
        elif isinstance(out, FinalOutput):
            final = out
    return {"ttft_ms": (first - t0) * 1e3, "tokens": n, "total_s": time.perf_counter() - t0, "final": final}


def hf_generate(engine: LLMEngine, new_tokens: int) -> dict:
    """The same loaded model through `model.generate` (no server, no scheduler): what this
    host gives at batch 1 and 32, so the engine's figures read against the host's own."""
    out = {}
    tok, model = engine.tokenizer, engine.model
    for batch in (1, 32):
        ids = torch.tensor([tok("observation 1 of target 3 at airmass")["input_ids"]] * batch, device="cuda")
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, **kwargs)
            torch.cuda.synchronize()
        out[f"hf_generate_b{batch}_tokens_per_s"] = round(batch * new_tokens / (time.perf_counter() - t0), 1)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--compile", default="off,decode", help="comma-separated compile modes to run")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, params = build_model_dir(Path(tmp))
        for quant, mode in [(q, m) for q in ("nf4", "none") for m in args.compile.split(",")]:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base_mem = torch.cuda.memory_allocated()
            # runner "thread": the model in this process, so this process's CUDA allocator
            # counts its memory and `hf_generate` runs the very model the engine serves.
            engine = LLMEngine(LLMConfig(name=f"llama-1b-{quant}", path=str(model_dir), device="cuda",
                                         quantization=quant, compile=mode, runner="thread",
                                         scheduler=SchedulerConfig(max_running=args.streams, max_step_tokens=512,
                                                                   max_prompt_tokens=256, max_new_tokens_limit=256)))
            t_load = time.perf_counter()
            engine.load(lambda msg: None)
            load_s = time.perf_counter() - t_load
            await engine.start(asyncio.get_running_loop())
            loaded_mem = torch.cuda.memory_allocated() - base_mem
            await asyncio.gather(*(stream(engine, i, 8) for i in range(4)))  # warm-up
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            res = await asyncio.gather(*(stream(engine, i, args.new_tokens) for i in range(args.streams)))
            wall = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() - base_mem
            ttft = sorted(r["ttft_ms"] for r in res)
            single = await stream(engine, 999, args.new_tokens)
            row = {
                "quantization": quant, "compile": mode, "parameters": params, "streams": args.streams,
                "new_tokens": args.new_tokens, "load_s": round(load_s, 2),
                "weights_gb": round(loaded_mem / 1e9, 3), "peak_gpu_gb": round(peak / 1e9, 3),
                "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 3),
                "tokens_per_s": round(sum(r["tokens"] for r in res) / wall, 1),
                "ttft_p50_ms": round(statistics.median(ttft), 1), "ttft_p99_ms": round(ttft[-1], 1),
                "single_stream_ttft_ms": round(single["ttft_ms"], 1),
                "single_stream_tokens_per_s": round(single["tokens"] / single["total_s"], 1),
                "device": torch.cuda.get_device_name(),
            }
            row.update(hf_generate(engine, args.new_tokens))
            row["x_generate_b32"] = round(row["tokens_per_s"] / row["hf_generate_b32_tokens_per_s"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
            await engine.stop(5)
            del engine
    args.json.write_text(json.dumps(rows, indent=2))
    print(f"| dtype | compile | tokens/s at {args.streams} | generate b{args.streams} | x generate | "
          "generate b1 | TTFT p50 ms | peak GPU GB | load s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'nf4' if r['quantization'] == 'nf4' else 'bf16'} | {r['compile']} | {r['tokens_per_s']} | "
              f"{r['hf_generate_b32_tokens_per_s']} | {r['x_generate_b32']}x (target >= 2x) | "
              f"{r['hf_generate_b1_tokens_per_s']} | {r['ttft_p50_ms']} | {r['peak_gpu_gb']} | {r['load_s']} |")


if __name__ == "__main__":
    asyncio.run(main())
