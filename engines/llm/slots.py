"""The static KV layout: one slot per admitted request, and one forward for a whole step.

Every step, decode rows and prompt chunks go through the model in ONE forward pass: each
token is a batch row of its own (input (N, 1), position ids (N, 1)), so the linear layers,
RoPE and per-row LoRA see N independent rows, and only attention needs to know which
request a token belongs to. That is done by an attention function registered with
transformers (`AttentionInterface`, name "galactic"), handed the step's layout as a
forward kwarg (`galactic_step`); transformers passes model kwargs down to attention.

KV cache: per layer, K and V buffers of shape (S, Hkv, C, D): S slots (max_running: every
admitted request, prefilling or decoding, holds one), C positions. A request's token at
position p lives at [slot, :, p], so a row never moves when others join or leave (the
padded `DynamicCache` layout re-packed the whole cache on every join and grew it by
concatenation on every step). Decoding rows occupy slots 0..B-1 (compacted when one
leaves: one row's KV is copied, not the cache), so their attention reads a view, not a
gather. C grows by doubling when a row would pass it (a rare copy); under compiled decode
it is allocated once at its maximum, since CUDA graphs keep buffer addresses.

Attention per layer: first the step's new K/V are written at (slot, position) for every
token; then the decode group (B rows, one query each) attends to its slots' first L
columns under a (B, 1, 1, L) mask (col <= own position); each prompt chunk attends to its
slot's columns [0, start + n) under a causal mask. Outputs are concatenated in token order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

ATTENTION = "galactic"


@dataclass
class Chunk:
    """A prompt chunk inside a packed step: tokens [at, at + n) of the step, slot `slot`,
    prompt positions [start, start + n)."""

    at: int
    n: int
    slot: int
    start: int
    mask: torch.Tensor | None = None  # (n, start + n) bool; None when start == 0 (plain causal)


@dataclass
class PackedStep:
    """One forward's layout; built by the runner, read by `packed_attention` in every layer."""

    cache: "SlotCache"
    rows: int  # decode rows: tokens [0, rows) of the step, slots [0, rows)
    width: int  # decode attention reads columns [0, width)
    decode_mask: torch.Tensor | None  # (rows, 1, 1, width) bool, None if every column is real
    write_slot: torch.Tensor  # (N,) slot of each token
    write_pos: torch.Tensor  # (N,) position of each token
    chunks: list[Chunk] = field(default_factory=list)
    # Decode-group attention as plain matmuls rather than SDPA: on CUDA, SDPA given a mask
    # was measured ~4x slower than the matmuls for one query per row (see LLMConfig.attention).
    math: bool = False


class SlotCache:
    """K/V buffers (S, Hkv, C, D) per layer; `lengths[s]` = tokens cached in slot s."""

    def __init__(self, config: Any, slots: int, device: torch.device, dtype: torch.dtype,
                 capacity: int = 128, max_capacity: int | None = None) -> None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.layers = text.num_hidden_layers
        self.heads = text.num_key_value_heads or text.num_attention_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.slots = slots
        self.device, self.dtype = device, dtype
        self.max_capacity = max_capacity or int(getattr(text, "max_position_embeddings", 0) or 1 << 20)
        self.capacity = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.lengths = [0] * slots
        self._alloc(min(capacity, self.max_capacity))

    def _alloc(self, capacity: int) -> None:
        shape = (self.slots, self.heads, capacity, self.head_dim)
        old_k, old_v, old_c = self.k, self.v, self.capacity
        self.k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.layers)]
        self.v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.layers)]
        for new, old in zip(self.k + self.v, old_k + old_v):
            new[:, :, :old_c] = old
        self.capacity = capacity

    def ensure(self, length: int) -> None:
        """Room for `length` positions per slot (doubling; a copy of the cache, rarely)."""
        if length <= self.capacity:
            return
        if length > self.max_capacity:
            raise RuntimeError(f"KV cache: {length} positions exceed the maximum {self.max_capacity}")
        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        self._alloc(min(capacity, self.max_capacity))

    def move(self, src: int, dst: int) -> None:
        """Slot `dst` takes slot `src`'s contents (its first lengths[src] positions)."""
        n = self.lengths[src]
        for buf in self.k + self.v:
            buf[dst, :, :n] = buf[src, :, :n]
        self.lengths[dst] = n
        self.lengths[src] = 0

    def swap(self, a: int, b: int) -> None:
        n = max(self.lengths[a], self.lengths[b])
        for buf in self.k + self.v:
            tmp = buf[a, :, :n].clone()
            buf[a, :, :n] = buf[b, :, :n]
            buf[b, :, :n] = tmp
        self.lengths[a], self.lengths[b] = self.lengths[b], self.lengths[a]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None,
          causal: bool = False) -> torch.Tensor:
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, is_causal=causal, enable_gqa=gqa)


def _decode_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                 scale: float | None) -> torch.Tensor:
    """One query per row: q (B, H, 1, D), k/v (B, Hkv, W, D), mask (B, 1, 1, W) -> (B, H, 1, D).
    The H / Hkv query heads sharing a KV head are stacked, so K and V are never repeated."""
    B, H, _, D = q.shape
    hkv = k.shape[1]
    qg = q.reshape(B, hkv, H // hkv, D)  # (B, Hkv, G, D)
    scores = torch.matmul(qg, k.transpose(-1, -2)) * (scale if scale is not None else D ** -0.5)  # (B, Hkv, G, W)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return torch.matmul(probs, v).reshape(B, H, 1, D)


def packed_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     galactic_step: PackedStep | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """query (N, H, 1, D), key/value (N, Hkv, 1, D) after RoPE -> (N, 1, H, D)."""
    if galactic_step is None:  # a plain forward (no step layout): ordinary attention
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    step = galactic_step
    kc, vc = step.cache.k[module.layer_idx], step.cache.v[module.layer_idx]
    kc[step.write_slot, :, step.write_pos] = key[:, :, 0]  # (N, Hkv, D) into (slot, :, pos)
    vc[step.write_slot, :, step.write_pos] = value[:, :, 0]
    outs = []
    if step.rows:
        B, W = step.rows, step.width
        attend = _decode_math if step.math else _sdpa
        outs.append(attend(query[:B], kc[:B, :, :W], vc[:B, :, :W], step.decode_mask, scaling))  # (B, H, 1, D)
    for c in step.chunks:
        end = c.start + c.n
        q = query[c.at: c.at + c.n].transpose(0, 2)  # (1, H, n, D)
        o = _sdpa(q, kc[c.slot: c.slot + 1, :, :end], vc[c.slot: c.slot + 1, :, :end], c.mask, scaling,
                  causal=c.mask is None)
        outs.append(o.transpose(0, 2))  # (n, H, 1, D)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, 0)
    return out.transpose(1, 2).contiguous(), None  # (N, 1, H, D)


def register() -> None:
    """Make `model.config._attn_implementation = "galactic"` resolve (idempotent). Its mask
    function is SDPA's, so a plain forward or `generate()` on the same model still gets the
    right padding masks; a packed step's (N, 1) input needs none (one query, one key)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
