"""`train_lora`: LoRA / QLoRA fine-tuning of a local causal LM with Lightning's Trainer.

The network is `engines.llm.module.CausalLMModule`, the class the daemon serves, wrapped
around a PEFT model. Lightning owns the rest: the strategy (one process, DDP over gloo or
NCCL, FSDP on CUDA), precision, gradient accumulation and clipping, checkpoints and resume,
the progress bar and a CSV log. Only global rank 0 exports, so N processes write one
adapter: PEFT's `adapter_config.json` + `adapter_model.safetensors`, and our
`galactic_adapter.json` (base model hash, data hash, final validation loss, settings).

Multi-node: the same command runs on every node; Lightning reads the rank and the master
address from torchrun's or the cluster's environment (MASTER_ADDR, NODE_RANK, SLURM_*).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from engines.config import to_mapping
from engines.llm.identity import METADATA_FILE, METADATA_FORMAT, model_content_hash
from engines.llm.module import CausalLMModule, OptimSpec
from training.config import ALL_LINEAR, TrainingConfig

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot start on this host or with these settings; the message says why."""


@dataclass(frozen=True)
class LoRAResult:
    out: Path
    val_loss: float | None
    steps: int
    seconds: float


def check_host(cfg: TrainingConfig, cuda_available: bool | None = None) -> None:
    """Refuse, before any work, what this host cannot run."""
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if cfg.quantize == "nf4" and not cuda:
        raise TrainingError("--quantize nf4 (QLoRA) loads the base through bitsandbytes' 4-bit CUDA kernels and "
                            "this host has no CUDA device; train in full precision (quantize = 'none') here")
    if cfg.strategy == "fsdp" and not cuda:
        raise TrainingError("strategy fsdp shards the model over CUDA devices and this host has none; use ddp")
    if cfg.accelerator == "cuda" and not cuda:
        raise TrainingError("accelerator cuda requested but no CUDA device is visible")


def precision_for(cfg: TrainingConfig, cuda: bool) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"


def load_base(base: Path, cfg: TrainingConfig) -> tuple[Any, Any]:
    """(model, tokenizer) from a local HF dir, safetensors only, no remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(base) / "config.json").is_file():
        raise TrainingError(f"{base} is not a Hugging Face model dir (no config.json)")
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True}
    if cfg.quantize == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    return model, tok


def build_module(model: Any, cfg: TrainingConfig, total_steps: int) -> CausalLMModule:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.quantize == "nf4":
        # Casts norms to fp32, freezes the base, and (optionally) turns on checkpointing.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph
    lora = cfg.lora
    # PEFT takes the shorthand only as a bare string; it writes the resolved module names
    # into adapter_config.json, so the engine reads a plain list either way.
    targets: str | list[str] = ALL_LINEAR if lora.target_modules == (ALL_LINEAR,) else list(lora.target_modules)
    peft_model = get_peft_model(model, LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=targets, task_type="CAUSAL_LM"))
    optim = OptimSpec(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                      total_steps=total_steps, min_lr_ratio=cfg.min_lr_ratio)
    return CausalLMModule(peft_model, optim)


@dataclass(frozen=True)
class Plan:
    """How long a run is, known before the Trainer starts: the cosine's length, and the line
    printed before training so that a run's length is never a surprise."""

    steps: int  # optimizer steps the run makes (Lightning's global_step at the end)
    epochs: int | None  # None: as many as `steps` needs (max_steps set)
    batches_per_epoch: int  # per process
    batch_size: int  # examples per batch, per process
    accumulate: int  # batches per optimizer step
    steps_per_epoch: int
    train_examples: int
    processes: int

    def describe(self, resumed_at: int = 0) -> str:
        if self.epochs is None:
            length = (f"{self.steps} optimizer steps (max_steps); epochs: as many as max_steps needs "
                      f"({self.steps / self.steps_per_epoch:.1f})")
        else:
            length = f"{self.steps} optimizer steps ({_count(self.epochs, 'epoch', 'epochs')}; max_steps unset)"
        line = (f"plan: {length}; {_count(self.batches_per_epoch, 'batch', 'batches')} of {self.batch_size} per epoch, "
                f"{self.accumulate} per optimizer step ({_count(self.steps_per_epoch, 'step', 'steps')} per epoch); "
                f"{_count(self.train_examples, 'training example', 'training examples')}, "
                f"{_count(self.processes, 'process', 'processes')}")
        return line + (f"; resuming at step {resumed_at}" if resumed_at else "")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def plan_run(cfg: TrainingConfig, train_examples: int) -> Plan:
    """`max_steps` > 0 runs exactly that many optimizer steps whatever the epochs; else `epochs`.

    Each process sees ceil(examples / processes) rows (the distributed sampler pads), and
    Lightning steps the optimizer once per `accumulate_grad_batches` batches and once more at
    an epoch's end for a remainder: ceil(batches / accumulate) steps per epoch.
    """
    processes = cfg.devices * cfg.num_nodes
    batches = max(1, -(-train_examples // (cfg.batch_size * processes)))
    per_epoch = -(-batches // cfg.accumulate_grad_batches)
    steps, epochs = (cfg.max_steps, None) if cfg.max_steps > 0 else (per_epoch * cfg.epochs, cfg.epochs)
    return Plan(steps=steps, epochs=epochs, batches_per_epoch=batches, batch_size=cfg.batch_size,
                accumulate=cfg.accumulate_grad_batches,
                steps_per_epoch=per_epoch, train_examples=train_examples, processes=processes)


def train_lora(base: Path, data: Path, out: Path, cfg: TrainingConfig, *, resume: bool = False,
               stop_after_steps: int | None = None, progress: Callable[[str], None] | None = None) -> LoRAResult:
    """Fine-tune a LoRA adapter on `base` and export it to `out` (rank 0 only).

    `resume` continues from `out/checkpoints/last.ckpt`. `stop_after_steps` ends the run
    early after that many optimizer steps, leaving a resumable checkpoint: for preemptible
    jobs and time-sliced queues (and the resume test). `progress` receives the plan line
    (`Plan.describe`) on global rank 0 as training starts.
    """
    from training.llm.data import SFTDataModule, file_hash

    check_host(cfg)
    started = time.monotonic()
    cuda = torch.cuda.is_available() and cfg.accelerator != "cpu"
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, tok = load_base(base, cfg)
    datamodule = SFTDataModule(data, tok, batch_size=cfg.batch_size, max_length=cfg.max_length,
                               val_fraction=cfg.val_fraction, seed=cfg.seed)
    datamodule.prepare()  # data errors surface before any training work, with line numbers
    if datamodule.truncated:
        log.warning("%d examples were truncated to max_length=%d tokens", datamodule.truncated, cfg.max_length)
    plan = plan_run(cfg, len(datamodule.train))
    total = plan.steps
    module = build_module(model, cfg, total)

    out = Path(out)
    ckpt_dir = out / "checkpoints"
    callbacks: list[Any] = [ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", save_last=True, save_top_k=1,
                                            every_n_train_steps=cfg.checkpoint_every_n_steps)]
    if stop_after_steps is not None:
        callbacks.append(_StopAfter(stop_after_steps, ckpt_dir))
    if progress is not None:
        callbacks.append(_AnnouncePlan(plan, progress))
    trainer = L.Trainer(
        accelerator="cuda" if cuda else "cpu", devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=cfg.strategy, precision=precision_for(cfg, cuda),
        # max_epochs=-1 lets max_steps alone end the run; max_steps=-1 lets the epochs alone.
        max_steps=total if plan.epochs is None else -1, max_epochs=-1 if plan.epochs is None else plan.epochs,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val or None,
        logger=CSVLogger(out, name="logs", version=""), callbacks=callbacks,
        log_every_n_steps=cfg.log_every_n_steps, num_sanity_val_steps=0,
        enable_model_summary=False, default_root_dir=out,
        limit_val_batches=1.0 if datamodule.val else 0,
    )
    ckpt = None
    if resume:
        if not (ckpt_dir / "last.ckpt").is_file():
            raise TrainingError(f"--resume: no checkpoint at {ckpt_dir / 'last.ckpt'}")
        ckpt = str(ckpt_dir / "last.ckpt")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=False)
    stopped_early = stop_after_steps is not None and trainer.global_step < total
    val_loss = None
    if datamodule.val and not stopped_early:
        # The epoch-end validation may not have run at the last step: measure the final state.
        metrics = trainer.validate(module, datamodule=datamodule, verbose=False)
        val_loss = float(metrics[0]["val_loss"]) if metrics else None
    if trainer.is_global_zero and not stopped_early:
        _export(module, out, base, data, cfg, val_loss, trainer.global_step, file_hash(data))
    return LoRAResult(out, val_loss, trainer.global_step, time.monotonic() - started)


def _export(module: CausalLMModule, out: Path, base: Path, data: Path, cfg: TrainingConfig,
            val_loss: float | None, steps: int, data_hash: str) -> None:
    import peft
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    module.model.save_pretrained(out, safe_serialization=True)  # PEFT: adapter_config.json + safetensors
    meta = {
        "format": METADATA_FORMAT,
        "base_model_hash": model_content_hash(base),
        "base_model_path": str(Path(base).resolve()),
        "data_hash": data_hash,
        "data_path": str(Path(data).resolve()),
        "val_loss": val_loss,
        "val_perplexity": None if val_loss is None else float(torch.exp(torch.tensor(val_loss))),
        "steps": steps,
        "settings": to_mapping(cfg),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")


class _AnnouncePlan(Callback):
    """Reports the plan once the Trainer has restored any checkpoint, before the first batch."""

    def __init__(self, plan: Plan, progress: Callable[[str], None]) -> None:
        self.plan, self.progress = plan, progress

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self.progress(self.plan.describe(resumed_at=trainer.global_step))


class _StopAfter(Callback):
    """Ends fit after N optimizer steps, writing `last.ckpt` so that --resume continues there."""

    def __init__(self, steps: int, ckpt_dir: Path) -> None:
        self.steps, self.ckpt_dir = steps, ckpt_dir

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step >= self.steps and not trainer.should_stop:
            trainer.should_stop = True
            trainer.save_checkpoint(self.ckpt_dir / "last.ckpt")
