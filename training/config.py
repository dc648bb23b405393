"""The `[training]` section of the one typed configuration system.

The same machinery as the daemon and engines (`engines.config`): a TOML table validated into
frozen dataclasses, unknown keys and wrong types refused with the dotted key at fault. The
file may be the daemon's own `galactic.toml` (the daemon ignores `[training]`, training
ignores every other section). Precedence, lowest first: these defaults, the file,
`GALACTIC_TRAINING__<KEY>` environment variables, command-line flags.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from engines.config import ConfigError, check, from_mapping, replace_path

ENV_PREFIX = "GALACTIC_TRAINING__"
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoRASettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    # Module names (suffixes) that get LoRA, or "all-linear" alone: every linear layer but the
    # output head (PEFT's shorthand; the QLoRA paper's default, and on Llama q/k/v/o/gate/up/down).
    target_modules: tuple[str, ...] = (ALL_LINEAR,)

    def __post_init__(self) -> None:
        check(self.rank >= 1, "rank", "must be >= 1")
        check(self.alpha > 0, "alpha", "must be > 0")
        check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        check(len(self.target_modules) >= 1, "target_modules", "name at least one module")
        check(ALL_LINEAR not in self.target_modules or len(self.target_modules) == 1, "target_modules",
              f'"{ALL_LINEAR}" stands alone: it already names every linear layer but the output head')


@dataclass(frozen=True)
class FederationSettings:
    """How an NVFLARE round (`galactic-train federated`) treats sites that do not answer.

    A round waits for every site it sent the task to, but never longer than
    `round_timeout_s`; it then aggregates whoever answered if that is at least `min_sites`,
    and fails the job otherwise. A site FLARE reports gone (its job process ended, or its
    client stopped heartbeating) is written off after `dead_site_grace_s`, so later rounds
    stop waiting for it well before the timeout; a site that answers again takes part again.
    """

    min_sites: int = 0  # sites a round needs; 0 = every site (any one down fails the job)
    round_timeout_s: float = 600.0  # longest a round waits for the sites beyond the minimum
    dead_site_grace_s: float = 60.0  # FLARE's dead-client grace period for a site reported gone

    def __post_init__(self) -> None:
        check(self.min_sites >= 0, "min_sites", "must be >= 0 (0: every site)")
        check(self.round_timeout_s >= 1, "round_timeout_s", "must be >= 1 (FLARE counts whole seconds)")
        check(self.dead_site_grace_s > 0, "dead_site_grace_s", "must be > 0")


@dataclass(frozen=True)
class TrainingConfig:
    # Where: Lightning's accelerator, strategy, processes per node and nodes.
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"  # fsdp needs CUDA
    devices: int = 1  # processes (GPUs, or CPU processes with gloo) per node
    num_nodes: int = 1
    # auto => bf16-mixed on CUDA, 32-true on the CPU.
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    seed: int = 0
    # How long. max_steps > 0: exactly that many optimizer steps (Lightning's global_step, one
    # per `accumulate_grad_batches` batches), over as many epochs as they need; epochs do not
    # stop such a run (Hugging Face Trainer's meaning). max_steps = 0: `epochs` passes decide.
    max_steps: int = 0
    epochs: int = 3
    # Batches: per process; the effective batch is batch_size x accumulate x processes.
    batch_size: int = 8
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    gradient_checkpointing: bool = False  # trade compute for activation memory
    max_length: int = 512  # tokens per example; longer ones are truncated (and counted)
    val_fraction: float = 0.1  # share of examples held out for validation loss/perplexity
    # Optimiser: AdamW, linear warm-up, cosine decay to min_lr_ratio x lr.
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    # Bookkeeping.
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 50  # a resumable checkpoint (LoRA weights + optimiser)
    quantize: Literal["none", "nf4"] = "none"  # nf4 = QLoRA (bitsandbytes 4-bit base), CUDA only
    lora: LoRASettings = field(default_factory=LoRASettings)
    federation: FederationSettings = field(default_factory=FederationSettings)  # galactic-train federated

    def __post_init__(self) -> None:
        check(self.devices >= 1, "devices", "must be >= 1")
        check(self.num_nodes >= 1, "num_nodes", "must be >= 1")
        check(self.max_steps >= 0, "max_steps", "must be >= 0 (0: epochs decide the length)")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.accumulate_grad_batches >= 1, "accumulate_grad_batches", "must be >= 1")
        check(self.gradient_clip_val >= 0, "gradient_clip_val", "must be >= 0 (0 disables clipping)")
        check(self.max_length >= 8, "max_length", "must be >= 8")
        check(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        check(self.log_every_n_steps >= 1, "log_every_n_steps", "must be >= 1")
        check(self.checkpoint_every_n_steps >= 1, "checkpoint_every_n_steps", "must be >= 1")
        check(not (self.strategy == "fsdp" and self.accelerator == "cpu"), "strategy",
              "fsdp shards over CUDA devices; on the CPU choose ddp")


DEFAULT_TOML = """\
[training]
accelerator = "auto"              # auto | cpu | cuda
strategy = "auto"                 # auto | ddp | fsdp (fsdp: CUDA only)
devices = 1                       # processes per node (GPUs, or CPU processes over gloo)
num_nodes = 1                     # nodes; launch one process per node with torchrun or your cluster's launcher
precision = "auto"                # auto (bf16-mixed on CUDA, 32-true on CPU) | 32-true | bf16-mixed | 16-mixed
seed = 0
max_steps = 0                     # optimizer steps to run, however many epochs they take; 0 = epochs decide
epochs = 3                        # passes over the data, used only when max_steps = 0
batch_size = 8                    # per process
accumulate_grad_batches = 1
gradient_clip_val = 1.0           # 0 disables clipping
gradient_checkpointing = false
max_length = 512                  # tokens per example; longer examples are truncated (and counted)
val_fraction = 0.1                # held-out share for validation loss and perplexity
lr = 2e-4                         # AdamW peak learning rate
weight_decay = 0.0
warmup_steps = 10                 # linear warm-up, then cosine decay
min_lr_ratio = 0.1                # cosine floor, as a fraction of lr
log_every_n_steps = 10
checkpoint_every_n_steps = 50     # resumable checkpoints under OUT/checkpoints (--resume continues)
quantize = "none"                 # none | nf4 (QLoRA: 4-bit NF4 base, double quantization, bf16 compute; CUDA only)

[training.lora]
rank = 8
alpha = 16.0
dropout = 0.05
target_modules = ["all-linear"]   # every linear layer but the output head; or names, e.g. ["q_proj", "v_proj"]

[training.federation]             # galactic-train federated (NVFLARE)
min_sites = 0                     # sites a round needs to aggregate; 0 = every site (one site down fails the job)
round_timeout_s = 600.0           # a round waits at most this long for sites beyond min_sites, then aggregates who answered
dead_site_grace_s = 60.0          # a site FLARE reports gone is written off after this, so rounds stop waiting for it
"""


def load(path: Path | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> TrainingConfig:
    """Defaults <- `[training]` of the TOML file <- GALACTIC_TRAINING__* <- `overrides`.

    `overrides` maps dotted keys ("max_steps", "lora.rank") to values (flags); None values
    are skipped, so unset flags leave the file's value. Raises ConfigError naming the key.
    """
    data: dict[str, Any] = tomllib.loads(DEFAULT_TOML)["training"]
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"{path} is not valid TOML: {exc}") from None
        table = doc.get("training", {})
        if not isinstance(table, dict):
            raise ConfigError("training", "expected a table")
        data = _merge(data, table)
    config = from_mapping(TrainingConfig, data, "training")
    env = os.environ if env is None else env
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
            config = replace_path(config, dotted, raw, "training.")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        raw = ",".join(value) if isinstance(value, (list, tuple)) else str(value).lower() if isinstance(value, bool) else str(value)
        config = replace_path(config, dotted, raw, "training.")
    return config


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
