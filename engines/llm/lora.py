"""Batched multi-LoRA (punica-style): rows of one batch use different adapters.

PEFT's mixed-adapter path splits the batch by adapter and runs each group separately,
which measured at more than twice the base model's cost. Here every LoRA-targeted layer
keeps *stacked* adapter weights, slot 0 being the all-zero "no adapter", and a forward pass
gathers each row's A and B and does two batched matmuls:

    y = base(x) + bmm(bmm(x, A[idx]^T), B[idx]^T)        # x: (B, T, in), idx: (B,)

with the LoRA scale folded into B. Adapters of different ranks share the stacks by zero-
padding to the largest rank loaded (zero rows/columns add nothing). Adapter weights are
read from PEFT's `adapter_model.safetensors` with safetensors only (no pickle), and the
`adapter_config.json` fields that change the maths (rank, alpha, rslora) are honoured;
features this path cannot reproduce (DoRA, modules_to_save, embedding LoRA, Conv1D
fan-in-fan-out) are refused rather than silently served wrong.

Threading: the stacks are mutated only while the engine holds its step lock, so a forward
pass never sees a half-written adapter.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from safetensors.torch import load_file

from engines.errors import InvalidArgument, NotFound, PermissionDenied


@dataclass(frozen=True)
class AdapterWeights:
    """One PEFT LoRA adapter read from disk: per target module, A (r, in) and scale * B (out, r)."""

    path: str
    rank: int
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_adapter(path: Path, root: Path | None = None) -> AdapterWeights:
    """Read a PEFT LoRA dir (adapter_config.json + adapter_model.safetensors).

    Anything malformed (bad JSON, wrong types, a corrupt or odd-shaped tensor file) is the
    caller's adapter at fault: InvalidArgument naming `path`, never INTERNAL. With `root`,
    the two files themselves must resolve inside it (a symlink out of the root is refused).
    """
    cfg_file, weights_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not cfg_file.is_file() or not weights_file.is_file():
        raise NotFound(f"{path} lacks adapter_config.json or adapter_model.safetensors", field="path")
    if root is not None and not all(f.resolve().is_relative_to(root) for f in (cfg_file, weights_file)):
        raise PermissionDenied(f"{path} links to files outside the adapter root {root}", field="path")
    try:
        return _read_adapter(path, cfg_file, weights_file)
    except (InvalidArgument, NotFound):
        raise
    except Exception as exc:  # noqa: BLE001 - json, safetensors and shape errors alike
        raise InvalidArgument(f"not a readable LoRA adapter: {type(exc).__name__}: {exc}", field="path") from None


def _read_adapter(path: Path, cfg_file: Path, weights_file: Path) -> AdapterWeights:
    cfg = json.loads(cfg_file.read_text())
    if not isinstance(cfg, dict):
        raise InvalidArgument("adapter_config.json is not a JSON object", field="path")
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise InvalidArgument(f"only LoRA adapters are supported, got {cfg.get('peft_type')}", field="path")
    for key in ("use_dora", "fan_in_fan_out"):
        if cfg.get(key):
            raise InvalidArgument(f"adapter uses {key}, which batched LoRA does not support", field="path")
    if cfg.get("modules_to_save"):
        raise InvalidArgument("adapter has modules_to_save (full weights), not servable as LoRA", field="path")
    alpha = float(cfg.get("lora_alpha", 8))
    alpha_pattern: dict[str, float] = cfg.get("alpha_pattern") or {}
    rslora = bool(cfg.get("use_rslora", False))

    tensors = load_file(str(weights_file), device="cpu")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_(A|B)(?:\.[^.]+)?\.weight", key)
        if m is None:
            raise InvalidArgument(f"unexpected tensor {key!r} in adapter (embedding LoRA?)", field="path")
        pairs.setdefault(m.group(1), {})[m.group(2)] = t
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rank = 0
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise InvalidArgument(f"adapter module {name} lacks lora_A or lora_B", field="path")
        a, b = ab["A"].float(), ab["B"].float()  # (r, in), (out, r)
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise InvalidArgument(f"adapter module {name}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} "
                                  "are not a rank-r pair", field="path")
        r = a.shape[0]
        mod_alpha = next((float(v) for k, v in alpha_pattern.items() if re.search(rf"(^|\.){k}$", name)), alpha)
        scale = mod_alpha / math.sqrt(r) if rslora else mod_alpha / r
        modules[name] = (a, b * scale)
        rank = max(rank, r)
    if not modules:
        raise InvalidArgument("adapter has no LoRA weights", field="path")
    return AdapterWeights(path=str(path), rank=rank, modules=modules)


class LoRAContext:
    """Which adapter slot each row of the next forward uses; set by the scheduler."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None  # (B,) int64 slot per row; None => no LoRA at all
        # (B,) bool: the rows whose logits the forward keeps (a boolean `logits_to_keep`);
        # the LM head then sees only those rows, flattened to (K, in).
        self.kept: torch.Tensor | None = None


class LoRALinear(nn.Module):
    """A Linear (or quantized Linear) plus stacked per-slot LoRA weights."""

    def __init__(self, base: nn.Module, slots: int, ctx: LoRAContext, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.base = base
        self.ctx = ctx
        self.in_features = int(base.in_features)
        self.out_features = int(base.out_features)
        self.register_buffer("lora_a", torch.zeros(slots, 0, self.in_features, dtype=dtype, device=device), persistent=False)
        self.register_buffer("lora_b", torch.zeros(slots, self.out_features, 0, dtype=dtype, device=device), persistent=False)

    @property
    def rank(self) -> int:
        return self.lora_a.shape[1]

    def grow(self, rank: int) -> None:
        if rank <= self.rank:
            return
        pad = rank - self.rank
        self.lora_a = torch.cat([self.lora_a, self.lora_a.new_zeros(self.lora_a.shape[0], pad, self.in_features)], 1)
        self.lora_b = torch.cat([self.lora_b, self.lora_b.new_zeros(self.lora_b.shape[0], self.out_features, pad)], 2)

    def set_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        if a is not None and b is not None:
            r = a.shape[0]
            self.lora_a[slot, :r] = a.to(self.lora_a)
            self.lora_b[slot, :, :r] = b.to(self.lora_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in), or the LM head's (K, in)
        y = self.base(x)
        idx = self.ctx.index
        if idx is None or self.rank == 0:
            return y
        flat = x.dim() == 2
        if flat:  # an adapter on the LM head, which sees only the kept rows
            idx, x = idx[self.ctx.kept.to(idx.device)], x.unsqueeze(1)
        if idx.device != self.lora_a.device:  # layers spread over GPUs by device_map
            idx = idx.to(self.lora_a.device, non_blocking=True)
        a = self.lora_a.index_select(0, idx)  # (B, r, in)
        b = self.lora_b.index_select(0, idx)  # (B, out, r)
        h = torch.bmm(x.to(a.dtype), a.transpose(1, 2))  # (B, T, r)
        delta = torch.bmm(h, b.transpose(1, 2))  # (B, T, out)
        return y + (delta.squeeze(1) if flat else delta).to(y.dtype)


class LoRABank:
    """All adapter slots of one base model; slot 0 is reserved for "no adapter"."""

    def __init__(self, model: nn.Module, capacity: int, dtype: torch.dtype) -> None:
        self.model = model
        self.slots = capacity + 1
        self.ctx = LoRAContext()
        self.dtype = dtype
        self.layers: dict[str, LoRALinear] = {}
        self._free = list(range(capacity, 0, -1))

    def _wrap(self, name: str) -> LoRALinear:
        if name in self.layers:
            return self.layers[name]
        try:
            base = self.model.get_submodule(name)
        except AttributeError:
            raise InvalidArgument(f"adapter targets {name}, which the base model lacks", field="path") from None
        if not hasattr(base, "in_features"):
            raise InvalidArgument(f"adapter targets {name}, which is not a Linear layer", field="path")
        parent_name, _, attr = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        device = next(base.parameters(), torch.empty(0)).device
        wrapped = LoRALinear(base, self.slots, self.ctx, self.dtype, device)
        setattr(parent, attr, wrapped)
        self.layers[name] = wrapped
        return wrapped

    def check(self, weights: AdapterWeights) -> None:
        """Raise InvalidArgument if the adapter does not fit this base model (before any write)."""
        for name, (a, b) in weights.modules.items():
            layer = self.layers.get(name)
            base = layer.base if layer is not None else None
            if base is None:
                try:
                    base = self.model.get_submodule(name)
                except AttributeError:
                    raise InvalidArgument(f"adapter targets {name}, which the base model lacks", field="path") from None
            if (a.shape[1], b.shape[0]) != (getattr(base, "in_features", -1), getattr(base, "out_features", -1)):
                raise InvalidArgument(f"adapter shapes for {name} do not match the base model", field="path")

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def add(self, weights: AdapterWeights, slot: int | None = None) -> int:
        """Write an adapter into a free slot (`slot` if given: a respawned model process
        gets every adapter back where requests expect it) and return the slot; the caller
        ensured one is free."""
        self.check(weights)
        if slot is None:
            slot = self._free.pop()
        else:
            self._free.remove(slot)
        for name in weights.modules:
            self._wrap(name).grow(weights.rank)
        for name, layer in self.layers.items():
            a, b = weights.modules.get(name, (None, None))
            layer.set_slot(slot, a, b)
        return slot

    def remove(self, slot: int) -> None:
        for layer in self.layers.values():
            layer.set_slot(slot, None, None)
        self._free.append(slot)
