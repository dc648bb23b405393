"""`galactic-train` subcommands for the LLM: `demo-model` and `lora`.

`training/cli.py` (the integrator's) calls `register(subparsers)`; each subcommand sets
`func(args) -> int`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo-model", help="train the embedded demo LLM into a HF model dir")
    demo.add_argument("--out", type=Path, required=True, help="cache dir; the model dir is created inside it")
    demo.add_argument("--max-seconds", type=float, default=None, help="wall-clock cap on training")
    demo.set_defaults(func=_demo)

    lora = subparsers.add_parser("lora", help="fine-tune a LoRA adapter (PEFT) the LLM engine can load")
    lora.add_argument("--base", type=Path, required=True, help="local HF causal-LM dir")
    lora.add_argument("--data", type=Path, required=True, help=".jsonl ({text} or {prompt,completion}) or .txt")
    lora.add_argument("--out", type=Path, required=True, help="adapter dir to write (safetensors)")
    lora.add_argument("--rank", type=int, default=8)
    lora.add_argument("--alpha", type=float, default=16.0)
    lora.add_argument("--targets", default="q_proj,v_proj", help="comma-separated module names")
    lora.add_argument("--steps", type=int, default=200)
    lora.add_argument("--lr", type=float, default=1e-3)
    lora.add_argument("--block", type=int, default=128)
    lora.add_argument("--batch-size", type=int, default=8)
    lora.set_defaults(func=_lora)


def _demo(args: argparse.Namespace) -> int:
    import dataclasses

    from training.llm.demo import DEMO_SPEC, ensure_demo_model

    spec = DEMO_SPEC if args.max_seconds is None else dataclasses.replace(DEMO_SPEC, max_seconds=args.max_seconds)
    path = ensure_demo_model(args.out, lambda msg: None, spec=spec)
    print(path)  # the CLI's output is the model dir, for scripts
    return 0


def train_lora(base: Path, data: Path, out: Path, *, rank: int = 8, alpha: float = 16.0,
               targets: tuple[str, ...] = ("q_proj", "v_proj"), steps: int = 200, lr: float = 1e-3,
               block: int = 128, batch_size: int = 8) -> Path:
    """Fine-tune a LoRA adapter on `base` with Lightning and export it to `out`."""
    import lightning as L
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.llm.data import TextDataModule, read_texts
    from training.llm.module import CausalLMModule, LoRASpec

    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    module = CausalLMModule(model, lr=lr, lora=LoRASpec(rank=rank, alpha=alpha, targets=targets), warmup_steps=5)
    trainer = L.Trainer(max_steps=steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=True)
    trainer.fit(module, datamodule=TextDataModule(read_texts(data), tok, block=block, batch_size=batch_size))
    return module.export(out)


def _lora(args: argparse.Namespace) -> int:
    path = train_lora(args.base, args.data, args.out, rank=args.rank, alpha=args.alpha,
                      targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
                      steps=args.steps, lr=args.lr, block=args.block, batch_size=args.batch_size)
    print(path)
    return 0
