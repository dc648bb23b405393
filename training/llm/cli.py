"""`galactic-train` subcommands for the LLM: `lora`, `demo-model` and `config`.

`training/cli.py` calls `register(subparsers)`; each subcommand sets `func(args) -> int`.
Every `lora` flag is also a key of the `[training]` config section; flags override the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# flag dest -> dotted [training] key
_FLAG_KEYS = {
    "max_steps": "max_steps", "epochs": "epochs", "strategy": "strategy", "devices": "devices",
    "num_nodes": "num_nodes", "accelerator": "accelerator", "quantize": "quantize", "precision": "precision",
    "batch_size": "batch_size", "lr": "lr", "seed": "seed", "rank": "lora.rank", "alpha": "lora.alpha",
    "dropout": "lora.dropout", "targets": "lora.target_modules", "max_length": "max_length",
    "accumulate": "accumulate_grad_batches", "gradient_checkpointing": "gradient_checkpointing",
    "val_fraction": "val_fraction", "warmup_steps": "warmup_steps",
    "checkpoint_every": "checkpoint_every_n_steps", "log_every": "log_every_n_steps",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    lora = subparsers.add_parser("lora", help="fine-tune a LoRA adapter (PEFT, Lightning) the daemon can load")
    lora.add_argument("--base", type=Path, required=True, help="local HF causal-LM dir (safetensors)")
    lora.add_argument("--data", type=Path, required=True,
                      help='JSON lines: {"prompt","completion"}, {"messages"} or {"text"} per line')
    lora.add_argument("--out", type=Path, required=True, help="adapter dir to write")
    lora.add_argument("--config", type=Path, help="TOML file; its [training] section (flags override it)")
    lora.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    lora.add_argument("--stop-after-steps", type=int,
                      help="end after N optimizer steps leaving a resumable checkpoint (preemptible jobs)")
    lora.add_argument("--max-steps", type=int,
                      help="optimizer steps to run, over as many epochs as they need (epochs do not stop "
                           "the run); 0 or unset: --epochs decides")
    lora.add_argument("--epochs", type=int, help="passes over the data when no --max-steps is given (default 3)")
    lora.add_argument("--strategy", choices=["auto", "ddp", "fsdp"])
    lora.add_argument("--devices", type=int, help="processes per node")
    lora.add_argument("--num-nodes", type=int)
    lora.add_argument("--accelerator", choices=["auto", "cpu", "cuda"])
    lora.add_argument("--precision", choices=["auto", "32-true", "bf16-mixed", "16-mixed"])
    lora.add_argument("--quantize", choices=["none", "nf4"], help="nf4 = QLoRA (CUDA only)")
    lora.add_argument("--batch-size", type=int)
    lora.add_argument("--accumulate", type=int, help="gradient accumulation batches")
    lora.add_argument("--lr", type=float)
    lora.add_argument("--warmup-steps", type=int)
    lora.add_argument("--seed", type=int)
    lora.add_argument("--rank", type=int)
    lora.add_argument("--alpha", type=float)
    lora.add_argument("--dropout", type=float)
    lora.add_argument("--targets", help="comma-separated module names, e.g. q_proj,v_proj; default all-linear "
                                        "(every linear layer but the output head)")
    lora.add_argument("--max-length", type=int)
    lora.add_argument("--val-fraction", type=float)
    lora.add_argument("--checkpoint-every", type=int, help="optimizer steps between checkpoints")
    lora.add_argument("--log-every", type=int, help="optimizer steps between logged rows (CSV, progress bar)")
    lora.add_argument("--gradient-checkpointing", action="store_const", const=True)
    lora.set_defaults(func=_lora)

    demo = subparsers.add_parser("demo-model", help="train the embedded demo LLM (fixed recipe) into a HF model dir")
    demo.add_argument("--out", type=Path, required=True, help="model dir to write")
    demo.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's)")
    demo.set_defaults(func=_demo)

    config = subparsers.add_parser("config", help="print or check the [training] configuration")
    config.add_argument("--print-default", action="store_true", help="print the commented default [training] table")
    config.add_argument("--check", type=Path, help="validate FILE's [training] section and print the result")
    config.set_defaults(func=_config)


def _lora(args: argparse.Namespace) -> int:
    from engines.config import ConfigError
    from training import config as training_config
    from training.llm.data import DataError
    from training.llm.lora import TrainingError, train_lora

    overrides = {key: getattr(args, dest) for dest, key in _FLAG_KEYS.items()}
    if args.targets is not None:
        overrides["lora.target_modules"] = [t.strip() for t in args.targets.split(",") if t.strip()]
    try:
        cfg = training_config.load(args.config, overrides=overrides)
        result = train_lora(args.base, args.data, args.out, cfg, resume=args.resume,
                            stop_after_steps=args.stop_after_steps,
                            progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ConfigError, DataError, TrainingError) as exc:
        print(f"galactic-train lora: {exc}", file=sys.stderr)
        return 2
    loss = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
    print(f"{result.out}\tsteps={result.steps}\tval_loss={loss}\tseconds={result.seconds:.1f}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import dataclasses

    from training.llm.demo import DEMO_SPEC, train_demo_model

    spec = DEMO_SPEC if args.steps is None else dataclasses.replace(DEMO_SPEC, steps=args.steps)
    meta = train_demo_model(args.out, spec, lambda msg: print(msg, file=sys.stderr))
    print(f"{args.out}\tval_loss={meta['val_loss']:.4f}\tval_perplexity={meta['val_perplexity']:.2f}")
    return 0


def _config(args: argparse.Namespace) -> int:
    import json

    from engines.config import ConfigError, to_mapping
    from training import config as training_config

    if args.print_default or not args.check:
        print(training_config.DEFAULT_TOML, end="")
        return 0
    try:
        cfg = training_config.load(args.check, env={})
    except ConfigError as exc:
        print(f"galactic-train config: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(to_mapping(cfg), indent=2))
    return 0
