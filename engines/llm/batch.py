"""The running batch's KV cache: one padded `DynamicCache`, re-packed when rows join or leave.

Rows have different lengths, so the cache is left-padded to a common length T and an
attention mask (B, T) hides the padding; each row carries its own position id, so RoPE
sees exactly the positions a solo `generate()` would, and greedy output matches it.

A row joins after its prompt was prefilled alone (its own batch-1 cache): both sides are
left-padded to the longer length and concatenated on the batch axis. A row leaves by
index-selecting the others; leading columns that are padding for every remaining row are
then cut, so the cache never grows past the longest live row.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import torch
from transformers import DynamicCache

R = TypeVar("R")


def cache_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def build_cache(tensors: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = DynamicCache()
    for i, (k, v) in enumerate(tensors):
        cache.update(k, v, i)
    return cache


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:  # t: (B, H, T, D)
    if n == 0:
        return t
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], n, t.shape[3]), t], dim=2)


class DecodeBatch(Generic[R]):
    """Rows (any objects, in batch order) plus the cache, mask, positions and next inputs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rows: list[R] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)  # (B, T) 1 = real token
        self.positions = torch.zeros(0, dtype=torch.long, device=device)  # (B,) position of the next input
        self.next_tokens = torch.zeros(0, dtype=torch.long, device=device)  # (B,) next input token
        # Any padding in the cache? Without it the step passes no mask: attention takes its
        # unmasked kernel (SDPA with a mask is slower, on CUDA several times), same result.
        self.padded = False

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def join(self, rows: list[R], cache: DynamicCache, mask: torch.Tensor, first_tokens: list[int]) -> None:
        """Add prefilled rows: `cache` holds their prompts, left-padded per `mask` (G, n)."""
        new = cache_tensors(cache)
        mask = mask.to(self.device)
        n = mask.shape[1]
        T = self.length if self.rows else 0
        width = max(T, n)
        if not self.rows:
            merged = new
            self.mask = mask
        else:
            old = cache_tensors(self.cache)
            merged = [
                (
                    torch.cat([_left_pad(ok, width - T), _left_pad(nk.to(ok.device), width - n)], 0),
                    torch.cat([_left_pad(ov, width - T), _left_pad(nv.to(ov.device), width - n)], 0),
                )
                for (ok, ov), (nk, nv) in zip(old, new)
            ]
            self.mask = torch.cat([
                torch.cat([self.mask.new_zeros(len(self.rows), width - T), self.mask], 1),
                torch.cat([mask.new_zeros(len(rows), width - n), mask], 1),
            ], 0)
        self.cache = build_cache(merged)
        self.padded = not bool(self.mask.all())
        self.rows.extend(rows)
        self.positions = torch.cat([self.positions, mask.sum(1)])
        self.next_tokens = torch.cat([self.next_tokens, torch.tensor(first_tokens, device=self.device)])

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at `indices` (in order); trims all-padding leading columns."""
        if len(indices) == len(self.rows):
            return
        if not indices:
            self.rows, self.cache, self.padded = [], None, False
            self.mask = self.mask[:0, :0]
            self.positions, self.next_tokens = self.positions[:0], self.next_tokens[:0]
            return
        idx = torch.tensor(indices, device=self.device)
        self.rows = [self.rows[i] for i in indices]
        self.mask = self.mask.index_select(0, idx)
        self.positions = self.positions.index_select(0, idx)
        self.next_tokens = self.next_tokens.index_select(0, idx)
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else self.length
        tensors = [
            (k.index_select(0, idx.to(k.device))[:, :, start:], v.index_select(0, idx.to(v.device))[:, :, start:])
            for k, v in cache_tensors(self.cache)
        ]
        self.mask = self.mask[:, start:]
        self.cache = build_cache(tensors)
        self.padded = not bool(self.mask.all())

    def step_inputs(self) -> dict:
        """Model kwargs for one decode step; appends the new column to the mask."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], 1)
        return {
            "input_ids": self.next_tokens.view(-1, 1),
            "attention_mask": self.mask if self.padded else None,
            "position_ids": self.positions.view(-1, 1),
            "cache": self.cache,
            "use_cache": True,
        }

    def advance(self, tokens: torch.Tensor) -> None:
        """After the step: the sampled tokens become the next inputs."""
        self.positions = self.positions + 1
        self.next_tokens = tokens.to(self.device)
